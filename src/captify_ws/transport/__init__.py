"""Transports: what carries a :class:`~captify_ws.connection.Connection`.

``native`` (picows WebSockets and uvicorn's HTTP parser on one port) is what ``captify-ws serve``
runs; ``asgi`` serves the same handlers under any ASGI server, for apps that mount captify-ws.
"""
