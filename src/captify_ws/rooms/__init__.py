"""Rooms: one ``DocumentRoom`` per loaded document, managed by ``RoomManager``."""
