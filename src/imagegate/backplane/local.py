"""The local backplane: SQLite through the Store, asyncio workers and fan-out in this process.

Each job goes to the queue of the first provider on its route. A queue has as many workers
as that provider's ``concurrency`` (the router's per-provider semaphore also holds any
failover attempt to it), so one local pipeline never runs two jobs at once while a remote
provider may run several.

Life of a job: ``submit`` writes the row (``queued``) and its ``queued`` event in one
transaction before it returns; once its queue has a free slot the job is claimed (``running``
and ``started`` in one transaction) and the handler runs; the gateway records the end through
the backplane's recorder, which writes the job's end (images included) and its
``succeeded``, ``failed`` or ``cancelled`` event in one transaction. ``run`` (submit and wait,
for the OpenAI and A1111 routes) writes the row as ``running`` with both its ``queued`` and
``started`` events in one transaction when a slot is free, and runs the job in the caller's
task: two transactions a job. Progress is coalesced: while one progress write is in flight,
only the newest step waits.

On start, jobs a previous process left ``queued`` are queued again; jobs left ``running`` are
run once more (``retries`` counts it) or, after one retry or on a paid provider whose request
may have been billed, fail as interrupted by the restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, cast

from sqlalchemy import Table, func, select, text, update

from imagegate import tracing
from imagegate.backplane.base import (
    TERMINAL_EVENTS,
    TERMINAL_STATUSES,
    Backplane,
    BreakerSnapshot,
    BreakerStore,
    EventBus,
    JobContext,
    JobHandler,
    JobOutcome,
    JobQueue,
    JobStore,
    ProgressPump,
    QueueFull,
    Recorder,
    Submitted,
    end_unrecorded,
    fair_priority,
    instead_of_requeue,
)
from imagegate.errors import Cancelled, ImagegateError
from imagegate.jobend import Failed
from imagegate.request import ImageRequest, ImageResult
from imagegate.store import Store
from imagegate.store.models import Job, JobEvent
from imagegate.store.records import (
    EventRecord,
    ImageRecord,
    JobRecord,
)

__all__ = [
    "SERVER_SOURCES",
    "LocalBackplane",
    "LocalBreakerStore",
    "LocalEventBus",
    "LocalJobQueue",
    "LocalJobStore",
]

SERVER_SOURCES = ("openai", "a1111", "jobs")
"""Sources of jobs the backplane owns; library and CLI jobs run in their own process."""

FINISHED_GRACE_S = 1.0
"""How long a subscriber of a finished job waits for a terminal event still on its way."""

_JOBS = cast(Table, Job.__table__)
_EVENTS = cast(Table, JobEvent.__table__)


def _now() -> datetime:
    return datetime.now(UTC)


class LocalJobStore(JobStore):
    """Job and image history read from the Store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._store.get_job(job_id)

    async def list_jobs(
        self, limit: int = 20, before: datetime | None = None, owner: str | None = None
    ) -> list[JobRecord]:
        return await self._store.list_jobs(limit=limit, before=before, owner=owner)

    async def image(self, image_id: str) -> ImageRecord | None:
        return await self._store.get_image(image_id)

    async def list_images(
        self, limit: int = 20, before: datetime | None = None, owner: str | None = None
    ) -> list[ImageRecord]:
        return await self._store.list_images(limit=limit, before=before, owner=owner)

    async def counts(self) -> dict[str, int]:
        await self._store.end_dead_runs()  # an `imagegate generate` killed meanwhile
        query = select(_JOBS.c.status, func.count()).group_by(_JOBS.c.status)
        async with self._store.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {str(status): int(count) for status, count in rows}

    async def ping(self) -> None:
        await self._store.verify_database()
        async with self._store.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))


class LocalEventBus(EventBus):
    """Events in the ``job_events`` table, handed to subscribers in this process."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._subscribers: dict[str, set[asyncio.Queue[EventRecord]]] = {}

    async def publish(self, job_id: str, kind: str, data: Mapping[str, Any]) -> EventRecord:
        event = await self._store.add_event(job_id, kind, data)
        self.fan_out(event)
        return event

    def fan_out(self, event: EventRecord) -> None:
        """Hand a stored event to the job's live subscribers."""
        for queue in self._subscribers.get(event.job_id, ()):
            queue.put_nowait(event)

    async def subscribe(self, job_id: str, after_id: int = 0) -> AsyncIterator[EventRecord]:
        live: asyncio.Queue[EventRecord] = asyncio.Queue()
        self._subscribers.setdefault(job_id, set()).add(live)
        last = after_id
        try:
            for event in await self._store.events_after(job_id, after_id):
                last = event.id
                yield event
                if event.kind in TERMINAL_EVENTS:
                    return
            job = await self._store.get_job(job_id)
            grace = FINISHED_GRACE_S if job is None or job.status in TERMINAL_STATUSES else None
            while True:
                try:
                    async with asyncio.timeout(grace):
                        event = await live.get()
                except TimeoutError:
                    return
                if event.id <= last:
                    continue
                last = event.id
                yield event
                if event.kind in TERMINAL_EVENTS:
                    return
        finally:
            subscribers = self._subscribers.get(job_id)
            if subscribers is not None:
                subscribers.discard(live)
                if not subscribers:
                    del self._subscribers[job_id]


