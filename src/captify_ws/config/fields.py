"""How a setting is declared: :func:`setting` makes a field of
:class:`~captify_ws.config.Settings` that carries its help text, its parser and how ``--help``
shows it, so that the CLI, the environment variables and the README table come from one list."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import Any

ENV_PREFIX = "CAPTIFY_WS_"


def setting(default: Any, help: str, parse: Callable[[str], Any] = str, *,
             metavar: str | None = None, secret: bool = False, shown: str | None = None,
             toggle: bool = False) -> Any:
    """A field of :class:`Settings`: ``help`` for ``--help`` and the README, ``parse`` for the
    text of its flag and variable, ``shown`` for a default that needs words (``--help`` shows
    ``default <shown>``), ``toggle`` for an on/off flag pair (``--demo`` / ``--no-demo``)."""
    return field(default=default, metadata={
        "help": help, "parse": parse, "metavar": metavar, "secret": secret, "shown": shown,
        "toggle": toggle,
    })
