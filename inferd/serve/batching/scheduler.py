"""Dynamic batching's scheduler: the queue, the deadlines, and when a batch leaves for which execution slot.

A model run on a batch of N rows costs far less than N runs of one row, so under
load the server gathers requests that arrive close together and runs them as one
batch, following Triton's dynamic batcher: the oldest queued request waits at
most `max_queue_delay_ms` for company, a batch leaves early when it is full or
reaches a preferred size, and an execution slot must be free before a batch is
formed, so requests that arrive while the engine is busy join the next batch
instead of queueing behind single-row runs.

As in Triton, a lone request with `max_queue_delay_ms > 0` waits out the delay
for company even when the engine is idle: that wait is the price of batching.
Only `max_queue_delay_ms == 0` sends it at once, and still batches under load,
because whatever queued while every execution slot was busy leaves together.

Everything but the engine call happens on one event loop, so the queue needs no
locks; the engine call (with the merging and splitting around it) runs on a
small thread pool because the backends release the GIL. Dispatching is plain
callbacks, not a task: a request that may leave at once leaves inside its
`submit`, and a finished batch hands its slot on from its completion callback,
without waking anything in between (each wake costs tens of microseconds).
Under load, a batch that can no longer change (it is full, or the model does not
merge) is handed to the thread pool at once, one such batch per execution slot,
so a worker that finishes starts it immediately instead of idling until the busy
event loop gets round to the slot's completion callback; it keeps its deadline until it starts.

What a request carries and how requests merge is the model's `BatchInputs`
(`inferd.serve.batching.inputs`); the settings are the model's `ServingSettings`, checked where they were made.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol

from inferd.errors import InferdError, NotReady, Overloaded
from inferd.runtime.batches import rows as rows_of
from inferd.runtime.compiled import CompiledModel
from inferd.serve.batching.inputs import BatchInputs, Checked, Outputs, TensorInputs
from inferd.serve.batching.queued import BatchRun, QueuedRequest
from inferd.serve.malloc import MemoryTrimmer
from inferd.serve.phases import Phases
from inferd.serve.settings import ServingSettings

WATCH_AFTER_S = 0.25
"""How long a request waits before it starts watching for its client to leave: most are answered sooner,
and for them watching would cost more than it could save."""

_COMPUTE_SMOOTHING = 0.2
"""Weight of the newest batch in the moving average of compute time behind the Retry-After estimate."""


class ClientDisconnected(InferdError):
    """The client went away before its result was ready, so the result has nobody to go to."""

    status_code = 499


class BatchObserver(Protocol):
    """Metrics hook, called on the event loop, so implementations need no locking."""

    def on_batch(self, rows: int, requests: int, phases: Phases) -> None: ...

    def on_dequeued(self, queue_s: float) -> None: ...


class DynamicBatcher:
    """Queues requests for one model and runs them in merged batches on a private thread pool.

    Bound to the event loop of its first `submit`, so a batcher can be built before any loop runs.
    """

    def __init__(
        self, model: CompiledModel, settings: ServingSettings, observer: BatchObserver | None = None,
        inputs: BatchInputs | None = None, *, name: str | None = None,
    ) -> None:
        self.model = model
        self.name = name or model.name
        """The name requests use (the repository's, which the package's own may differ from): errors say it."""
        self.settings = settings
        self.observer = observer
        self.inputs = inputs or TensorInputs(model)
        self._mergeable = model.manifest.batch_dynamic and settings.max_batch_size > 1
        self._delay_s = settings.max_queue_delay_ms / 1000
        self._preferred = frozenset(settings.preferred_batch_sizes)
        # A dict keeps arrival order and removes a cancelled request in O(1).
        self._queue: dict[QueuedRequest, None] = {}
        self._executor = ThreadPoolExecutor(max_workers=settings.instances, thread_name_prefix=f"inferd-batch-{self.name}")
        self._trimmer = MemoryTrimmer()
        self._in_engine: list[list[QueuedRequest]] = []  # batches handed to the thread pool, running or about to
        self._compute_s: float | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._delay_timer: asyncio.TimerHandle | None = None
        self._drained: asyncio.Future[None] | None = None

    @property
    def queue_depth(self) -> int:
        """Requests waiting: queued, or handed to the engine in a batch that has not started yet."""
        return len(self._queue) + sum(not r.started for batch in self._in_engine for r in batch)

    @property
    def rows_in_flight(self) -> int:
        """Rows in batches handed to the engine: running, or next in line for a busy instance."""
        return sum(r.rows for batch in self._in_engine for r in batch)

    # -- submitting ----------------------------------------------------------------------------

    async def submit(
        self,
        feeds: Mapping[str, Any] | Checked,
        *,
        deadline: float | None = None,
        disconnected: Callable[[], Awaitable[object]] | None = None,
        phases: Phases | None = None,
    ) -> Outputs:
        """The model's outputs for `feeds`, computed in a batch with whatever else is queued.

        `deadline` is a `time.monotonic()` instant; it bounds the time in the queue
        only, because once a batch runs its result is on the way and abandoning it
        would save nothing. `disconnected` returns when the client has gone; a
        request still waiting then is dropped with ClientDisconnected. `feeds` are checked by the model's
        `BatchInputs` here, unless a face has checked them already (`Checked`). `phases`, when given, receives the
        request's queue time and its batch's compute once the batch has run.
        """
        checked = feeds.feeds if isinstance(feeds, Checked) else self.inputs.check(feeds)
        rows = rows_of(checked)
        self.settings.check_rows(rows)
        self.admit()
        now = time.monotonic()
        if deadline is None and self.settings.timeout_s is not None:
            deadline = now + self.settings.timeout_s
        request = QueuedRequest(
            feeds=checked, rows=rows, signature=self.inputs.signature(checked), enqueued=now, deadline=deadline,
            future=self._ensure_started().create_future(), phases=phases,
        )
        if request.expired(now):
            raise request.deadline_error(self.name, now)
        self._queue[request] = None
        self._dispatch()
        return await self._wait(request, disconnected)

    def admit(self) -> None:
        """Raise now if a request would be refused, so a handler can refuse before reading a large body."""
        if self._closing:
            raise NotReady(f"model {self.name!r} is shutting down; retry shortly")
        if len(self._queue) >= self.settings.max_queue_size:
            retry = self._retry_after_s()
            raise Overloaded(
                f"model {self.name!r} already has {len(self._queue)} requests queued "
                f"(max_queue_size {self.settings.max_queue_size}); retry in about {retry:.0f} s",
                retry_after_s=retry,
            )

    def _retry_after_s(self) -> float:
        """Whole seconds until the queue has likely drained: batches ahead × recent compute time ÷ executions."""
        queued_rows = sum(request.rows for request in self._queue)
        batches = math.ceil(queued_rows / self.settings.max_batch_size) if self._mergeable else len(self._queue)
        estimate = batches * (self._compute_s or 0.0) / self.settings.instances
        return float(max(1, math.ceil(estimate)))

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("a DynamicBatcher serves the event loop of its first submit(); build one per loop")
        return loop

    async def _wait(self, request: QueuedRequest, disconnected: Callable[[], Awaitable[object]] | None) -> Outputs:
        """Await the result; timers, not a polling loop, enforce the queue deadline and notice a gone client.

        Timer callbacks cost the event loop nothing until they fire, and most
        requests are answered before either would.
        """
        assert self._loop is not None
        loop, timers = self._loop, []
        watch: asyncio.Future[object] | None = None
        if request.deadline is not None:
            timers.append(loop.call_later(request.deadline - time.monotonic(), self._expire, request))

        def start_watching() -> None:
            nonlocal watch
            assert disconnected is not None
            watch = asyncio.ensure_future(disconnected())
            watch.add_done_callback(partial(self._client_left, request))

        if disconnected is not None:
            timers.append(loop.call_later(WATCH_AFTER_S, start_watching))
        try:
            return await request.future
        except BaseException:  # cancelled, or the client left: nobody takes the result
            self._abandon(request)
            raise
        finally:
            for timer in timers:
                timer.cancel()
            if watch is not None:
                watch.cancel()

    def _expire(self, request: QueuedRequest) -> None:
        if request in self._queue:
            self._fail_queued(request, request.deadline_error(self.name, time.monotonic()))
            self._dispatch()
        elif not request.started and not request.future.done():  # handed over, waiting for a busy instance
            request.future.set_exception(request.deadline_error(self.name, time.monotonic()))

    def _client_left(self, request: QueuedRequest, watch: asyncio.Future[object]) -> None:
        if watch.cancelled() or request.future.done():
            return
        error = watch.exception() or ClientDisconnected(f"the client left before model {self.name!r} answered")
        request.future.set_exception(error)

    def _abandon(self, request: QueuedRequest) -> None:
        """Forget a request nobody waits for; if it already runs, its result is simply dropped."""
        if request in self._queue:
            del self._queue[request]
            self._dispatch()
        request.future.cancel()

    def _fail_queued(self, request: QueuedRequest, error: BaseException) -> None:
        """Take a request out of the queue with an error; the caller dispatches, as the queue's head may change."""
        del self._queue[request]
        if not request.future.done():
            request.future.set_exception(error)

    # -- dispatching ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Launch every batch that free execution slots and the queue allow now, oldest request first.

        Called whenever that may have changed: a request queued or left, a batch
        finished, the oldest request's delay ran out. A batch that may still wait
        for company sets a timer for the end of its delay instead. When every slot
        is busy, a batch that can no longer change is handed over to wait for the
        next free instance (one per slot; see the module's docstring).
        """
        if self._delay_timer is not None:
            self._delay_timer.cancel()
            self._delay_timer = None
        now = time.monotonic()
        self._expire_queued(now)
        slots = self.settings.instances
        handed_over_limit = 2 * slots  # a running batch per slot, and one settled batch waiting for each
        while len(self._in_engine) < handed_over_limit and self._queue:
            first = next(iter(self._queue))
            batch, ready = self._select(first)
            every_slot_busy = len(self._in_engine) >= slots
            if every_slot_busy and not self._settled(batch):
                break
            # Nothing can join once closing, so waiting out the delay would only slow the drain.
            remaining = 0.0 if ready or self._closing else first.enqueued + self._delay_s - now
            if remaining > 0:
                assert self._loop is not None
                self._delay_timer = self._loop.call_later(remaining, self._dispatch)
                break
            self._launch(batch)
        if self._drained is not None and not self._drained.done() and not self._queue and not self._in_engine:
            self._drained.set_result(None)

    def _expire_queued(self, now: float) -> None:
        """Fail requests past their deadline here too, as their own timers may not have fired yet."""
        for request in [r for r in self._queue if r.expired(now)]:
            self._fail_queued(request, request.deadline_error(self.name, now))

    def _select(self, first: QueuedRequest) -> tuple[list[QueuedRequest], bool]:
        """The batch to send for the oldest request, and whether to send it without waiting for more.

        Later requests join in arrival order when their inputs have the same
        non-batch shapes and they fit; one that does not fit is skipped, not a stop,
        so smaller requests behind it can still fill the batch. When the rows reach
        a preferred size but the whole batch would not, the preferred prefix goes now.
        """
        limit = self.settings.max_batch_size
        if not self._mergeable or first.rows >= limit:
            return [first], True
        batch, rows, preferred_at = [first], first.rows, 1 if first.rows in self._preferred else 0
        for request in self._queue:
            if request is first or request.signature != first.signature or rows + request.rows > limit:
                continue
            batch.append(request)
            rows += request.rows
            if rows == limit:
                return batch, True
            if rows in self._preferred:
                preferred_at = len(batch)
        if preferred_at:
            return batch[:preferred_at], True
        return batch, False

    def _settled(self, batch: list[QueuedRequest]) -> bool:
        """Whether nothing could join `batch` any more: it is full, or the model runs requests one by one."""
        return not self._mergeable or sum(request.rows for request in batch) >= self.settings.max_batch_size

    def _launch(self, batch: list[QueuedRequest]) -> None:
        for request in batch:
            del self._queue[request]
        self._in_engine.append(batch)
        loop = self._loop
        assert loop is not None

        def finished(running: concurrent.futures.Future[BatchRun]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to answer
                loop.call_soon_threadsafe(self._finish, batch, running)

        self._executor.submit(self._run, batch).add_done_callback(finished)

    def _run(self, batch: list[QueuedRequest]) -> BatchRun:
        """On a worker thread: the batch's requests that still have a waiting client and time left, then the freed
        memory of earlier batches back to the system.

        `future.done()` is read off the loop's thread: a plain read of its state, which at worst is a moment stale,
        and then a result nobody takes is computed, as for a client that leaves while its batch runs.
        """
        started_at = time.monotonic()
        ran = [request for request in batch if not (request.future.done() or request.expired(started_at))]
        for request in ran:
            request.started = True
        try:
            results, phases = self.inputs.run([r.feeds for r in ran]) if ran else ([], Phases())
            return BatchRun(ran, started_at, results, phases)
        finally:
            self._trimmer.trim()

    def _finish(self, batch: list[QueuedRequest], running: concurrent.futures.Future[BatchRun]) -> None:
        """On the event loop: answer the batch's requests, then give its slot to whatever queued meanwhile."""
        self._in_engine.remove(batch)
        try:
            self._answer(batch, running)
        finally:
            self._dispatch()

    def _answer(self, batch: list[QueuedRequest], running: concurrent.futures.Future[BatchRun]) -> None:
        for request in batch:
            if not request.started and not request.future.done():  # its deadline passed while it was handed over
                request.future.set_exception(request.deadline_error(self.name, time.monotonic()))
        error = running.exception()
        if error is not None:
            # An engine failure is a server fault shared by the batch; every request that ran sees it as raised.
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        run = running.result()
        if not run.ran:
            return
        compute_s = run.phases.compute_s
        self._compute_s = compute_s if self._compute_s is None else (
            _COMPUTE_SMOOTHING * compute_s + (1 - _COMPUTE_SMOOTHING) * self._compute_s
        )
        for request in run.ran:
            queue_s = run.started_at - request.enqueued
            if request.phases is not None:
                request.phases.add_batch(run.phases, queue_s)
            if self.observer is not None:
                self.observer.on_dequeued(queue_s)
        if self.observer is not None:
            self.observer.on_batch(sum(r.rows for r in run.ran), len(run.ran), run.phases)
        for request, outputs in zip(run.ran, run.results, strict=True):
            if not request.future.done():
                request.future.set_result(outputs)

    # -- shutting down -------------------------------------------------------------------------

    async def close(self, drain: bool = True) -> None:
        """Refuse new requests, then run the queued ones (drain) or fail them with NotReady; running batches finish."""
        self._closing = True
        if not drain:
            error = NotReady(f"model {self.name!r} is shutting down; retry shortly")
            for request in list(self._queue):
                self._fail_queued(request, error)
        if self._loop is not None:
            self._drained = self._loop.create_future()
            self._dispatch()  # closing: everything queued leaves now, as slots free up
            await self._drained
        self._executor.shutdown(wait=False)

