"""Python clients of captify-ws channels, for services and tests.

:class:`ChannelClient` subscribes over WebSocket and does the same bookkeeping as
``/client/channels.js``: it keeps each channel's position and state, drops publications it
already has (by offset), resubscribes with ``since`` on a gap, another epoch or a reconnect, and
replaces the state on ``recovered:false`` and ``resync``::

    client = ChannelClient("ws://127.0.0.1:3000/ws/workflow")
    run = client.subscribe("workflow:run-7")
    async with client:
        async for pub in client.publications():
            print(pub["event"], pub["data"], run.state)

:class:`Publisher` publishes from any process through Redis, with no HTTP hop: it appends to the
durable ingest stream (so nothing is lost while captify-ws restarts) and waits for the position
an instance answers::

    async with Publisher("redis://127.0.0.1:6379/0") as publisher:
        position = await publisher.publish("workflow:run-7", "run.status", {"status": "done"},
                                           state_patch={"status": "done"})
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from captify_ws.backoff import Backoff
from captify_ws.channels.types import Published
from captify_ws.errors import BrokerError, ChannelError

#: Close codes after which reconnecting cannot help.
FATAL_CLOSE = frozenset({1008, 4400, 4401, 4403})

Reducer = Callable[[Any, dict[str, Any]], Any]


def merge_patch(state: Any, pub: dict[str, Any]) -> Any:
    """The default reducer: merge the publication's ``patch`` (``null`` removes a key)."""
    patch = pub.get("patch")
    if not patch:
        return state
    merged = dict(state or {})
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def notifications_reducer(state: Any, pub: dict[str, Any]) -> Any:
    """The state of a ``/ws/notifications`` channel kept from its events: absolute counts,
    the highest ``unread_version`` wins; ``latest`` gains new notifications and read marks."""
    current = state or {"unread_count": 0, "unread_version": 0, "latest": []}
    event, data = pub.get("event"), pub.get("data") or {}
    if event not in ("notification.created", "notification.read"):
        return current
    nxt = {**current, "latest": list(current.get("latest", []))}
    if data.get("unread_version", -1) >= current.get("unread_version", 0):
        nxt["unread_count"] = data["unread_count"]
        nxt["unread_version"] = data["unread_version"]
    if event == "notification.created":
        if all(item["id"] != data["id"] for item in nxt["latest"]):
            item = {k: v for k, v in data.items() if k not in ("unread_count", "unread_version")}
            nxt["latest"] = sorted([*nxt["latest"], item], key=lambda i: -i["id"])
    else:
        ids = set(data.get("ids", ()))
        up_to = data.get("up_to")
        nxt["latest"] = [{**item, "read": True}
                         if item["id"] in ids or ("ids" not in data
                                                  and (up_to is None or item["id"] <= up_to))
                         else item for item in nxt["latest"]]
    return nxt


def agent_reducer(state: Any, pub: dict[str, Any]) -> Any:
    """The state of a ``/ws/agent`` run kept from its events: the compacted snapshot's shape
    (see :mod:`captify_ws.agents.events`); events after the terminal one are ignored."""
    from captify_ws.agents.events import RunFold

    if state is None:
        fold = RunFold(str(pub.get("channel", ":")).split(":", 1)[1])
    else:
        fold = RunFold.from_json(state)
    data = pub.get("data")
    fold.apply(int(pub.get("offset") or 0), str(pub.get("event")),
               data if isinstance(data, dict) else {}, int(pub.get("ts") or 0))
    return fold.to_json()


class ClientSubscription:
    """One channel of a :class:`ChannelClient`: position, state, and what it delivered."""

    def __init__(self, channel: str, reduce: Reducer = merge_patch) -> None:
        self.channel = channel
        self.reduce = reduce
        self.offset: int | None = None
        self.epoch: str | None = None
        self.state: Any = None
        self.status = "subscribing"
        #: ``recovered:false``/``resync`` reasons seen, in order (``None``: a fresh state)
        self.resets: list[str | None] = []
        self.error: dict[str, Any] | None = None

    @property
    def since(self) -> dict[str, Any] | None:
        if self.offset is None or self.epoch is None:
            return None
        return {"offset": self.offset, "epoch": self.epoch}


