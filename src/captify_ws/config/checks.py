"""What makes a set of settings unworkable: :func:`validate`, run by ``Settings.load`` and
``Settings.replace`` on every :class:`~captify_ws.config.Settings` they build."""

from __future__ import annotations

from typing import TYPE_CHECKING

from captify_ws.errors import ConfigError

if TYPE_CHECKING:
    from captify_ws.config import Settings


def validate(settings: Settings) -> None:
    """Raise :class:`ConfigError` naming the first setting that cannot work."""
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"port {settings.port} is out of range 0-65535")
    if settings.transport not in ("native", "asgi"):
        raise ConfigError(f"transport must be 'native' or 'asgi', not {settings.transport!r}")
    if settings.max_message_size < 1024:
        raise ConfigError("max_message_size must be at least 1024 bytes")
    if settings.send_budget < 64 * 1024:
        raise ConfigError("send_budget must be at least 64 KiB")
    if settings.max_outbound_bytes and settings.max_outbound_bytes < settings.send_budget:
        raise ConfigError("max_outbound_bytes must be 0 (no bound) or at least send_budget")
    if settings.max_inbound_bytes and settings.max_inbound_bytes < settings.max_message_size:
        raise ConfigError("max_inbound_bytes must be 0 (no bound) or at least max_message_size")
    if settings.max_message_frames < 1 or settings.max_json_values < 1:
        raise ConfigError("max_message_frames and max_json_values must be at least 1")
    if settings.message_cost_bytes < 1024:
        raise ConfigError("message_cost_bytes must be at least 1024 bytes")
    if min(settings.send_timeout_s, settings.close_timeout_s, settings.http_head_timeout_s,
           settings.http_body_timeout_s, settings.http_keepalive_timeout_s) <= 0:
        raise ConfigError("send_timeout_s, close_timeout_s and the http_*_timeout_s "
                          "settings must be positive")
    if settings.http_max_head_bytes < 1024 or settings.http_max_connections < 1:
        raise ConfigError("http_max_head_bytes must be at least 1024 and "
                          "http_max_connections at least 1")
    if settings.max_presence_states < 1 or \
            settings.max_presence_bytes < settings.max_awareness_size:
        raise ConfigError("max_presence_states must be at least 1 and max_presence_bytes "
                          "at least max_awareness_size")
    if not 0 <= settings.yws_keepalive_s <= 25:
        raise ConfigError("yws_keepalive_s must be between 0 (off) and 25 seconds")
    if not 1 <= settings.awareness_flush_ms <= 1000:
        raise ConfigError("awareness_flush_ms must be between 1 and 1000")
    if not 0.05 <= settings.awareness_renewal_s <= 20:
        raise ConfigError("awareness_renewal_s must be between 0.05 and 20 seconds")
    if not 0 <= settings.store_commit_interval_ms <= 1000:
        raise ConfigError("store_commit_interval_ms must be between 0 and 1000")
    if settings.cluster_heartbeat_s <= 0 or settings.anti_entropy_s <= 0:
        raise ConfigError("cluster_heartbeat_s and anti_entropy_s must be positive")
    if settings.worker_affinity_limit < 0:
        raise ConfigError("worker_affinity_limit cannot be negative")
    if settings.workers < 1:
        raise ConfigError("workers must be at least 1")
    if settings.workers > 1 and (settings.broker == "memory" or settings.store == "memory"):
        raise ConfigError(
            f"--workers {settings.workers} needs a shared broker and a shared store: the "
            "processes must reach each other and the same documents, so set --broker "
            "redis://… and --store postgresql://… (or an SQLite file on this machine)")
    if settings.room_grace_s < 0:
        raise ConfigError("room_grace_s cannot be negative")
    if min(settings.version_idle_s, settings.version_keep, settings.version_max_age_s) < 0 or \
            settings.version_max_interval_s <= 0:
        raise ConfigError("version_idle_s, version_keep and version_max_age_s cannot be "
                          "negative; version_max_interval_s must be positive")
    if settings.history_log_keep_s < 0:
        raise ConfigError("history_log_keep_s cannot be negative")
    if min(settings.webhook_debounce_s, settings.webhook_retry_base_s) < 0 or min(
            settings.webhook_timeout_s, settings.webhook_retry_max_delay_s,
            settings.webhook_retry_for_s) <= 0:
        raise ConfigError("webhook_debounce_s and webhook_retry_base_s cannot be negative; "
                          "webhook_timeout_s, webhook_retry_max_delay_s and "
                          "webhook_retry_for_s must be positive")
    if settings.webhook_endpoint_concurrency < 1:
        raise ConfigError("webhook_endpoint_concurrency must be at least 1")
    for url in settings.webhook_urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"webhook_urls: {url!r} is not an http:// or https:// URL")
    known = {"document.created", "document.changed", "document.deleted",
             "version.created", "connection.opened", "connection.closed"}
    for event in settings.webhook_events:
        if event not in known:
            raise ConfigError(f"webhook_events: unknown event {event!r} (known: "
                              f"{', '.join(sorted(known))})")
    if settings.webhook_secret is not None and not settings.webhook_secret.startswith("whsec_"):
        raise ConfigError("webhook_secret must start with 'whsec_' (Standard Webhooks)")
    if settings.auth == "" and not settings.loopback:
        raise ConfigError(
            f"binding {settings.host} (not loopback) needs an authenticator: --auth "
            "session-proxy, --auth jwt, --auth module:function, or --auth none to let "
            "anyone in (development only)")
    if settings.message_rate <= 0 or settings.message_burst < 1:
        raise ConfigError("message_rate must be positive and message_burst at least 1")
    _validate_channels(settings)
    if settings.hocuspocus_max_documents < 1 or settings.hocuspocus_keepalive_s <= 0 or \
            settings.hocuspocus_auth_deadline_s <= 0:
        raise ConfigError("hocuspocus_max_documents must be at least 1, "
                          "hocuspocus_keepalive_s and hocuspocus_auth_deadline_s positive")
    if not 0 < settings.hook_change_debounce_ms <= settings.hook_change_max_wait_ms:
        raise ConfigError("hook_change_debounce_ms must be positive and at most "
                          "hook_change_max_wait_ms")
    if settings.log_format not in ("text", "json"):
        raise ConfigError(f"log_format must be 'text' or 'json', not {settings.log_format!r}")
    if settings.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level must be debug, info, warning or error, "
                          f"not {settings.log_level!r}")


def _validate_channels(settings: Settings) -> None:
    positive = ("channels_per_connection_max", "channel_subscribe_rate_per_s",
                "channel_subscribe_burst", "channel_request_max_bytes",
                "channel_name_max_bytes", "channel_publication_max_bytes",
                "channel_state_max_keys", "channel_recovery_max_bytes",
                "channel_idempotency_window_s", "channel_meta_ttl_s",
                "channel_position_check_s", "channel_ingest_claim_idle_s",
                "workflow_history_size", "workflow_history_ttl_s",
                "notifications_history_size", "notifications_history_ttl_s",
                "notifications_latest_count", "notifications_payload_max_bytes",
                "online_ttl_s", "agent_history_size", "agent_history_ttl_s",
                "agent_recovery_max_publications", "agent_coalesce_ms",
                "agent_coalesce_tokens", "agent_delta_max_chars", "agent_producer_ttl_s")
    for name in positive:
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{name} must be positive")
    if settings.channel_recovery_max_publications < 0:
        raise ConfigError("channel_recovery_max_publications cannot be negative")