class LocalBreakerStore(BreakerStore):
    """Breaker state in memory: one process routes every request."""

    def __init__(self) -> None:
        self._saved: dict[str, BreakerSnapshot] = {}

    async def load(self) -> dict[str, BreakerSnapshot]:
        return dict(self._saved)

    async def save(self, snapshot: BreakerSnapshot) -> None:
        self._saved[snapshot.provider] = snapshot


class _Pending:
    """A queued job kept in memory, so the worker need not read it back."""

    __slots__ = (
        "order", "owner", "priority", "queue", "request", "source", "submitted", "traceparent",
    )  # fmt: skip

    def __init__(
        self,
        request: ImageRequest,
        source: str,
        queue: str,
        priority: int = 0,
        owner: str | None = None,
        turn: int = 0,
        traceparent: str | None = None,
    ) -> None:
        self.traceparent = traceparent
        self.request = request
        self.source = source
        self.queue = queue
        self.priority = priority
        self.owner = owner
        self.order = fair_priority(priority, turn)
        self.submitted = time.monotonic()  # or recovered: a restart starts the wait again


class LocalJobQueue(JobQueue):
    """Queues per provider in memory, each job's row and events in the Store.

    A queue runs at most its provider's ``concurrency`` jobs at once. A job starts as soon as
    a slot is free (no worker tasks poll the queues); ``run`` (submit and wait) runs the job
    in the caller's task when a slot is free and nothing waits before it.
    """

    def __init__(
        self,
        store: Store,
        events: LocalEventBus,
        *,
        max_queue: int,
        concurrency: Mapping[str, int],
        paid: Collection[str] = (),
    ) -> None:
        self.store = store
        self.events = events
        self.stopping = False
        self._max_queue = max_queue
        self._concurrency = dict(concurrency)
        self._paid = frozenset(paid)
        self._waiting: dict[str, OrderedDict[str, _Pending]] = {}
        self._busy: dict[str, int] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[ImageResult]] = {}
        self._active: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[JobOutcome]]] = {}
        self._handler: JobHandler | None = None
        self._durations: dict[str, float] = {}

    # -- JobQueue ----------------------------------------------------------------------------

    async def submit(
        self,
        request: ImageRequest,
        *,
        route: Sequence[str],
        source: str,
        queue: str,
        priority: int = 0,
        owner: str | None = None,
        webhook: Mapping[str, str] | None = None,
        traceparent: str | None = None,
    ) -> Submitted:
        depth = self.depth()
        if depth >= self._max_queue:
            raise QueueFull(depth, self.retry_after())
        waiting = self._waiting.setdefault(queue, OrderedDict())
        position = len(waiting) + 1
        traceparent = traceparent or tracing.traceparent()
        job_id, events = await self.store.open_job(
            request,
            route=route,
            source=source,
            status="queued",
            queue=queue,
            priority=priority,
            events=[("queued", {"position": position})],
            owner=owner,
            webhook=webhook,
            traceparent=traceparent,
        )
        for event in events:
            self.events.fan_out(event)
        turn = sum(1 for p in waiting.values() if p.owner == owner and p.priority == priority)
        waiting[job_id] = _Pending(request, source, queue, priority, owner, turn, traceparent)
        if len(waiting) > 1:  # fair_priority order; a stable sort keeps arrival order in a turn
            ordered = sorted(waiting.items(), key=lambda item: -item[1].order)
            waiting.clear()
            waiting.update(ordered)
        self._dispatch(queue)
        return Submitted(job_id=job_id, position=self.position(job_id) or position)

    async def run(
        self,
        request: ImageRequest,
        *,
        route: Sequence[str],
        source: str,
        queue: str,
        owner: str | None = None,
    ) -> JobOutcome:
        if self._handler is None or self._waiting.get(queue) or not self._free(queue):
            return await super().run(request, route=route, source=source, queue=queue, owner=owner)
        self._busy[queue] = self._busy.get(queue, 0) + 1  # the slot is ours from here
        traceparent = tracing.traceparent()
        try:
            job_id, events = await self.store.open_job(
                request,
                route=route,
                source=source,
                status="running",
                queue=queue,
                events=[("queued", {"position": 1}), ("started", {})],
                owner=owner,
                traceparent=traceparent,
            )
        except BaseException:
            self._release(queue)
            raise
        for event in events:
            self.events.fan_out(event)
        self._active.add(job_id)
        try:
            outcome = await self._execute(job_id, _Pending(request, source, queue, owner=owner))
        finally:
            self._active.discard(job_id)
            self._release(queue)
        return outcome if outcome is not None else await self.wait(job_id)

    async def _end_unrun(
        self, job_id: str, error: ImagegateError, status: Literal["failed", "cancelled"] = "failed"
    ) -> None:
        """End a job no handler is running (no attempts) with its terminal event, fanned out."""
        event = (await self.store.end(job_id, Failed(error, status=status), event=True)).event
        if event is not None:
            self.events.fan_out(event)

    async def cancel(self, job_id: str) -> JobRecord | None:
        for waiting in self._waiting.values():
            if waiting.pop(job_id, None) is not None:
                error = Cancelled("cancelled before it started")
                await self._end_unrun(job_id, error, status="cancelled")
                self._resolve(job_id, JobOutcome(job_id, "cancelled", error=error))
                return await self.store.get_job(job_id)
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait({task})
            # the runner publishes the terminal event right after the task ends
            await asyncio.sleep(0)
        return await self.store.get_job(job_id)

    async def wait(self, job_id: str) -> JobOutcome:
        if not self._tracked(job_id):
            return await self._outcome_from_store(job_id)
        future: asyncio.Future[JobOutcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        try:
            return await future
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._waiters[job_id]

    def position(self, job_id: str) -> int | None:
        for waiting in self._waiting.values():
            if job_id in waiting:
                for index, key in enumerate(waiting):
                    if key == job_id:
                        return index + 1
        return None

    def depth(self) -> int:
        return sum(len(waiting) for waiting in self._waiting.values())

    def retry_after(self) -> float:
        per_job = max(self._durations.values(), default=1.0)
        workers = max(1, sum(self._concurrency.values()))
        return float(min(60, max(1, math.ceil(per_job * self.depth() / workers))))

    # -- workers -----------------------------------------------------------------------------

    def start(self, handler: JobHandler) -> None:
        self._handler = handler
        self.stopping = False
        for name in list(self._waiting):
            self._dispatch(name)

    async def stop(self) -> list[str]:
        """Stop every running job; the ids of the jobs that were still running."""
        interrupted = list(self._running)
        self.stopping = True
        self._handler = None
        tasks: set[asyncio.Future[Any]] = {*self._workers, *self._running.values()}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.cancel()
        return interrupted

    def _free(self, name: str) -> bool:
        return self._busy.get(name, 0) < self._concurrency.get(name, 1)

    def _release(self, name: str) -> None:
        self._busy[name] -= 1
        self._dispatch(name)

    def _dispatch(self, name: str) -> None:
        """Start the queue's first waiting jobs while it has free slots."""
        waiting = self._waiting.get(name)
        while self._handler is not None and waiting and self._free(name):
            job_id, pending = waiting.popitem(last=False)
            self._busy[name] = self._busy.get(name, 0) + 1
            self._active.add(job_id)
            task = asyncio.get_running_loop().create_task(
                self._work(job_id, pending), name=f"imagegate-job-{job_id}"
            )
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def _work(self, job_id: str, pending: _Pending) -> None:
        try:
            started = await self.store.claim_job(job_id)
            if started is None:  # cancelled or taken elsewhere in the meantime
                self._resolve(job_id, await self._outcome_from_store(job_id))
                return
            self.events.fan_out(started)
            await self._execute(job_id, pending)
        finally:
            self._active.discard(job_id)
            self._release(pending.queue)

    async def _execute(self, job_id: str, pending: _Pending) -> JobOutcome | None:
        """Run the handler on a claimed job; record and publish how it ended. None when it
        went back to the queue instead (its images could not be stored; it runs again)."""
        handler = self._handler
        assert handler is not None
        pump = ProgressPump(self.store, job_id, on_event=self.events.fan_out)
        recorder = Recorder(
            self.store,
            pump,
            stopping=lambda: self.stopping,
            on_event=self.events.fan_out,
            paid=self._paid,
        )
        context = JobContext(
            job_id,
            pending.request,
            pending.source,
            pump.report,
            recorder=recorder,
            queued_s=time.monotonic() - pending.submitted,
            owner=pending.owner,
            traceparent=pending.traceparent,
        )
        started = time.monotonic()
        task = asyncio.get_running_loop().create_task(handler(context))
        self._running[job_id] = task
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:  # the runner is stopping: stop the job too
            task.cancel()
            await asyncio.wait({task})
            raise
        finally:
            self._running.pop(job_id, None)
        await pump.flush()
        outcome = JobOutcome.of_task(job_id, task)
        if recorder.requeued:  # the image store failed: it runs again, first in its queue
            waiting = self._waiting.setdefault(pending.queue, OrderedDict())
            waiting[job_id] = pending
            waiting.move_to_end(job_id, last=False)
            return None
        self._durations[pending.queue] = time.monotonic() - started
        if not recorder.ended and not self.stopping:
            await end_unrecorded(self.store, self.events, outcome, self.events.fan_out)
        self._resolve(job_id, outcome)
        return outcome

    def _resolve(self, job_id: str, outcome: JobOutcome) -> None:
        for future in self._waiters.pop(job_id, []):
            if not future.done():
                future.set_result(outcome)

    def _tracked(self, job_id: str) -> bool:
        return job_id in self._active or any(job_id in w for w in self._waiting.values())

    async def _outcome_from_store(self, job_id: str) -> JobOutcome:
        job = await self.store.get_job(job_id)
        if job is None:
            raise LookupError(f"no job {job_id!r}")
        if job.status == "succeeded":
            return JobOutcome(job_id, "succeeded")
        return JobOutcome.unsuccessful(job)

    # -- recovery ----------------------------------------------------------------------------

    async def recover(self) -> None:
        """Queue again what a previous process left queued or running (see the module doc)."""
        query = (
            select(_JOBS.c.id, _JOBS.c.status, _JOBS.c.request, _JOBS.c.source)
            .add_columns(_JOBS.c.queue, _JOBS.c.retries, _JOBS.c.route, _JOBS.c.traceparent)
            .where(_JOBS.c.status.in_(("queued", "running")))
            .where(_JOBS.c.source.in_(SERVER_SOURCES))
            .order_by(_JOBS.c.created_at)
        )
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        for job_id, status, request, source, queue, retries, route, traceparent in rows:
            ended = (
                instead_of_requeue(route, self._paid, stopped_by="restart", retries=retries)
                if status == "running"
                else None
            )
            if ended is not None:
                await self._end_unrun(job_id, ended)
                continue
            try:
                parsed = await self.store.load_request(request)
            except ValueError:
                await self.store.end(
                    job_id, Failed(ImagegateError("the stored request no longer validates"))
                )
                continue
            if status == "running":
                async with self.store.engine.begin() as conn:
                    await conn.execute(
                        update(_JOBS)
                        .where(_JOBS.c.id == job_id)
                        .values(status="queued", started_at=None, retries=retries + 1)
                    )
            waiting = self._waiting.setdefault(queue, OrderedDict())
            waiting[job_id] = _Pending(parsed, source, queue, traceparent=traceparent)
            await self.events.publish(job_id, "queued", {"position": len(waiting)})
            self._dispatch(queue)

    async def requeue(self, job_ids: Sequence[str]) -> None:
        """Put jobs stopped by a shutdown back in the queue for the next start; one whose
        route has a paid provider ends interrupted instead (it may have been billed)."""
        running = (_JOBS.c.id.in_(list(job_ids)), _JOBS.c.status == "running")
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(select(_JOBS.c.id, _JOBS.c.route).where(*running))).all()
        for job_id, route in rows:
            ended = instead_of_requeue(route, self._paid, stopped_by="a shutdown")
            if ended is not None:
                await self._end_unrun(job_id, ended)
        async with self.store.engine.begin() as conn:
            await conn.execute(
                update(_JOBS)
                .where(*running)
                .values(status="queued", started_at=None, finished_at=None, error=None)
            )


class LocalBackplane(Backplane):
    """The default backplane: everything in this process, history in SQLite."""

    jobs: LocalJobQueue
    store: LocalJobStore
    events: LocalEventBus
    breakers: LocalBreakerStore

    def __init__(
        self,
        store: Store,
        *,
        max_queue: int = 100,
        concurrency: Mapping[str, int] | None = None,
        paid: Collection[str] = (),
    ) -> None:
        self._store = store
        self.events = LocalEventBus(store)
        self.store = LocalJobStore(store)
        self.breakers = LocalBreakerStore()
        self.jobs = LocalJobQueue(
            store, self.events, max_queue=max_queue, concurrency=concurrency or {}, paid=paid
        )

    async def start(self, handler: JobHandler) -> None:
        await self._store.open()
        await self.jobs.recover()
        self.jobs.start(handler)

    async def stop(self) -> None:
        interrupted = await self.jobs.stop()
        await self.jobs.requeue(interrupted)
