"""Brokers: how the instances of a deployment tell each other about changes."""

from __future__ import annotations

from captify_ws.broker.base import Broker
from captify_ws.broker.memory import MemoryBroker, MemoryHub
from captify_ws.errors import ConfigError
from captify_ws.plugins import is_import_path, load_plugin

__all__ = ["Broker", "MemoryBroker", "MemoryHub", "broker_from_url"]


def broker_from_url(url: str, settings: object = None) -> Broker:
    """The broker a URL names: ``memory`` or ``redis://host:6379/0`` (``rediss://`` for TLS),
    or your own as ``module:attribute`` (see ``plugins.py``; made from ``settings``)."""
    if is_import_path(url):
        broker: Broker = load_plugin(url, "broker", Broker, settings)  # type: ignore[assignment]
        return broker
    if url == "memory":
        return MemoryBroker()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from captify_ws.broker.redis import RedisBroker

        return RedisBroker(url)
    raise ConfigError(f"unknown broker {url!r}: use 'memory', 'redis://host:6379/0' or "
                      "'module:attribute'")
