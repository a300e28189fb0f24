"""The one exception root of captify-ws, and the WebSocket close codes.

Hierarchy::

    CaptifyError                 everything captify-ws raises on purpose
    ├── ConfigError              bad settings; `captify-ws serve` prints it as one line and exits 2
    ├── ProtocolError            a peer sent something we cannot accept; carries `close_code`
    │   ├── InvalidMessage       malformed frame, JSON, base64 or Yjs update (1007)
    │   ├── MessageTooBig        a message past the size limit (1009)
    │   │   └── QuotaExceeded    an update past the document's size quota (1009)
    │   └── BadRequest           a request the handler cannot serve, e.g. no documentId (4400)
    │       └── JsonTooDeep      JSON nested deeper than the parser allows (4400, never
    │                            RecursionError)
    ├── StaleVersion             server steps for a version that is not current (HTTP 409)
    ├── Reject                   a connection refused by policy (auth, origin, limits); `code`
    ├── ChannelError             a channel request that cannot be served; `code` (4400, 4403,
    │   │                        4429, 1009) goes into the `error` answer or the HTTP status
    │   └── RunEnded             an agent run's event after its terminal one (HTTP 409)
    ├── HistoryError             a history request that cannot be served (unknown document or
    │                            version, bad cursor, a store without history); `status`
    ├── StoreError               the document store failed (the caller retries or reports)
    ├── BrokerError              the broker failed
    └── ServerNotRunning         the module-level API was called with no server in this process

Errors are mapped to close codes in one place: :func:`close_code_for`; what a client is told,
in :func:`close_reason_for`: the text of errors about its own input or rights, and for anything
else a generic reason with an error id (:func:`new_error_id`) whose detail goes to the server log.
"""

from __future__ import annotations

import logging
import secrets
from typing import Final


class CloseCode:
    """WebSocket close codes used by captify-ws (DESIGN.md "Close codes")."""

    NORMAL: Final = 1000
    GOING_AWAY: Final = 1001
    PROTOCOL_ERROR: Final = 1002
    UNSUPPORTED_DATA: Final = 1003
    INVALID_PAYLOAD: Final = 1007
    POLICY: Final = 1008
    MESSAGE_TOO_BIG: Final = 1009
    INTERNAL_ERROR: Final = 1011
    RESTART: Final = 1012
    OVERLOADED: Final = 1013
    BAD_REQUEST: Final = 4400
    UNAUTHORIZED: Final = 4401
    FORBIDDEN: Final = 4403
    #: a channel command naming something that does not exist (an agent run, an agent session)
    NOT_FOUND: Final = 4404
    AUTH_TIMEOUT: Final = 4408
    RATE_LIMITED: Final = 4429
    #: Hocuspocus ``ResetConnection``: a malformed frame, or pre-authentication limits exceeded
    RESET_CONNECTION: Final = 4205


class CaptifyError(Exception):
    """Root of every exception captify-ws raises on purpose."""


class ConfigError(CaptifyError):
    """Settings that cannot work; the message says which setting and why."""


class ProtocolError(CaptifyError):
    """A peer sent something the protocol does not allow.

    ``close_code`` is the code to close with when the error is fatal for the connection. The JSON
    fabric protocol reports most of these as an ``error`` message instead and keeps the
    connection open; the y-websocket protocol has no error message, so it closes.
    """

    close_code: int = CloseCode.INVALID_PAYLOAD

    def __init__(self, message: str, *, close_code: int | None = None) -> None:
        super().__init__(message)
        if close_code is not None:
            self.close_code = close_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidMessage(ProtocolError):
    """Malformed input: truncated frame, bad JSON, bad base64, an update Yjs cannot apply."""

    close_code = CloseCode.INVALID_PAYLOAD


class MessageTooBig(ProtocolError):
    """A message larger than the configured limit."""

    close_code = CloseCode.MESSAGE_TOO_BIG


class QuotaExceeded(MessageTooBig):
    """A change that would take a document past its quota (close 1009, HTTP 413); ``data``
    goes into JSON error messages and HTTP answers."""

    def __init__(self, message: str, *, quota: int = 0) -> None:
        super().__init__(message)
        self.data = {"code": "quota_exceeded", "quota": quota}


class BadRequest(ProtocolError):
    """A request the handler cannot serve, such as a connection without a documentId."""

    close_code = CloseCode.BAD_REQUEST


class JsonTooDeep(BadRequest):
    """JSON nested deeper than the parser allows: a hostile message, closed with 4400 (the
    JSON protocol answers other bad messages with an ``error`` and stays open)."""


