"""What captify-ws keeps and whom it tells: the document store and its group commit, the
history (automatic versions, the change feed's retention) and the webhooks. Fields of
:class:`~captify_ws.config.Settings` declared after those of
:class:`~captify_ws.config.serving.ServingSettings`."""

from __future__ import annotations

from dataclasses import dataclass

from captify_ws.config.fields import setting
from captify_ws.config.serving import ServingSettings
from captify_ws.values import parse_list


@dataclass(frozen=True, slots=True)
class KeepingSettings(ServingSettings):
    """The settings of what is kept and who is told (a base of
    :class:`~captify_ws.config.Settings`)."""

    store: str = setting(
        "sqlite:///./data/captify-ws.db",
        "document store URL: 'sqlite:///path.db' (the embedded default), "
        "'postgresql://user:password@host:5432/db' (shared by instances), 'memory' (tests; "
        "lost on exit) or your own store as 'module:attribute'", metavar="URL")
    store_commit_interval_ms: int = setting(
        100, "edits from WebSocket clients are committed at most this often, in one transaction "
        "(group commit); API writes commit at once", int)
    version_idle_s: float = setting(
        30.0, "history: an edited document gets an automatic version once it has been idle "
        "this many seconds (0: no automatic versions)", float)
    version_max_interval_s: float = setting(
        600.0, "history: while editing goes on, an automatic version at least every this many "
        "seconds", float)
    version_keep: int = setting(
        100, "history: automatic versions kept per document, newest first (0: no count "
        "limit; named and restore versions are always kept)", int)
    version_max_age_s: float = setting(
        30 * 86400.0, "history: automatic versions older than this many seconds are deleted "
        "(0: no age limit)", float)
    history_log_keep_s: float = setting(
        30 * 86400.0, "history: change feed entries, finished webhook deliveries and ended "
        "agent session records are deleted this many seconds after they happened (0: kept "
        "for ever)", float)
    webhook_urls: tuple[str, ...] = setting(
        (), "webhooks: endpoint URLs that receive document and version events, "
        "comma-separated (none: no webhooks)", parse_list, metavar="URL,...")
    webhook_secret: str | None = setting(
        None, "webhooks: the Standard Webhooks signing secret, 'whsec_' and base64",
        secret=True, metavar="whsec_…")
    webhook_events: tuple[str, ...] = setting(
        ("document.created", "document.changed", "document.deleted", "version.created"),
        "webhooks: the events sent, comma-separated; connection.opened and "
        "connection.closed are opt-in", parse_list, metavar="EVENT,...",
        shown="document.created,document.changed,document.deleted,version.created")
    webhook_debounce_s: float = setting(
        2.0, "webhooks: a document's changes within this many seconds make one "
        "document.changed event", float)
    webhook_timeout_s: float = setting(
        10.0, "webhooks: an attempt without an answer within this many seconds failed", float)
    webhook_endpoint_concurrency: int = setting(
        8, "webhooks: the most deliveries in flight to one endpoint URL at once, per instance "
        "(deliveries; all endpoints share 32): a hanging endpoint cannot hold every slot", int)
    webhook_retry_base_s: float = setting(
        5.0, "webhooks: the first retry after this many seconds, doubling each time (with "
        "jitter)", float)
    webhook_retry_max_delay_s: float = setting(
        3600.0, "webhooks: the longest wait between two attempts, seconds", float)
    webhook_retry_for_s: float = setting(
        86400.0, "webhooks: an event not delivered this many seconds after it happened is "
        "given up (failed, listed, redeliverable)", float)
