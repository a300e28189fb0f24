"""Channel state: a flat JSON object that publications patch, and the ``version`` rule.

A ``state_patch`` is a JSON object; each top-level key replaces that key of the state, and a
``null`` value removes it. Values are JSON-encoded once, here, and kept encoded (the Redis
backend stores them as hash fields, the memory backend as a dict), so a snapshot is assembled
without decoding anything.

The version rule (the issue's "a ``version`` in the patch drops stale updates"): when a patch
carries a numeric ``version`` and the state's ``version`` is equal or higher, the whole
publication is dropped — neither appended nor delivered — and the publisher is told
``stale``. Publishers that send absolute values with a version can therefore retry and race
freely; and a terminal event published with the highest version wins exactly once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from captify_ws.errors import ChannelError, CloseCode
from captify_ws.protocol.channels import dumps

JsonValue = Any
Fields = tuple[tuple[str, str | None], ...]

#: Longest key of a state patch, in characters.
MAX_KEY_CHARS = 256


def encode_patch(patch: Mapping[str, JsonValue] | None, max_bytes: int) -> tuple[Fields,
                                                                                  float | None]:
    """``(fields, version)`` of a patch: each value JSON-encoded (``None`` = delete).

    Raises ``ChannelError(4400)`` for a patch that is not an object of JSON values or whose
    version is not a number, and ``ChannelError(1009)`` past ``max_bytes`` encoded."""
    if patch is None:
        return (), None
    if not isinstance(patch, Mapping):
        raise ChannelError(CloseCode.BAD_REQUEST, "state_patch must be a JSON object")
    fields: list[tuple[str, str | None]] = []
    size = 0
    for key, value in patch.items():
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
            raise ChannelError(CloseCode.BAD_REQUEST,
                               f"state_patch keys must be strings of 1 to {MAX_KEY_CHARS} "
                               "characters")
        try:
            encoded = None if value is None else dumps(value)
        except (TypeError, ValueError) as exc:
            raise ChannelError(CloseCode.BAD_REQUEST,
                               f"state_patch[{key!r}] is not JSON: {exc}") from None
        size += len(key) + len(encoded or "")
        if size > max_bytes:
            raise ChannelError(CloseCode.MESSAGE_TOO_BIG,
                               f"state_patch larger than {max_bytes} bytes")
        fields.append((key, encoded))
    version = patch.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, (int, float))
                                or not math.isfinite(version)):
        raise ChannelError(CloseCode.BAD_REQUEST, "state_patch 'version' must be a number")
    return tuple(fields), (float(version) if version is not None else None)


def is_stale(current_version: str | None, version: float | None) -> bool:
    """Whether a patch with ``version`` is not newer than the state's encoded ``version``."""
    if version is None or current_version is None:
        return False
    try:
        current = float(json.loads(current_version))
    except (ValueError, TypeError):
        return False
    return current >= version


def merge(state: dict[str, str], fields: Iterable[tuple[str, str | None]]) -> None:
    """Apply encoded fields to an encoded state in place."""
    for key, value in fields:
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value


def state_json(state: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """The encoded state as one JSON object, without decoding its values."""
    items = state.items() if isinstance(state, Mapping) else state
    return "{" + ",".join(dumps(key) + ":" + value for key, value in items) + "}"


def new_keys(state: Mapping[str, str], fields: Fields) -> int:
    """How many keys the fields would add to the state."""
    return sum(1 for key, value in fields if value is not None and key not in state)
