"""Webhooks: document and version events to the URLs in settings, signed per Standard Webhooks.

Two background tasks per instance:

* **ingest** reads the change feed (``store/history.py``) from the webhooks' cursor, turns the
  entries at least ``webhook_debounce_s`` old into events and creates their deliveries in the
  transaction that moves the cursor (``store/webhooks.py``: one instance wins each stretch of the
  feed). Consecutive ``changed`` entries of a document are one ``document.changed`` event (the
  debounce: a document edited without pause gets one event per pass). Events:
  ``document.created``, ``document.changed``, ``document.deleted``, ``version.created``, and,
  when named in ``webhook_events``, ``connection.opened`` / ``connection.closed``.
* **send** claims due deliveries (the oldest pending one per endpoint and document: at most one
  in flight per document, in order; at most :data:`CONCURRENCY` in all and
  ``webhook_endpoint_concurrency`` per endpoint, so a hanging endpoint with many due documents
  leaves slots to the others) and POSTs them with ``webhook-id``, ``webhook-timestamp``
  and ``webhook-signature`` (HMAC-SHA256 with the ``whsec_`` secret; the ``standardwebhooks``
  package). A 2xx answer delivers; anything else (an error status, no answer within
  ``webhook_timeout_s``, a refused connection) retries after an exponential backoff with jitter
  (``webhook_retry_base_s`` doubling up to ``webhook_retry_max_delay_s``) until
  ``webhook_retry_for_s`` after the event, then the delivery fails for good (logged, listed by
  ``GET /api/v1/webhooks/deliveries?status=failed``, redelivered on request).

Deliveries are rows in the store, so neither a restart nor ``kill -9`` loses one; one whose
sender died while sending is sent again when its lease ends (at-least-once: receivers
deduplicate by ``webhook-id``). Nothing here runs on a room's path: a receiver that hangs costs
one task for at most ``webhook_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import httpx
from standardwebhooks import Webhook

from captify_ws.backoff import delay_after
from captify_ws.store.history import FeedEntry, HistoryStore
from captify_ws.store.webhooks import Delivery, NewDelivery, WebhookStore
from captify_ws.tasks import wait_ended

if TYPE_CHECKING:
    from captify_ws.connection import Connection
    from captify_ws.server import Server

logger = logging.getLogger("captify_ws.webhooks")

DOCUMENT_EVENTS: Final = ("document.created", "document.changed", "document.deleted",
                          "version.created")
CONNECTION_EVENTS: Final = ("connection.opened", "connection.closed")
#: deliveries sent at once by one instance
CONCURRENCY: Final = 32
#: feed entries turned into events per pass
INGEST_BATCH: Final = 500
#: a claimed delivery is leased for webhook_timeout_s plus this: an attempt is over by then
#: (its timeout is strict), so a delivery whose sender died is sent again this soon after
LEASE_MARGIN_S: Final = 5.0
#: the most bytes of an error kept in the delivery log
MAX_ERROR: Final = 300


def plan_events(entries: list[FeedEntry], wanted: frozenset[str]) -> list[dict[str, Any]]:
    """The events of a stretch of the feed, in feed order: ``{type, documentId, data}``.
    A document's consecutive changes (no other event of it in between) make one
    ``document.changed``."""
    events: list[dict[str, Any]] = []
    last: dict[str, dict[str, Any]] = {}
    for entry in entries:
        document_id = entry.document_id
        if entry.kind in ("created", "changed"):
            if entry.kind == "created" and "document.created" in wanted:
                event = _event("document.created", entry, {})
                events.append(event)
                last[document_id] = event
            if "document.changed" not in wanted:
                continue
            previous = last.get(document_id)
            if previous is not None and previous["type"] == "document.changed":
                data = previous["data"]
                data["cursor"] = entry.cursor
                data["updates"] += entry.updates
                data["who"] = sorted(set(data["who"]) | set(entry.who))
                continue
            event = _event("document.changed", entry, {"fromCursor": entry.cursor,
                                                       "updates": entry.updates,
                                                       "who": list(entry.who)})
        elif entry.kind == "version" and "version.created" in wanted:
            event = _event("version.created", entry, {"version": entry.version,
                                                      "who": list(entry.who)})
        elif entry.kind == "deleted" and "document.deleted" in wanted:
            event = _event("document.deleted", entry, {})
        else:
            continue
        events.append(event)
        last[document_id] = event
    return events


def _event(kind: str, entry: FeedEntry, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "documentId": entry.document_id, "at": entry.at,
            "data": {"documentId": entry.document_id, "cursor": entry.cursor, **data}}


class WebhookSender:
    """Webhooks of one server. See the module docstring."""

    def __init__(self, server: Server) -> None:
        settings = server.settings
        self._server = server
        self.urls = settings.webhook_urls
        self.events = frozenset(settings.webhook_events)
        self.debounce_s = settings.webhook_debounce_s
        self.timeout_s = settings.webhook_timeout_s
        self.per_endpoint = settings.webhook_endpoint_concurrency
        self.retry_base_s = settings.webhook_retry_base_s
        self.retry_max_delay_s = settings.webhook_retry_max_delay_s
        self.retry_for_s = settings.webhook_retry_for_s
        self._signer = Webhook(settings.webhook_secret) if settings.webhook_secret else None
        self._rng = random.Random()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()
        #: connection events being stored, deliveries being sent
        self._side: set[asyncio.Task[Any]] = set()
        #: endpoint URL → deliveries being sent there (at most ``per_endpoint``)
        self._busy: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        store = self._server.store
        return bool(self.urls) and isinstance(store, WebhookStore) and \
            isinstance(store, HistoryStore)

    @property
    def store(self) -> WebhookStore:
        store = self._server.store
        assert isinstance(store, WebhookStore)
        return store

    def start(self) -> None:
        if not self.enabled or self._tasks:
            return
        if self._signer is None:
            logger.warning("webhooks are sent unsigned: set webhook_secret (whsec_…)")
        self._client = httpx.AsyncClient(follow_redirects=False)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._ingest_loop(), name="captify-webhooks-ingest"),
                       loop.create_task(self._send_loop(), name="captify-webhooks-send")]

    async def stop(self) -> None:
        """Stop sending: attempts in flight are cancelled (their deliveries stay pending and
        are sent again when their lease ends, here or on another instance)."""
        tasks = [*self._tasks, *self._side]
        for task in tasks:
            task.cancel()
        await wait_ended(tasks, logger)
        self._tasks = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def wake(self) -> None:
        """Look for due deliveries now (one was made pending)."""
        self._wake.set()

    # -- events ----------------------------------------------------------------------------

    async def _ingest_loop(self) -> None:
        interval = max(0.05, min(self.debounce_s, 1.0))
        while True:
            try:
                while await self.ingest_once():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("webhook events not read from the change feed: %s", exc)
            await asyncio.sleep(interval)

    async def ingest_once(self) -> bool:
        """Turn the next stretch of settled feed entries into deliveries; ``True`` if it
        did (there may be more)."""
        store = self._server.store
        assert isinstance(store, HistoryStore)
        cursor = await self.store.webhook_cursor()
        entries = await store.read_feed(cursor, INGEST_BATCH)
        settled = time.time() - self.debounce_s
        ready: list[FeedEntry] = []
        for entry in entries:
            if entry.at > settled:
                break  # later entries wait too: the cursor never skips one
            ready.append(entry)
        if not ready:
            return False
        now = time.time()
        deliveries = [self._delivery(url, event, now)
                      for event in plan_events(ready, self.events) for url in self.urls]
        if await self.store.enqueue_deliveries(cursor, ready[-1].cursor, deliveries) and \
                deliveries:
            self._wake.set()
        return True

    def _delivery(self, url: str, event: dict[str, Any], now: float) -> NewDelivery:
        body = {"type": event["type"],
                "timestamp": datetime.fromtimestamp(event["at"], UTC).isoformat(),
                "data": event["data"]}
        data = event["data"]
        event_id = f"msg_{data.get('fromCursor', data.get('cursor'))}_{data.get('cursor')}_" \
            f"{event['type']}" if "cursor" in data else f"msg_{secrets.token_hex(12)}"
        return NewDelivery(event_id, url, event.get("documentId") or "", event["type"],
                           json.dumps(body, separators=(",", ":")), now)

    def connection_event(self, kind: str, connection: Connection) -> None:
        """``connection.opened`` / ``connection.closed``, when named in ``webhook_events``;
        stored in the background (the connection never waits)."""
        if not self.enabled or kind not in self.events:
            return
        principal = connection.principal
        data = {"connectionId": connection.id, "path": connection.request.path,
                "userId": getattr(principal, "user_id", None),
                "closeCode": connection.close_code if kind == "connection.closed" else None}
        now = time.time()
        event = {"type": kind, "documentId": "", "at": now, "data": data}
        deliveries = [self._delivery(url, event, now) for url in self.urls]
        task = asyncio.get_running_loop().create_task(
            self.store.enqueue_deliveries(None, 0, deliveries))
        self._side.add(task)
        task.add_done_callback(self._side.discard)
        task.add_done_callback(lambda _: self._wake.set())

    # -- sending ---------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        running = self._side
        while True:
            try:
                room = CONCURRENCY - len(running)  # connection events count too: bounded
                claimed = await self.store.claim_deliveries(
                    time.time(), self.timeout_s + LEASE_MARGIN_S, room, self.per_endpoint,
                    self._busy) if room > 0 else []
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("webhook deliveries not read: %s", exc)
                claimed = []
            for delivery in claimed:
                task = asyncio.get_running_loop().create_task(self._send(delivery))
                self._busy[delivery.endpoint] = self._busy.get(delivery.endpoint, 0) + 1
                running.add(task)
                task.add_done_callback(running.discard)
                task.add_done_callback(functools.partial(self._sent, delivery.endpoint))
            if claimed:
                continue
            self._wake.clear()
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can lose a cancellation
            # that arrives as the event is set, and stop() would wait for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.05, min(self.retry_base_s, 1.0))):
                    await self._wake.wait()

    def _sent(self, endpoint: str, _task: asyncio.Task[None]) -> None:
        left = self._busy.pop(endpoint, 1) - 1
        if left > 0:
            self._busy[endpoint] = left
        self._wake.set()

    def _headers(self, delivery: Delivery) -> dict[str, str]:
        now = datetime.now(UTC)
        headers = {"content-type": "application/json", "webhook-id": delivery.event_id,
                   "webhook-timestamp": str(int(now.timestamp())),
                   "user-agent": "captify-ws-webhooks"}
        if self._signer is not None:
            headers["webhook-signature"] = self._signer.sign(delivery.event_id, now,
                                                             delivery.payload)
        return headers

    async def _post(self, delivery: Delivery) -> int:
        """The status of one attempt; raises on no answer within ``webhook_timeout_s``."""
        assert self._client is not None
        request = self._client.build_request("POST", delivery.endpoint,
                                             content=delivery.payload.encode(),
                                             headers=self._headers(delivery),
                                             timeout=self.timeout_s)

        async def attempt() -> int:
            assert self._client is not None
            response = await self._client.send(request, stream=True)
            await response.aclose()  # the body is not read: a receiver cannot make it cost
            return response.status_code
        async with asyncio.timeout(self.timeout_s):
            return await attempt()

    async def _send(self, delivery: Delivery) -> None:
        error: str | None = None
        status = 0
        try:
            status = await self._post(delivery)
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            error = f"no answer within {self.timeout_s:g} s"
        except Exception as exc:
            error = (f"{type(exc).__name__}: {exc}")[:MAX_ERROR]
        now = time.time()
        attempts = delivery.attempts + 1
        try:
            if error is None:
                await self.store.finish_delivery(delivery.id, "delivered", attempts, now,
                                                 status, None, now)
            elif now - delivery.created_at >= self.retry_for_s:
                logger.warning("webhook %s to %s failed for good after %d attempts: %s",
                               delivery.event_id, delivery.endpoint, attempts, error)
                await self.store.finish_delivery(delivery.id, "failed", attempts, now, status,
                                                 error, now)
            else:
                delay = delay_after(attempts, self.retry_base_s, self.retry_max_delay_s,
                                    self._rng)
                logger.info("webhook %s to %s: %s; retry %d in %.1f s", delivery.event_id,
                            delivery.endpoint, error, attempts, delay)
                await self.store.finish_delivery(delivery.id, "pending", attempts, now + delay,
                                                 status, error, now)
        except Exception as exc:  # the lease runs out and the delivery is sent again
            logger.warning("webhook %s: outcome not recorded: %s", delivery.event_id, exc)