class StaleVersion(CaptifyError):
    """Steps were submitted for an old version of the document (HTTP 409)."""

    def __init__(self, version: int, current: int) -> None:
        super().__init__(f"version {version} is behind the document's version {current}")
        self.version = version
        self.current = current


class Reject(CaptifyError):
    """A connection or request refused by policy.

    Raised by authenticators, authorizers and limits; the connection is closed with ``code`` and
    ``reason`` (or, before the upgrade, refused with the matching HTTP status).
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class ChannelError(CaptifyError):
    """A channel request (subscribe, publish, a handler's command) that cannot be served.

    ``code`` says why, with the close codes' meanings: 4400 malformed or unknown (a channel
    class this endpoint does not serve, a malformed ``since``), 4403 forbidden, 4404 no such
    agent run or agent session, 4429 a bound reached (subscribe rate, channels per
    connection), 1009 a payload past its size bound. On the channel protocol it becomes
    ``{"type":"error","id":…,"code":…,"message":…}`` and the connection stays open; over HTTP
    it maps to 400, 403, 404, 429 or 413.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class HistoryError(CaptifyError):
    """A history request that cannot be served; ``status`` is its HTTP status (400 bad input,
    404 no such document or version, 410 a feed cursor older than the entries kept, 501 a
    store that keeps no history); ``code`` the body's ``code`` (default: the status), and
    ``extra`` more fields of the body."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 extra: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code: str | int = status if code is None else code
        self.extra = dict(extra or {})


class RunEnded(ChannelError):
    """A publication on an agent run after its terminal event (``run.completed``,
    ``run.failed`` or ``run.cancelled``): nothing was stored. ``status`` is how it ended;
    HTTP answers 409."""

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(CloseCode.BAD_REQUEST, f"run {run_id!r} already ended ({status})")
        self.run_id = run_id
        self.status = status


class BodyTooLarge(CaptifyError):
    """An HTTP request body past ``max_message_size`` (counted as it arrives, so also a
    chunked one): HTTP 413, whatever route was reading it. Not a ``ProtocolError``, so no
    route's bad-JSON answer takes it for malformed input."""


class StoreError(CaptifyError):
    """The document store could not do what was asked; nothing was half-written."""


class BrokerError(CaptifyError):
    """The broker could not publish or subscribe."""


class ServerNotRunning(CaptifyError):
    """The module-level API (``broadcast_steps`` …) was called with no server running here."""


def close_code_for(error: BaseException) -> int:
    """The close code for an error that ends a connection."""
    if isinstance(error, ProtocolError):
        return error.close_code
    if isinstance(error, Reject):
        return error.code
    return CloseCode.INTERNAL_ERROR


def http_status_for(refusal: Reject) -> int:
    """The HTTP status of an upgrade refused before it is accepted (both transports): 403 for
    an origin or a right refused (1008, 4403), else 503 (shutting down, overloaded)."""
    return 403 if refusal.code in (CloseCode.POLICY, CloseCode.FORBIDDEN) else 503


def close_reason_for(error: BaseException) -> str:
    """A close reason that fits the 123-byte limit of a close frame; never a traceback.

    Only errors about the client's own input or rights (:class:`ProtocolError`, :class:`Reject`,
    :class:`StaleVersion`) say what was wrong; anything else (the store, the broker, a bug) is
    "internal error": its text may carry URLs, SQL or paths, so it goes to the server log only.
    """
    if isinstance(error, Reject):
        text = error.reason
    elif isinstance(error, ProtocolError | StaleVersion):
        text = str(error)
    else:
        text = "internal error"
    return truncate_reason(text)


def new_error_id() -> str:
    """An id to give a client for an internal error, logged with the error's detail."""
    return secrets.token_hex(4)


def log_with_id(logger: logging.Logger, what: str, error: BaseException | str, *,
                level: int = logging.ERROR, traceback: bool = True) -> str:
    """Log ``error`` (its text, and its traceback unless told not to) under a new error id;
    answer the id, for a client-facing message that carries nothing else."""
    error_id = new_error_id()
    logger.log(level, "%s (error id %s): %s", what, error_id, error,
               exc_info=error if traceback and isinstance(error, BaseException) else None,
               extra={"error_id": error_id})
    return error_id


def truncate_reason(text: str) -> str:
    """Cut a close reason to the 123 bytes RFC 6455 allows, on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= 123:
        return text
    return data[:120].decode("utf-8", "ignore") + "..."
