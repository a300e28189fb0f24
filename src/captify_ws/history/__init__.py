"""Document history: the change feed, versions (automatic, named, restore) and their HTTP API.

The store keeps it (``store/history.py``); this package decides when versions are taken, what a
version's content and differences are, and answers the HTTP API.
"""
