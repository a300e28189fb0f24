"""Sans-I/O codecs: bytes or text in, typed frozen events out; events in, bytes out.

``ywebsocket`` is the binary protocol of the npm y-websocket provider; ``envelope`` is the JSON
protocol of the seed. Nothing here does I/O or logs payloads.
"""
