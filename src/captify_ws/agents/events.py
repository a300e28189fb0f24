"""Agent run events: what ``agent:{run_id}`` channels carry, checked for every publisher, and
the fold that compacts a run's stream into one snapshot.

Events (``data`` shapes; ids are strings of 1 to 200 characters)::

    run.started        {owner?, …metadata}
    message.started    {message_id, role?}
    token              {message_id, delta}                 delta: at most agent_delta_max_chars
    tool_call          {id, name, args?}
    tool_result        {id, result?, error?}
    message.completed  {message_id}
    run.heartbeat      {}                                   the producer is alive (idle)
    run.completed      {result?}      ┐
    run.failed         {error}        ├ terminal: exactly one is stored, it seals the stream
    run.cancelled      {by?, reason?} ┘

:func:`check_event` is the channel class's ``prepare`` hook, so the same rules hold for
``agent_run()``, ``POST /api/v1/publish``, the NDJSON endpoint and the Redis ingest; it also
gives the run's state patch (``status``, ``owner``). :class:`RunFold` folds events into the
snapshot a late or reloading subscriber gets instead of thousands of tokens (Ably's "append
to one message" idea, without extra writes): ``{run_id, status, owner, messages: [{id, role,
text, completed}], tool_calls: [{id, name, args, result?, error?, completed}], result?,
error?, cancelled_by?, last_ts, partial?}``. Clients keep the same shape from live events
(``agentReducer`` in ``/client/channels.js``, :func:`captify_ws.client.agent_reducer`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from captify_ws.errors import ChannelError, CloseCode

CLASS: Final = "agent"
TERMINAL: Final = frozenset({"run.completed", "run.failed", "run.cancelled"})
STATUS_OF: Final = {"run.completed": "completed", "run.failed": "failed",
                    "run.cancelled": "cancelled"}
EVENTS: Final = frozenset({"run.started", "message.started", "token", "tool_call",
                           "tool_result", "message.completed", "run.heartbeat", *TERMINAL})
ID_MAX_CHARS: Final = 200
#: What each event's data must name (besides the optional fields of the module docstring).
_REQUIRED: Final = {"message.started": ("message_id",), "token": ("message_id", "delta"),
                    "message.completed": ("message_id",), "tool_call": ("id", "name"),
                    "tool_result": ("id",), "run.failed": ("error",)}


def check_run_id(run_id: Any) -> str:
    """``run_id`` if it is a string of 1 to 200 characters that fits a channel name (no
    whitespace, control characters or braces); else ``ChannelError(4400)``."""
    if not isinstance(run_id, str) or not 0 < len(run_id) <= ID_MAX_CHARS or \
            any(c.isspace() or c in "{}" or ord(c) < 32 or c == "\x7f" for c in run_id):
        raise ChannelError(CloseCode.BAD_REQUEST,
                           f"run_id must be a string of 1 to {ID_MAX_CHARS} characters without "
                           "whitespace, control characters or braces")
    return run_id


def channel_of(run_id: str) -> str:
    """``agent:{run_id}`` (``ChannelError(4400)`` for a malformed run id)."""
    return f"{CLASS}:{check_run_id(run_id)}"


def run_id_of(channel: str) -> str:
    return channel.split(":", 1)[1]


def _short_id(data: dict[str, Any], key: str, event: str) -> None:
    value = data.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= ID_MAX_CHARS:
        raise ChannelError(CloseCode.BAD_REQUEST, f"{event}: '{key}' must be a string of 1 to "
                           f"{ID_MAX_CHARS} characters")


def check_event(event: str, data: Any, delta_max_chars: int) -> dict[str, Any] | None:
    """Check one agent event; answer its state patch (``None``: no change). Raises
    ``ChannelError``: 4400 for an unknown event or malformed data, 1009 for a delta longer
    than ``delta_max_chars``."""
    if event not in EVENTS:
        raise ChannelError(CloseCode.BAD_REQUEST, f"unknown agent event {event!r} (known: "
                           f"{', '.join(sorted(EVENTS))})")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ChannelError(CloseCode.BAD_REQUEST, f"{event}: data must be a JSON object")
    for key in _REQUIRED.get(event, ()):
        if key in ("delta", "error"):
            continue
        _short_id(data, key, event)
    if event == "token":
        delta = data.get("delta")
        if not isinstance(delta, str):
            raise ChannelError(CloseCode.BAD_REQUEST, "token: 'delta' must be a string")
        if len(delta) > delta_max_chars:
            raise ChannelError(CloseCode.MESSAGE_TOO_BIG, f"token: delta longer than "
                               f"{delta_max_chars} characters (agent_delta_max_chars)")
    if event == "run.failed" and "error" not in data:
        raise ChannelError(CloseCode.BAD_REQUEST, "run.failed: 'error' is required")
    if event == "run.started":
        owner = data.get("owner")
        if owner is not None and (not isinstance(owner, str) or len(owner) > ID_MAX_CHARS):
            raise ChannelError(CloseCode.BAD_REQUEST, "run.started: 'owner' must be a user id")
        return {"status": "running", "owner": owner}
    if event in TERMINAL:
        return {"status": STATUS_OF[event]}
    return None


def parse_pub(frame: str) -> tuple[str, dict[str, Any], int]:
    """``(event, data, ts_ms)`` of a stored ``pub`` frame."""
    pub = json.loads(frame)
    data = pub.get("data")
    return pub["event"], data if isinstance(data, dict) else {}, int(pub.get("ts", 0))


def event_of(frame: str) -> str:
    """The event of a ``pub`` frame without parsing its data: the first ``,"event":"`` is
    the frame's own (the channel before it is JSON-escaped)."""
    start = frame.find(',"event":"')
    if start < 0:
        return ""
    start += 10
    return frame[start:frame.find('"', start)]


