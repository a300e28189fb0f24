"""The Python producer of an agent run: ``async with agent_run(run_id, owner=user_id) as run``.

::

    from captify_ws import agent_run

    async with agent_run("run-42", owner="u-7") as run:
        await run.message_started("m1")
        async for delta in model.stream(prompt):
            await run.token("m1", delta)          # coalesced: ~50 ms or 32 tokens per publication
        await run.message_completed("m1")
    # leaving the block: run.completed (an exception: run.failed {error})

Coalescing (Centrifugo's advice for AI token streams): tokens of one message wait until
``agent_coalesce_ms`` after the first of them or until ``agent_coalesce_tokens`` wait, then go
out as one ``token`` publication with the joined delta; any other event flushes them first,
so order is kept. ``run.publications`` and ``run.tokens`` give the factor.

Cancel: a ``cancel`` from an authorized client (any instance) stores ``run.cancelled``; the
producer hears it and calls ``on_cancel`` if given, else cancels the task running the
``async with`` block (the block then ends quietly: the run is already ``cancelled``). Events
after that raise :class:`~captify_ws.errors.RunEnded`. While idle the producer publishes
``run.heartbeat`` every ``agent_producer_ttl_s / 3``, so only a dead producer is failed by the
watchdog.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from captify_ws.agents.events import STATUS_OF, TERMINAL, channel_of, event_of
from captify_ws.errors import RunEnded

if TYPE_CHECKING:
    from captify_ws.agents.runs import AgentRuns

logger = logging.getLogger("captify_ws.agents")

OnCancel = Callable[[], Any]


class AgentRun:
    """One run's producer. See the module docstring."""

    def __init__(self, runs: AgentRuns, run_id: str, *, owner: str | None = None,
                 on_cancel: OnCancel | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        self.runs = runs
        self.run_id = run_id
        self.channel = channel_of(run_id)
        self.owner = owner
        self.metadata = dict(metadata or {})
        self.on_cancel = on_cancel
        settings = runs.settings
        self.coalesce_s = settings.agent_coalesce_ms / 1000
        self.coalesce_tokens = settings.agent_coalesce_tokens
        self.delta_max = settings.agent_delta_max_chars
        #: set once the run ended (here or by a cancel); its final status
        self.status = "pending"
        self.cancelled = asyncio.Event()
        #: tokens given to :meth:`token`, and publications made (for the coalescing factor)
        self.tokens = 0
        self.publications = 0
        self._message: str | None = None
        self._buffer: list[str] = []
        self._buffered_chars = 0
        self._timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[Any] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop_listening: Callable[[], None] | None = None
        self._last_publish = time.monotonic()
        self._cancelling = False
        self._ending = False

    @property
    def ended(self) -> bool:
        return self.status not in ("pending", "running")

    # -- the context manager ---------------------------------------------------------------

    async def __aenter__(self) -> AgentRun:
        self._task = asyncio.current_task()
        self._stop_listening = await self.runs.hub.add_listener(self.channel, self._heard)
        self.runs.local_producers[self.channel] = \
            self.runs.local_producers.get(self.channel, 0) + 1
        try:
            await self._publish("run.started", {**self.metadata, "owner": self.owner},
                                idempotency_key=f"agent:{self.run_id}:started")
        except BaseException:
            self._release()
            raise
        self.status = "running"
        self._spawn(self._heartbeat())
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        try:
            if self.ended:
                pass
            elif exc is None:
                with contextlib.suppress(RunEnded):  # a cancel came first: it stands
                    await self.complete()
            elif isinstance(exc, asyncio.CancelledError):
                with contextlib.suppress(RunEnded):
                    await self._publish("run.cancelled", {"by": None, "reason": "producer"})
            else:
                with contextlib.suppress(RunEnded):
                    await self._publish("run.failed", {"error": type(exc).__name__,
                                                       "detail": str(exc)[:1000]})
        finally:
            self._release()
        if self._cancelling and not isinstance(exc, asyncio.CancelledError):
            # Our cancel was requested but the block ended before it was delivered: take it
            # here, so that it does not hit the caller's next await.
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.uncancel() > 0:
                    raise  # cancelled by someone else too
        if isinstance(exc, asyncio.CancelledError) and self._cancelling:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return True  # our own cancel: the block ends quietly, the run is cancelled
        return isinstance(exc, RunEnded) and self.cancelled.is_set()

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
        count = self.runs.local_producers.get(self.channel, 0) - 1
        if count > 0:
            self.runs.local_producers[self.channel] = count
        else:
            self.runs.local_producers.pop(self.channel, None)

    # -- events ----------------------------------------------------------------------------

    async def message_started(self, message_id: str, role: str = "assistant") -> None:
        await self._publish("message.started", {"message_id": message_id, "role": role})

    async def token(self, message_id: str, delta: str) -> None:
        """Add ``delta`` to message ``message_id`` (coalesced; see the module docstring).
        Raises ``RunEnded`` after the run ended, ``ChannelError(1009)`` for a delta longer
        than ``agent_delta_max_chars``."""
        if self.ended:
            raise RunEnded(self.run_id, self.status)
        self.tokens += 1
        self.runs.counters["tokens"] += 1
        if self._message != message_id or \
                self._buffered_chars + len(delta) > self.delta_max:
            await self.flush()
        if len(delta) > self.delta_max:
            await self._publish("token", {"message_id": message_id, "delta": delta})
            return
        self._message = message_id
        self._buffer.append(delta)
        self._buffered_chars += len(delta)
        if len(self._buffer) >= self.coalesce_tokens:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.coalesce_s,
                                                                self._flush_later)

    async def message_completed(self, message_id: str) -> None:
        await self._publish("message.completed", {"message_id": message_id})

    async def tool_call(self, call_id: str, name: str, args: Any = None) -> None:
        await self._publish("tool_call", {"id": call_id, "name": name, "args": args})

    async def tool_result(self, call_id: str, result: Any = None, *,
                          error: str | None = None) -> None:
        data: dict[str, Any] = {"id": call_id, "result": result}
        if error is not None:
            data["error"] = error
        await self._publish("tool_result", data)

    async def complete(self, result: Any = None) -> None:
        """End the run as ``run.completed``."""
        await self._publish("run.completed", {} if result is None else {"result": result})

    async def fail(self, error: str, detail: str | None = None) -> None:
        """End the run as ``run.failed``."""
        await self._publish("run.failed", {"error": error, **({"detail": detail}
                                                              if detail else {})})

    async def flush(self) -> None:
        """Publish the tokens waiting, now."""
        async with self._lock:
            await self._flush_locked()

    # -- internals -------------------------------------------------------------------------

    async def _flush_locked(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        data = {"message_id": self._message, "delta": "".join(self._buffer)}
        self._buffer.clear()
        self._buffered_chars = 0
        await self._send("token", data, None)

    def _flush_later(self) -> None:
        self._timer = None
        self._spawn(self._flush_quietly())

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except RunEnded:
            pass
        except Exception:
            logger.exception("agent run %s: publishing tokens failed", self.run_id)

    async def _publish(self, event: str, data: Any, *,
                       idempotency_key: str | None = None) -> None:
        async with self._lock:
            if event != "run.started" and self.ended:
                raise RunEnded(self.run_id, self.status)
            if event in TERMINAL:
                self._ending = True  # our own terminal event: not a cancel to act on
            await self._flush_locked()
            await self._send(event, data, idempotency_key)

    async def _send(self, event: str, data: Any, idempotency_key: str | None) -> None:
        try:
            await self.runs.publish(self.run_id, event, data, idempotency_key=idempotency_key)
        except RunEnded as exc:
            self.status = exc.status
            raise
        self.publications += 1
        if event == "token":
            self.runs.counters["token_publications"] += 1
        self._last_publish = time.monotonic()
        status = STATUS_OF.get(event)
        if status is not None:
            self.status = status

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _heartbeat(self) -> None:
        period = self.runs.settings.agent_producer_ttl_s / 3
        while not self.ended:
            await asyncio.sleep(max(0.0, self._last_publish + period - time.monotonic()))
            if self.ended or time.monotonic() - self._last_publish < period:
                continue
            try:
                await self._publish("run.heartbeat", {})
            except RunEnded:
                return
            except Exception as exc:  # retried at the next period
                logger.warning("agent run %s: heartbeat failed: %s", self.run_id, exc)
                self._last_publish = time.monotonic()

    def _heard(self, channel: str, offset: int, epoch: str, frame: str) -> None:
        """Every publication of the run (from any instance): a cancel reaches us here."""
        if event_of(frame) != "run.cancelled" or self.cancelled.is_set() or self._ending:
            return
        self.status = "cancelled"
        self.cancelled.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buffer.clear()
        if self.on_cancel is not None:
            result = self.on_cancel()
            if inspect.isawaitable(result):
                self._spawn(result)
        elif self._task is not None and not self._task.done():
            self._cancelling = True
            self._task.cancel()
