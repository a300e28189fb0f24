"""Reading and showing setting values: sizes, numbers, booleans, lists.

Every parser takes the text a person typed (a flag or a ``CAPTIFY_WS_*`` variable) and either
returns the value or raises ``ValueError`` with a message meant for that person, such as
``16x is not a size (use 16m, 512k, 1g)``; :meth:`Settings.load` adds which setting it was.
Each ``show_*`` function is the inverse used by ``--help``: ``show_size(16 << 20) == "16m"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, Final

_SIZE: Final = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_bool(text: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case); empty is false."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text.strip()} is not true or false (use true, false, 1, 0, on, off)")


def parse_list(text: str) -> tuple[str, ...]:
    """Comma-separated items, blanks dropped: ``"a, b,,c"`` → ``("a", "b", "c")``."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_size(text: str) -> int:
    """Bytes, with an optional ``k``/``m``/``g`` suffix in powers of 1024 (``16m`` = 16 MiB;
    ``16M``, ``16MiB`` and ``16mb`` say the same). Fractions round down to whole bytes."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text.strip() or repr(text)} is not a size (use 16m, 512k, 1g)")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def parse_int(text: str) -> int:
    """A whole number, e.g. ``3000``."""
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip() or repr(text)} is not a whole number") from None


def parse_float(text: str) -> float:
    """A finite number, e.g. ``2.5``."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text.strip() or repr(text)} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text.strip()} is not a finite number")
    return value


#: Friendlier stand-ins for the bare builtins a setting may name as its parser.
_BUILTINS: Final[dict[Any, Callable[[str], Any]]] = {int: parse_int, float: parse_float,
                                                      bool: parse_bool}


def parser_for(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """The parser to use for a setting declared with ``parse`` (``int`` → :func:`parse_int`)."""
    return _BUILTINS.get(parse, parse)


def show_size(size: int) -> str:
    """The shortest exact spelling: ``16777216`` → ``16m``, ``1536`` → ``1536``."""
    for unit in ("g", "m", "k"):
        if size and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


def show_value(value: object, parse: Callable[[str], Any]) -> str:
    """How ``--help`` shows a default: sizes as ``16m``, ``10.0`` as ``10``, lists joined,
    booleans as ``on``/``off``, nothing as ``none``."""
    if value is None or value in ("", ()):
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    if parse is parse_size and isinstance(value, int):
        return show_size(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
