"""Importing what the settings name as ``module:attribute`` (handlers, hooks, apps, schemas)."""

from __future__ import annotations

import importlib
from typing import Any

from captify_ws.errors import ConfigError


def import_attribute(spec: str, what: str) -> Any:
    """The object ``module:attribute`` names; :class:`ConfigError` naming ``what`` if none."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"{what} {spec!r}: expected 'module:attribute'")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except ImportError as exc:
        raise ConfigError(f"{what} {spec!r}: cannot import {module_name!r}: {exc}") from None
    except AttributeError:
        raise ConfigError(f"{what} {spec!r}: {module_name!r} has no {attribute!r}") from None
    return target
