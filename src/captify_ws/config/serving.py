"""How captify-ws serves: the address and transport, the handlers and apps it serves, who may
use the API, the admin dashboard and the metrics, the log format, and how it shuts down.
The first fields of :class:`~captify_ws.config.Settings` (see ``config/__init__.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from captify_ws.config.fields import setting
from captify_ws.values import parse_bool, parse_list


@dataclass(frozen=True, slots=True)
class ServingSettings:
    """The settings of how captify-ws serves (a base of :class:`~captify_ws.config.Settings`)."""

    host: str = setting("127.0.0.1", "address to bind (loopback by default, like uvicorn)")
    port: int = setting(3000, "TCP port for HTTP and WebSockets (0 picks a free port)", int)
    transport: str = setting(
        "native",
        "'native' (picows WebSockets + uvicorn's HTTP parser on one port, the fast path) or "
        "'asgi' (the whole app under uvicorn's ASGI server)", metavar="native|asgi")
    handlers: tuple[str, ...] = setting(
        (), "extra handlers to register, comma-separated 'module:attribute' import paths",
        parse_list, metavar="MOD:ATTR,...")
    http_app: str | None = setting(
        None, "an ASGI app ('module:attribute') that receives every request that is not a "
        "captify-ws route, served on the same port", metavar="MOD:ATTR")
    app_dir: str = setting(
        ".", "folder put first on the import path for the 'module:attribute' settings "
        "(--handlers, --http-app, --auth …), like uvicorn's --app-dir", metavar="DIR",
        shown="the current folder")
    demo: bool | None = setting(
        None, "serve the collaborative editor demo at /demo", parse_bool, toggle=True,
        shown="on when bound to loopback, off otherwise")
    api_key: str | None = setting(
        None, "bearer key for the HTTP API under /api/v1 (the API is off without one)",
        secret=True, metavar="KEY")
    metrics_token: str | None = setting(
        None, "bearer token GET /metrics requires (Prometheus: authorization credentials); "
        "without one /metrics is public (keep it on a private network)", secret=True,
        metavar="TOKEN", shown="none (public)")
    admin_auth: str | None = setting(
        None, "the admin dashboard's own check, 'module:function' taking the request and raising "
        "captify_ws.Reject to refuse", metavar="MOD:ATTR", shown="the API key")
    admin_session_s: float = setting(
        8 * 3600.0, "how long an admin login lasts: the dashboard's session cookie and its "
        "signature expire after this many seconds", float)
    log_format: str = setting("text", "'text' (readable) or 'json' (one object per line)",
                               metavar="text|json")
    shutdown_timeout_s: float = setting(
        10.0, "on SIGTERM/SIGINT: seconds to close clients (1012), write what is pending and "
        "leave the broker before exiting", float)
