"""Brokers: how instances of a deployment tell each other about changes."""
