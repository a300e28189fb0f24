"""Stores and brokers named as ``module:attribute`` instead of a URL (``--store``, ``--broker``).

The attribute is a :class:`~captify_ws.store.DocumentStore` / :class:`~captify_ws.broker.Broker`
instance, or a class or function that makes one from the :class:`~captify_ws.config.Settings`
(called with them as the only argument).
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Final

from captify_ws.errors import ConfigError
from captify_ws.imports import import_attribute

#: ``package.module:attribute.path`` — a URL (``sqlite:///…``, ``redis://…``) never matches
IMPORT_PATH: Final = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def is_import_path(value: str) -> bool:
    """Whether a store or broker setting names Python code rather than a URL."""
    return IMPORT_PATH.fullmatch(value) is not None and not value.startswith(
        ("sqlite:", "postgres:", "postgresql:", "redis:", "rediss:", "unix:"))


def protocol_methods(protocol: type) -> tuple[str, ...]:
    """The public methods a ``typing.Protocol`` declares."""
    return tuple(name for name, value in vars(protocol).items()
                 if callable(value) and not name.startswith("_"))


def load_plugin(spec: str, what: str, protocol: type, settings: object) -> object:
    """The object ``spec`` names (made from ``settings`` when a class or function);
    :class:`ConfigError` when it lacks one of the methods ``protocol`` declares."""
    required = protocol_methods(protocol)
    target: Any = import_attribute(spec, what)
    if inspect.isclass(target) or inspect.isfunction(target):
        make: Any = target
        try:  # the signature only: a TypeError raised inside the factory is its own
            inspect.signature(make).bind(settings)
        except TypeError:
            raise ConfigError(f"{what} {spec!r}: {make.__name__} must take the settings as "
                              "its one argument") from None
        target = make(settings)
    missing = [name for name in required if not callable(getattr(target, name, None))]
    if missing:
        raise ConfigError(f"{what} {spec!r}: {type(target).__name__} has no "
                          f"{', '.join(missing)}")
    return target