class ChannelClient:
    """See the module docstring. ``url`` may be a function (a fresh token per connect)."""

    def __init__(self, url: str | Callable[[], str], *, implicit: bool = False,
                 reduce: Reducer = merge_patch, headers: Mapping[str, str] | None = None,
                 min_delay_s: float = 0.05, max_delay_s: float = 2.0) -> None:
        self.url = url
        self.implicit = implicit
        #: the reducer of the implicit channel
        self.reduce = reduce
        self.headers = dict(headers or {})
        self.subscriptions: dict[str, ClientSubscription] = {}
        self.ws: ClientConnection | None = None
        self.connects = 0
        self.closed_with: int | None = None
        self._backoff = Backoff(min_delay_s, max_delay_s)
        self._next_id = 1
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._implicit_channel: str | None = None
        self._stopping = False

    def subscribe(self, channel: str, reduce: Reducer = merge_patch) -> ClientSubscription:
        sub = self.subscriptions.get(channel)
        if sub is None:
            sub = self.subscriptions[channel] = ClientSubscription(channel, reduce)
            if self.ws is not None:
                self._spawn_send(self._subscribe_message(sub))
        return sub

    async def __aenter__(self) -> ChannelClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        if self.ws is not None:
            await self.ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def drop_connection(self) -> None:
        """Cut the connection without a close handshake (a network loss); it reconnects."""
        if self.ws is not None:
            self.ws.transport.abort()

    async def request(self, kind: str, **fields: Any) -> Any:
        """A handler's command; returns the reply's data or raises ``ChannelError``."""
        if self.ws is None:
            raise ChannelError(1013, "not connected")
        ident = self._id()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[ident] = future
        await self.ws.send(json.dumps({**fields, "type": kind, "id": ident}))
        return await asyncio.wait_for(future, 10)

    async def publications(self) -> AsyncIterator[dict[str, Any]]:
        """Every event this client delivers: ``pub`` frames (in order, each once), and
        ``state``/``error`` entries ``{"type": …, "channel": …}``."""
        while True:
            yield await self._events.get()

    # -- internals -------------------------------------------------------------------------

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _spawn_send(self, message: dict[str, Any]) -> None:
        ws = self.ws
        if ws is not None:
            asyncio.get_running_loop().create_task(self._send(ws, message))

    @staticmethod
    async def _send(ws: ClientConnection, message: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps(message))

    def _subscribe_message(self, sub: ClientSubscription) -> dict[str, Any]:
        sub.status = "subscribing"
        message: dict[str, Any] = {"type": "subscribe", "id": self._id(), "channel": sub.channel}
        if sub.since is not None:
            message["since"] = sub.since
        return message

    def _connect_url(self) -> str:
        url = self.url() if callable(self.url) else self.url
        sub = self.subscriptions.get(self._implicit_channel or "")
        if self.implicit and sub is not None and sub.since is not None:
            url += ("&" if "?" in url else "?") + f"offset={sub.offset}&epoch={sub.epoch}"
        return url

    async def _run(self) -> None:
        while not self._stopping:
            try:
                async with connect(self._connect_url(), max_queue=None,
                                   additional_headers=self.headers) as ws:
                    self.ws = ws
                    self.connects += 1
                    self._backoff.reset()
                    for sub in self.subscriptions.values():
                        if sub.channel != self._implicit_channel:
                            await ws.send(json.dumps(self._subscribe_message(sub)))
                    async for raw in ws:
                        self._receive(json.loads(raw))
                    self.closed_with = ws.close_code
            except (OSError, ConnectionClosed, InvalidStatus, TimeoutError) as exc:
                if isinstance(exc, ConnectionClosed) and exc.rcvd is not None:
                    self.closed_with = exc.rcvd.code
            finally:
                self.ws = None
                for future in self._replies.values():
                    if not future.done():
                        future.set_exception(ChannelError(1006, "connection lost"))
                self._replies.clear()
            if self._stopping or self.closed_with in FATAL_CLOSE:
                return
            await self._backoff.wait()

    def _receive(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        sub = self.subscriptions.get(channel) if isinstance(channel, str) else None
        if kind == "pub" and sub is not None:
            self._on_pub(sub, message)
        elif kind == "subscribed" and isinstance(channel, str):
            if sub is None and self.implicit and "id" not in message:
                sub = self.subscriptions[channel] = ClientSubscription(channel, self.reduce)
                self._implicit_channel = channel
            if sub is None:
                return
            if message["recovered"]:
                sub.epoch = message["epoch"]
                sub.offset = sub.offset or 0
                sub.status = "live"
            else:
                self._set_state(sub, message)
        elif kind == "resync" and sub is not None:
            self._set_state(sub, message)
        elif kind == "reply":
            future = self._replies.pop(message.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(message.get("data"))
        elif kind == "error":
            future = self._replies.pop(message.get("id", -1), None)
            if future is not None and not future.done():
                future.set_exception(ChannelError(message["code"], message["message"]))
            elif sub is not None and sub.status != "live":
                sub.error = message
            self._events.put_nowait(message)
        elif kind == "unsubscribed" and sub is not None and "code" in message:
            sub.status = "closed"
            sub.error = message
            del self.subscriptions[sub.channel]
            self._events.put_nowait(message)

    def _set_state(self, sub: ClientSubscription, message: dict[str, Any]) -> None:
        sub.state = message.get("state")
        sub.offset = message["offset"]
        sub.epoch = message["epoch"]
        sub.status = "live"
        sub.resets.append(message.get("reason"))
        self._events.put_nowait({"type": "state", "channel": sub.channel,
                                 "reason": message.get("reason"), "state": sub.state})

    def _on_pub(self, sub: ClientSubscription, pub: dict[str, Any]) -> None:
        offset = pub.get("offset")
        if offset is None:  # ephemeral
            self._events.put_nowait(pub)
            return
        if sub.status != "live" or sub.offset is None:
            return  # a resubscribe is on its way and replays it
        if pub.get("epoch") != sub.epoch or offset > sub.offset + 1:
            sub.status = "subscribing"
            self._spawn_send({"type": "unsubscribe", "channel": sub.channel})
            self._spawn_send(self._subscribe_message(sub))
            return
        if offset <= sub.offset:
            return
        sub.offset = offset
        sub.state = sub.reduce(sub.state, pub)
        self._events.put_nowait(pub)


class Publisher:
    """Publish from any process through Redis (the durable ingest stream); see the module
    docstring. ``prefix`` is the servers' ``--broker-prefix``."""

    def __init__(self, redis_url: str, *, prefix: str = "captify", timeout_s: float = 10.0,
                 max_entries: int = 100_000) -> None:
        import redis.asyncio as aioredis

        self._client: Any = aioredis.from_url(redis_url, socket_timeout=timeout_s + 5)
        self.stream = f"{prefix}:ingest"
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._max_entries = max_entries

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.aclose()

    async def publish(self, channel: str, event: str, data: Any = None, *,
                      state_patch: Mapping[str, Any] | None = None,
                      idempotency_key: str | None = None) -> Published:
        """Append to the ingest stream and wait for an instance's answer. Retrying with the
        same ``idempotency_key`` (one is made if none is given) never publishes twice.
        Raises ``ChannelError`` as the server does, and ``TimeoutError`` when no instance
        answered in time (the entry stays queued and will be published)."""
        reply = f"{self._prefix}:ingest:reply:{secrets.token_hex(8)}"
        fields = {"ch": channel, "ev": event, "d": json.dumps(data),
                  "ik": idempotency_key or secrets.token_hex(12), "rk": reply}
        if state_patch is not None:
            fields["sp"] = json.dumps(state_patch)
        try:
            await self._client.xadd(self.stream, fields, maxlen=self._max_entries,
                                    approximate=True)
            answer = await self._client.blpop([reply], timeout=self._timeout_s)
        except OSError as exc:
            raise BrokerError(f"cannot reach Redis: {exc}") from exc
        if answer is None:
            raise TimeoutError(f"no captify-ws instance answered within {self._timeout_s} s "
                               "(the publication stays queued)")
        parts = answer[1].decode().split(" ", 2)
        if parts[0] == "error":
            raise ChannelError(int(parts[1]), parts[2])
        flags = parts[2] if len(parts) > 2 else ""
        return Published(int(parts[0]), parts[1], duplicate="duplicate" in flags,
                         stale="stale" in flags, sealed="sealed" in flags)
