"""Logging: readable lines by default, one JSON object per line with ``--log-format json``.

Everything the server says while it runs goes to **stdout** through :mod:`logging` — its own
records, the start line, uvicorn's and other libraries' records, Python warnings and uncaught
exceptions — so that ``--log-format json`` turns every line into JSON and process managers
that show stderr as errors (PM2) do not flag ordinary lines. Only a reason not to start
(:func:`fatal`) goes to stderr.

Log records name connections, documents and close codes (``extra={"connection": …,
"document": …, "close_code": …}``); they never carry document contents or tokens.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, TextIO

_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime"}

#: Libraries that would say too much at INFO: httpx logs every request (one per session check
#: of the session-proxy authenticator), picows every accepted socket.
_QUIET: Final = ("httpx", "httpcore", "captify_ws.picows", "uvicorn.error", "uvicorn.access")

logger = logging.getLogger("captify_ws")


class JsonFormatter(logging.Formatter):
    """``{"ts","level","logger","message", …extra fields}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def configure(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Log to ``stream`` (stdout) at ``level`` in ``fmt`` ('text' or 'json'), with Python
    warnings and uncaught exceptions logged too."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(_formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def announce(message: str, **fields: object) -> None:
    """An INFO line that is shown whatever ``--log-level`` says (where the server listens)."""
    record = logger.makeRecord(logger.name, logging.INFO, "(announce)", 0, message, (), None,
                               extra=fields)
    logger.handle(record)


def fatal(message: str, fmt: str = "text") -> None:
    """Why the server cannot start, as one line on stderr: ``captify-ws: <message>``, or one
    JSON object with ``--log-format json``."""
    if fmt == "json":
        record = logger.makeRecord(logger.name, logging.ERROR, "(fatal)", 0, message, (), None)
        print(JsonFormatter().format(record), file=sys.stderr, flush=True)
    else:
        print(f"captify-ws: {message}", file=sys.stderr, flush=True)


def _log_uncaught(kind: type[BaseException], value: BaseException,
                  trace: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, trace)
        return
    logger.critical("uncaught exception", exc_info=(kind, value, trace))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    logger.critical("uncaught exception in thread %s",
                    args.thread.name if args.thread else "?",
                    exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
