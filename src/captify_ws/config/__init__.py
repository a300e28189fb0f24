"""Settings: the one configuration object, built from defaults, ``CAPTIFY_WS_*`` and CLI flags.

Every setting is a field of :class:`Settings` with its help text, so the CLI (``--help``), the
environment variables and the README table come from one list. No other module reads the
environment (STYLE.md, habit 12).

Precedence, lowest first: the default, the environment variable, the command-line flag.
How a field is declared is in :mod:`captify_ws.config.fields`; the rules a set of settings must
satisfy are in :mod:`captify_ws.config.checks`. The first fields are declared by idea in
:mod:`captify_ws.config.serving` and :mod:`captify_ws.config.keeping` (a chain of frozen
dataclasses, so that the order of the fields, and of ``--help``, stays the order written).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from captify_ws.config import checks
from captify_ws.config.fields import ENV_PREFIX, setting
from captify_ws.config.keeping import KeepingSettings
from captify_ws.errors import ConfigError
from captify_ws.values import parse_bool as _parse_bool
from captify_ws.values import parse_list as _parse_list
from captify_ws.values import parse_size as _parse_size
from captify_ws.values import parser_for


@dataclass(frozen=True, slots=True)
class Settings(KeepingSettings):
    """Everything captify-ws can be told. Build with :meth:`Settings.load` or construct directly.

    The fields are declared in the order ``--help`` and the README list them: how it serves
    (:class:`~captify_ws.config.serving.ServingSettings`), what it keeps and whom it tells
    (:class:`~captify_ws.config.keeping.KeepingSettings`), then the rest below."""

    broker: str = setting(
        "memory", "how instances reach each other: 'memory' (this process only), "
        "'redis://host:6379/0', or your own broker as 'module:attribute'", metavar="URL")
    broker_prefix: str = setting(
        "captify", "prefix of every broker channel (several deployments can share a Redis)",
        metavar="PREFIX")
    cluster_heartbeat_s: float = setting(
        2.0, "instances announce themselves and their connection counts this often; one silent "
        "for 3 heartbeats is dropped (its connections and presence disappear)", float)
    anti_entropy_s: float = setting(
        10.0, "instances compare the state vectors of their documents this often (and after "
        "every broker reconnect) and send each other what is missing", float)
    workers: int = setting(
        1, "processes serving the same port (needs a shared broker and store)", int)
    worker_affinity_limit: int = setting(
        256, "with --workers: a WebSocket whose request names its document moves to the worker "
        "that owns the document until that worker serves this many of its connections (the rest "
        "stay where the kernel put them); 0 turns it off", int)
    reuse_port: bool = setting(
        False, "let several processes listen on the same port (SO_REUSEPORT; --workers sets it "
        "for its processes)", _parse_bool)
    auth: str = setting(
        "", "authenticator: 'none' (everyone anonymous; development), 'session-proxy', 'jwt', or "
        "'module:function'", metavar="KIND",
        shown="none on a loopback bind; required on any other address")
    auth_session_url: str | None = setting(
        None, "session-proxy: the product's session endpoint, e.g. "
        "http://127.0.0.1:8000/api/auth/session", metavar="URL")
    auth_user_path: str = setting(
        "user.id", "session-proxy: where the user id is in the endpoint's JSON answer "
        "(dotted path; NextAuth: user.email or user.id)", metavar="PATH")
    auth_cache_s: float = setting(
        10.0, "seconds an answer of the session or access endpoint is reused", float)
    auth_timeout_s: float = setting(
        5.0, "an authenticator that does not answer within this many seconds refuses the "
        "connection with 4408", float)
    jwt_secret: str | None = setting(
        None, "jwt: the HS256 secret", secret=True, metavar="SECRET")
    jwt_public_key: str | None = setting(
        None, "jwt: the RS256/ES256 public key, PEM text or @/path/to/key.pem", metavar="PEM")
    jwt_algorithms: tuple[str, ...] = setting(
        ("HS256",), "jwt: accepted algorithms, comma-separated (HS256, RS256, ES256, …)",
        _parse_list, metavar="ALG,...")
    jwt_audience: str | None = setting(None, "jwt: required 'aud'", metavar="AUD")
    jwt_issuer: str | None = setting(None, "jwt: required 'iss'", metavar="ISS")
    jwt_cookie: str = setting("captify_token", "jwt: the cookie that may carry the token",
                               metavar="NAME")
    jwt_leeway_s: float = setting(30.0, "jwt: clock skew allowed for exp/nbf, seconds", float)
    jwt_docs_claim: str = setting(
        "docs", "jwt-claims authorizer: the claim naming documents or patterns", metavar="CLAIM")
    authorizer: str = setting(
        "allow", "per-document access: 'allow' (every authenticated user may write), "
        "'jwt-claims', 'access-proxy', or 'module:function'", metavar="KIND")
    auth_access_url: str | None = setting(
        None, "access-proxy: the product's endpoint answering "
        "{\"access\":\"write\"|\"read\"|\"none\"}", metavar="URL")
    revocation_ttl_s: float = setting(
        3600.0, "a revocation keeps that user out of (or read-only on) the document this long, "
        "on every instance, whatever the authorizer says", float)
    allowed_origins: tuple[str, ...] = setting(
        (), "browser origins allowed to open WebSockets, comma-separated "
        "(https://app.example.com, https://*.example.com)", _parse_list,
        metavar="ORIGIN,...", shown="any origin")
    trusted_proxies: tuple[str, ...] = setting(
        ("127.0.0.1", "::1"), "peers whose X-Forwarded-For names the real client address",
        _parse_list, metavar="IP,...")
    max_connections: int = setting(
        20000, "connections this instance accepts; more are closed with 1013", int)
    max_connections_per_user: int = setting(
        100, "connections per authenticated user on this instance; more → 4429", int)
    max_connections_per_ip: int = setting(
        500, "connections per client address on this instance (loopback exempt); more → 4429",
        int)
    message_rate: float = setting(
        1000.0, "messages per second a connection may send on average; faster → 4429", float)
    message_burst: int = setting(
        20000, "messages a connection may send in a burst above message_rate", int)
    max_awareness_size: int = setting(
        16 << 10, "largest presence state, bytes; larger → close 1009 (y-websocket) or an "
        "error (JSON)", _parse_size, metavar="SIZE")
    document_create_rate: float = setting(
        600.0, "new documents (not yet in the store) one user — or one client address, for "
        "anonymous connections — may open per minute, in bursts of as many; more → close "
        "4429 (0: no limit)", float)
    max_presence_states: int = setting(
        4, "presence states (awareness client ids) one connection may control in a document "
        "(a provider has one); more → close 1009", int)
    max_presence_bytes: int = setting(
        64 << 10, "bytes of presence states one connection may hold in a document; more → "
        "close 1009", _parse_size, metavar="SIZE")
    max_document_size: int = setting(
        256 << 20, "quota: bytes of updates a document may hold; updates beyond it are "
        "refused", _parse_size, metavar="SIZE")
    pm_schema: str | None = setting(
        None, "the ProseMirror schema of the step authority: 'tiptap' (Tiptap 3 StarterKit's, "
        "built in) or 'module:attribute' naming a prosemirror.model.Schema",
        metavar="tiptap|MOD:ATTR",
        shown="prosemirror-schema-basic with the list nodes")
    pm_fragment: str = setting(
        "prosemirror", "the Y.XmlFragment that y-prosemirror editors share (Tiptap: 'default'); "
        "server-originated steps are applied to it too", metavar="NAME")
    max_message_size: int = setting(
        16 << 20, "largest accepted WebSocket message (16m, 512k …); larger → close 1009",
        _parse_size, metavar="SIZE")
    max_message_frames: int = setting(
        1024, "most frames one fragmented WebSocket message may arrive in; more → close 1009",
        int)
    message_cost_bytes: int = setting(
        16 << 10, "every this many bytes of a message count as one more message against "
        "message_rate (the rate limits work, not only messages)", _parse_size, metavar="SIZE")
    max_json_values: int = setting(
        100_000, "most values (array items and object members) one JSON message may hold; more "
        "are refused before parsing (send updates as base64, not as arrays or objects of bytes)",
        int)
    send_budget: int = setting(
        8 << 20, "bytes that may wait to be sent to one connection (its queue and its socket "
        "buffer, beyond one message larger than this by itself); more → close 1013 as too slow",
        _parse_size, metavar="SIZE")
    max_outbound_bytes: int = setting(
        1 << 30, "bytes that may wait to be sent to all connections together; past it the "
        "connections stalled longest are closed (1013) and dropped", _parse_size,
        metavar="SIZE")
    max_inbound_bytes: int = setting(
        256 << 20, "bytes of partly received messages (fragments, and frames part-way read) "
        "that all connections together may make the server hold; past it the connections "
        "holding the most are closed with 1009 (0: no bound)", _parse_size, metavar="SIZE")
    send_timeout_s: float = setting(
        30.0, "a connection whose output makes no progress for this long is closed with 1013 "
        "(its peer does not read)", float)
    close_timeout_s: float = setting(
        5.0, "after the server's close frame, the peer has this long to answer with its own "
        "before the TCP connection is aborted (RFC 6455 §7.1.1)", float)
    http_max_head_bytes: int = setting(
        16 << 10, "largest request head (request line and headers), for every request of a "
        "connection; larger → 431", _parse_size, metavar="SIZE")
    http_head_timeout_s: float = setting(
        10.0, "a request head must arrive within this many seconds of its first byte; "
        "else → 408", float)
    http_body_timeout_s: float = setting(
        60.0, "a request body must arrive within this many seconds of its head; else → 408",
        float)
    http_keepalive_timeout_s: float = setting(
        5.0, "an idle keep-alive HTTP connection is closed after this many seconds", float)
    http_max_connections: int = setting(
        10_000, "connections in the HTTP stage at once (before a WebSocket upgrade or between "
        "requests); more → 503", int)
    awareness_flush_ms: int = setting(
        50, "presence changes are batched per document and sent every this many ms", int)
    awareness_renewal_s: float = setting(
        10.0, "unchanged presence renewals are forwarded at most this often (seconds); must stay "
        "well under the 30 s after which Yjs clients drop a silent peer's presence", float)
    yws_keepalive_s: float = setting(
        15.0, "every y-websocket connection is sent an empty awareness update this often (0 "
        "disables), under the 30 s after which a WebsocketProvider drops a socket that "
        "received no message (an idle viewer without presence would reconnect)", float)
    room_grace_s: float = setting(
        5.0, "seconds a document stays loaded after its last connection leaves", float)
    max_idle_document_bytes: int = setting(
        256 << 20, "estimated memory of the documents kept loaded in their grace period "
        "(room_grace_s) after their last connection left, all together; past it those waiting "
        "longest unload at once (0: no bound)", _parse_size, metavar="SIZE")
    ping_interval_s: float = setting(
        20.0, "keepalive: a connection silent for this many seconds is pinged, and closed if "
        "still silent one interval later (0 disables); keeps proxies from cutting idle "
        "collaborators and reaps dead peers", float)
    channels_per_connection_max: int = setting(
        128, "channels one connection may subscribe at once; more → an error (4429) for that "
        "subscribe", int)
    channel_subscribe_rate_per_s: float = setting(
        10.0, "subscribes per second a connection may make on average; faster → an error "
        "(4429) for that subscribe", float)
    channel_subscribe_burst: int = setting(
        100, "subscribes a connection may make at once above channel_subscribe_rate_per_s", int)
    channel_request_max_bytes: int = setting(
        64 << 10, "largest request on a channel endpoint (subscribe, a command); larger → an "
        "error (1009)", _parse_size, metavar="SIZE")
    channel_name_max_bytes: int = setting(
        256, "longest channel name ('class:name'), UTF-8 bytes", int)
    channel_publication_max_bytes: int = setting(
        64 << 10, "largest published 'data' and largest 'state_patch', JSON bytes; larger → "
        "refused (1009, HTTP 413)", _parse_size, metavar="SIZE")
    channel_state_max_keys: int = setting(
        1000, "keys a channel's state may hold; a patch adding more is refused (1009)", int)
    channel_recovery_max_publications: int = setting(
        1000, "a subscriber that missed more publications than this gets the state instead "
        "(recovered:false, reason too_far)", int)
    channel_recovery_max_bytes: int = setting(
        4 << 20, "a recovery that would replay more bytes than this sends the state instead "
        "(reason too_far)", _parse_size, metavar="SIZE")
    channel_idempotency_window_s: float = setting(
        300.0, "a publication repeated with the same idempotency key within this many seconds "
        "answers the first one's position and is not delivered again", float)
    channel_meta_ttl_s: float = setting(
        30 * 86400.0, "a channel's position and state are kept this many seconds after its "
        "last publication (at least as long as its history)", float)
    channel_position_check_s: float = setting(
        10.0, "with Redis: every instance compares the positions of its channels this often, "
        "to find a lost last publication", float)
    channel_ingest: bool = setting(
        True, "with Redis: consume the durable ingest stream '<broker-prefix>:ingest'",
        _parse_bool)
    channel_ingest_claim_idle_s: float = setting(
        30.0, "ingest entries an instance read but did not acknowledge within this many "
        "seconds (it died) are taken over by another", float)
    workflow_history_size: int = setting(
        1000, "publications kept per workflow:… channel for recovery", int)
    workflow_history_ttl_s: float = setting(
        86400.0, "a workflow channel's history is dropped this many seconds after its last "
        "publication (its state stays, in the store too)", float)
    notifications_history_size: int = setting(
        500, "publications kept per user's notifications channel for recovery (the mailbox "
        "itself is in the store)", int)
    notifications_history_ttl_s: float = setting(
        86400.0, "a notifications channel's history is dropped this many seconds after its "
        "last publication", float)
    notifications_latest_count: int = setting(
        20, "newest notifications in the state a (re)connecting tab gets; older pages over "
        "HTTP", int)
    notifications_payload_max_bytes: int = setting(
        16 << 10, "largest notification payload, JSON bytes; larger → refused (HTTP 413)",
        _parse_size, metavar="SIZE")
    agent_history_size: int = setting(
        50_000, "publications kept per agent:… run (the whole run, for its snapshot)", int)
    agent_history_ttl_s: float = setting(
        3600.0, "an agent run's stream is dropped this many seconds after its last "
        "publication (its final snapshot stays in the store)", float)
    agent_recovery_max_publications: int = setting(
        100, "most publications a reconnecting tab of an agent run gets replayed; past it, "
        "one compacted snapshot (text per message, tool calls, status)", int)
    agent_coalesce_ms: float = setting(
        50.0, "agent_run(): tokens of one message are published together at most this many "
        "milliseconds after the first of them", float)
    agent_coalesce_tokens: int = setting(
        32, "agent_run(): … or as soon as this many tokens wait", int)
    agent_delta_max_chars: int = setting(
        16384, "largest token delta of one publication, characters; larger → refused (1009)",
        int)
    agent_producer_ttl_s: float = setting(
        30.0, "an agent run whose producer published nothing (no heartbeat either) for this "
        "many seconds ends as run.failed (the producer died)", float)
    online_ttl_s: float = setting(
        60.0, "with Redis: an instance's per-user connection counts (is_online) stop counting "
        "this many seconds after it last refreshed them (it died)", float)
    hocuspocus_max_documents: int = setting(
        128, "/ws/hocuspocus: documents one socket may open at once; more are refused with "
        "PermissionDenied", int)
    hocuspocus_keepalive_s: float = setting(
        15.0, "/ws/hocuspocus: every socket is sent a keepalive frame this often (Ping to v4 "
        "providers), well under the 30 s after which a provider drops a silent socket", float)
    hocuspocus_auth_deadline_s: float = setting(
        60.0, "/ws/hocuspocus: a socket that has not authenticated any document this long "
        "after opening is closed with 4408", float)
    stateless_hooks: tuple[str, ...] = setting(
        (), "functions called with every stateless message of a Hocuspocus provider, "
        "comma-separated 'module:attribute'", _parse_list, metavar="MOD:ATTR,...")
    hooks: tuple[str, ...] = setting(
        (), "hooks for the life of documents and connections (on_load, on_change, on_store, "
        "on_unload, on_authenticate, on_connect, on_disconnect, on_stateless), "
        "comma-separated 'module:attribute', run in this order", _parse_list,
        metavar="MOD:ATTR,...")
    hook_change_debounce_ms: int = setting(
        1000, "on_change hooks hear of a document's changes once they pause this long", int)
    hook_change_max_wait_ms: int = setting(
        10000, "… or this long after the first change, whichever comes first", int)
    log_level: str = setting("info", "debug, info, warning or error", metavar="LEVEL")

    @classmethod
    def options(cls) -> list[dataclasses.Field[Any]]:
        return list(dataclasses.fields(cls))

    @staticmethod
    def env_name(name: str) -> str:
        return ENV_PREFIX + name.upper()

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None,
             overrides: Mapping[str, Any] | None = None,
             flags: Mapping[str, str | None] | None = None) -> Settings:
        """Defaults, then ``CAPTIFY_WS_*`` variables from ``env``, then ``flags`` (the text of
        command-line flags, by setting name), then ``overrides`` (values, not text).

        Raises :class:`ConfigError` naming the variable or flag and what is wrong with it:
        ``--max-message-size 16x: 16x is not a size (use 16m, 512k, 1g)``.
        """
        values: dict[str, Any] = {}
        for option in cls.options():
            parse = parser_for(option.metadata["parse"])
            raw = (env or {}).get(cls.env_name(option.name))
            if raw is not None:
                try:
                    values[option.name] = parse(raw)
                except (ValueError, TypeError) as exc:
                    raise ConfigError(f"{cls.env_name(option.name)}={raw}: {exc}") from None
            text = (flags or {}).get(option.name)
            if text is not None:
                try:
                    values[option.name] = parse(text)
                except (ValueError, TypeError) as exc:
                    raise ConfigError(f"{cls.flag_name(option.name)} {text}: {exc}") from None
        for name, value in (overrides or {}).items():
            if value is not None:
                values[name] = value
        settings = cls(**values)
        settings.validate()
        return settings

    @staticmethod
    def flag_name(name: str) -> str:
        """``max_message_size`` → ``--max-message-size``."""
        return "--" + name.replace("_", "-")

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first setting that cannot work (the rules:
        :func:`captify_ws.config.checks.validate`)."""
        checks.validate(self)

    @property
    def loopback(self) -> bool:
        """Whether the bind address is only reachable from this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def demo_enabled(self) -> bool:
        """Whether ``/demo`` is served: as set, else only on a loopback bind."""
        return self.loopback if self.demo is None else self.demo

    @property
    def effective_auth(self) -> str:
        return self.auth or "none"

    def replace(self, **changes: Any) -> Settings:
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def describe(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked, for logs and the dashboard."""
        out: dict[str, Any] = {}
        for option in self.options():
            value = getattr(self, option.name)
            if option.metadata["secret"] and value:
                value = "***"
            out[option.name] = value
        return out