@dataclass
class _Message:
    role: str = "assistant"
    parts: list[str] = field(default_factory=list)
    completed: bool = False


@dataclass
class RunFold:
    """A run folded from its events, up to ``offset`` of ``epoch``. See the module docstring
    for the JSON it gives; events after the terminal one are ignored."""

    run_id: str
    epoch: str = ""
    offset: int = 0
    status: str = "pending"
    owner: str | None = None
    messages: dict[str, _Message] = field(default_factory=dict)
    tool_calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    ending: dict[str, Any] = field(default_factory=dict)
    last_ts: int = 0
    #: the start of the stream was lost (expired or trimmed): text may be missing
    partial: bool = False

    @property
    def ended(self) -> bool:
        return self.status in STATUS_OF.values()

    def apply(self, offset: int, event: str, data: dict[str, Any], ts: int) -> None:
        self.offset = offset
        self.last_ts = max(self.last_ts, ts)
        if self.ended:
            return
        if event == "run.started":
            self.status = "running"
            self.owner = data.get("owner")
        elif event in ("message.started", "token", "message.completed"):
            message_id = str(data.get("message_id"))
            message = self.messages.get(message_id)
            if message is None:
                message = self.messages[message_id] = _Message()
            if event == "message.started" and isinstance(data.get("role"), str):
                message.role = data["role"]
            elif event == "token":
                message.parts.append(str(data.get("delta", "")))
            elif event == "message.completed":
                message.completed = True
        elif event == "tool_call":
            call_id = str(data.get("id"))
            self.tool_calls[call_id] = {"id": call_id, "name": data.get("name"),
                                        "args": data.get("args"), "completed": False}
        elif event == "tool_result":
            call_id = str(data.get("id"))
            call = self.tool_calls.setdefault(call_id, {"id": call_id, "name": None,
                                                        "args": None})
            call.update({k: data[k] for k in ("result", "error") if k in data})
            call["completed"] = True
        elif event in TERMINAL:
            self.status = STATUS_OF[event]
            if event == "run.completed" and "result" in data:
                self.ending["result"] = data["result"]
            elif event == "run.failed":
                self.ending["error"] = data.get("error")
            elif event == "run.cancelled":
                self.ending["cancelled_by"] = data.get("by")

    def apply_frame(self, offset: int, frame: str) -> None:
        event, data, ts = parse_pub(frame)
        self.apply(offset, event, data, ts)

    def to_json(self) -> dict[str, Any]:
        messages = []
        for message_id, message in self.messages.items():
            text = "".join(message.parts)
            if len(message.parts) > 1:
                message.parts[:] = [text]  # compacted once, not on every snapshot
            messages.append({"id": message_id, "role": message.role, "text": text,
                             "completed": message.completed})
        state: dict[str, Any] = {"run_id": self.run_id, "status": self.status,
                                 "owner": self.owner, "messages": messages,
                                 "tool_calls": list(self.tool_calls.values()),
                                 **self.ending, "last_ts": self.last_ts}
        if self.partial:
            state["partial"] = True
        return state

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> RunFold:
        """The fold a snapshot describes (a client continuing from it, or the stored final
        snapshot after the stream expired)."""
        fold = cls(str(state.get("run_id", "")), status=str(state.get("status", "pending")),
                   owner=state.get("owner"), last_ts=int(state.get("last_ts", 0)),
                   partial=bool(state.get("partial", False)))
        for message in state.get("messages", ()):
            fold.messages[str(message["id"])] = _Message(message.get("role", "assistant"),
                                                         [message.get("text", "")],
                                                         bool(message.get("completed")))
        for call in state.get("tool_calls", ()):
            fold.tool_calls[str(call["id"])] = dict(call)
        fold.ending = {k: state[k] for k in ("result", "error", "cancelled_by") if k in state}
        return fold
