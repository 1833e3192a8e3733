"""The Backplane interface: where jobs wait, run, report progress and keep breaker state.

The server talks only to these four pieces, so a distributed adapter (PostgreSQL with
procrastinate, LISTEN/NOTIFY for fan-out) can replace the local one without touching it::

    Backplane
     ├── jobs: JobQueue        submit (persisted before it returns) / cancel / wait / position
     ├── store: JobStore       read side: jobs, images, counts by status
     ├── events: EventBus      publish / subscribe(job_id, after_id): replay, then follow live
     └── breakers: BreakerStore load / save each provider's breaker state

``start(handler)`` starts the workers; each runs ``handler(context)`` for one job at a time.
The handler is the same in every adapter: it runs the job through the gateway, which records
the result or the failure through ``context.recorder`` (a :class:`JobRecorder`), and returns
the result or raises. The backplane owns everything around it: claiming, the ``started`` and
terminal events, cancellation, recovery. Its recorder writes the job's end and its terminal
event together; a handler that records elsewhere still gets the terminal event afterwards.

``jobs.run(...)`` is submit-and-wait in one call, for callers that hold a connection open
until the job ends (the OpenAI and A1111 routes); an adapter may start such a job at once
when one of its queue's workers is free, but the job is on disk before it runs either way.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, overload

from imagegate.errors import (
    Cancelled,
    ImagegateError,
    Interrupted,
    QueueFull,
    StorageError,
    error_from_dict,
)
from imagegate.jobend import Ended, Failed, JobRecorder, Succeeded
from imagegate.providers.base import Progress, Provider
from imagegate.request import Attempt, ImageRequest, ImageResult
from imagegate.store.records import (
    EventRecord,
    ImageRecord,
    JobRecord,
    ended_event_data,
    succeeded_event_data,
)

if TYPE_CHECKING:
    from imagegate.store import Store

__all__ = [
    "CALLER_WAITS",
    "MAX_RETRIES",
    "TERMINAL_EVENTS",
    "TERMINAL_STATUSES",
    "Backplane",
    "BreakerSnapshot",
    "BreakerStore",
    "EventBus",
    "Interrupted",
    "JobContext",
    "JobHandler",
    "JobOutcome",
    "JobQueue",
    "JobRecorder",
    "JobStore",
    "ProgressPump",
    "QueueFull",
    "Recorder",
    "Submitted",
    "end_unrecorded",
    "fair_priority",
    "instead_of_requeue",
    "paid_providers",
    "paid_route",
]

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
CALLER_WAITS = frozenset({"openai", "a1111"})
"""The sources whose caller waits on the open request (the synchronous routes)."""
TERMINAL_EVENTS = TERMINAL_STATUSES


def paid_providers(providers: Mapping[str, Provider]) -> list[str]:
    """The providers that may bill a request (``paid = true``): the one list both backplanes
    keep, so a job on a route with one of them never runs twice."""
    return [name for name, provider in providers.items() if provider.paid]


TURN_SPAN = 1_000_000
"""Turns a priority level holds: a key's N-th waiting job of one priority is turn N - 1."""


def fair_priority(priority: int, turn: int) -> int:
    """The order a queue starts jobs in: higher ``priority`` first; within a priority, a lower
    ``turn`` (how many jobs of the same key already wait there) first, then arrival. So jobs of
    different keys start round-robin: a key that queued 200 jobs delays another key's first
    job by at most about one job per active key."""
    return priority * TURN_SPAN - min(turn, TURN_SPAN - 1)


def paid_route(route: Sequence[str], paid: Collection[str]) -> bool:
    """Whether a job on ``route`` may have called a paid provider: it must not run twice."""
    return any(name in paid for name in route)


MAX_RETRIES = 1
"""How many times a job whose process crashed under it runs again."""


def instead_of_requeue(
    route: Sequence[str],
    paid: Collection[str],
    *,
    stopped_by: Literal["restart", "a shutdown", "a stalled worker", "a storage failure"],
    retries: int | None = None,
) -> Interrupted | None:
    """The one requeue rule, for a job that was running when its process stopped, or whose
    images the image store failed to keep.

    It goes back to the queue (None) unless its route has a paid provider, which may have
    billed it, so it must not run twice; or, after a crash or a failed store (``retries``
    given; a clean shutdown does not count), it ran again ``MAX_RETRIES`` times already. Then
    it ends with the Interrupted returned, which says why (a failed store ends with its own
    StorageError instead).
    """
    if paid_route(route, paid):
        why = "its route has a paid provider, which may have billed it"
    elif retries is not None and retries >= MAX_RETRIES:
        why = "it had been retried once already"
    else:
        return None
    return Interrupted(
        f"interrupted by {stopped_by}: the job was running and {why}",
        fix="submit it again",
    )


@dataclass(frozen=True)
class Submitted:
    """A job that is on disk and in its queue; ``position`` 1 is the next to start."""

    job_id: str
    position: int


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended, as :meth:`JobQueue.wait` hands it back.

    ``result`` (with the stored PNG bytes) when it succeeded, ``error`` when it failed or was
    cancelled.
    """

    job_id: str
    status: Literal["succeeded", "failed", "cancelled"]
    result: ImageResult | None = None
    error: ImagegateError | None = None

    @classmethod
    def of_task(cls, job_id: str, task: asyncio.Task[ImageResult]) -> JobOutcome:
        """How a handler's finished task ended the job; an exception that is not an
        ImagegateError (a bug) becomes one that names it."""
        if task.cancelled():
            return cls(job_id, "cancelled", error=Cancelled("cancelled while running"))
        error = task.exception()
        if error is None:
            return cls(job_id, "succeeded", result=task.result())
        if isinstance(error, ImagegateError):
            return cls(job_id, "failed", error=error)
        wrapped = ImagegateError(f"the job failed unexpectedly: {type(error).__name__}: {error}")
        return cls(job_id, "failed", error=wrapped)

    @classmethod
    def unsuccessful(cls, job: JobRecord) -> JobOutcome:
        """How a job that did not succeed ended: its error rebuilt from the row, same class,
        same fields, with its attempts, whichever process ran it."""
        status: Literal["failed", "cancelled"] = (
            "cancelled" if job.status == "cancelled" else "failed"
        )
        attempts = [Attempt.model_validate(a) for a in job.attempts]
        error = (
            error_from_dict(job.error, attempts)
            if job.error
            else ImagegateError(f"the job is {job.status}")
        )
        if status == "cancelled" and not isinstance(error, Cancelled):
            error = Cancelled(error.message or "cancelled")
        return cls(job.id, status, error=error)


@dataclass
class JobContext:
    """What a handler gets for one job: its id, its request, a progress callback, and the
    recorder to record its end through (None: record in the store, as the library does)."""

    job_id: str
    request: ImageRequest
    source: str
    progress: Callable[[Progress], None]
    meta: dict[str, Any] = field(default_factory=dict)
    recorder: JobRecorder | None = None
    queued_s: float = 0.0
    """Seconds from the job's submission until it was claimed (wall clock, any process)."""
    traceparent: str | None = None
    """The trace of the request that submitted the job, which its run continues."""
    owner: str | None = None
    """The managed key that submitted the job; None for admin keys and with auth off."""

    @property
    def caller_waits(self) -> bool:
        """Whether a caller holds its connection open until the job ends: its deadline
        then runs from the request's arrival, time in the queue included."""
        return self.source in CALLER_WAITS


JobHandler = Callable[[JobContext], Coroutine[Any, Any, ImageResult]]
"""Runs one job to its end through the gateway; returns the stored result or raises."""


@dataclass(frozen=True)
class BreakerSnapshot:
    """One provider's breaker as shared state: wall-clock times, so any process can read it."""

    provider: str
    state: Literal["closed", "open"]
    opened_until: datetime | None
    failures: int
    last_error: str | None = None


class JobQueue(ABC):
    """Where jobs wait for a worker."""

    @abstractmethod
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
        """Persist a queued job and enqueue it; raises QueueFull when the queue is full.

        A higher ``priority`` starts before lower ones waiting in the same queue; ``owner``
        (a managed key's name) is recorded on the job, ``webhook`` (``url``, ``base``) gets
        its end posted, and ``traceparent`` is the trace its run continues."""

    @abstractmethod
    async def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job at once, or stop a running one; the job as it then stands."""

    @abstractmethod
    async def wait(self, job_id: str) -> JobOutcome:
        """Wait until the job ends, and say how."""

    async def run(
        self,
        request: ImageRequest,
        *,
        route: Sequence[str],
        source: str,
        queue: str,
        owner: str | None = None,
    ) -> JobOutcome:
        """Submit a job and wait until it ends; raises QueueFull as ``submit`` does.

        An adapter may start the job at once when its queue has a free worker (it is still
        persisted first, with its ``queued`` and ``started`` events).
        """
        submitted = await self.submit(request, route=route, source=source, queue=queue, owner=owner)
        return await self.wait(submitted.job_id)

    @abstractmethod
    def position(self, job_id: str) -> int | None:
        """The job's place in its queue (1 = next), or None when it is not waiting."""

    @abstractmethod
    def depth(self) -> int:
        """How many jobs wait to start, in every queue."""

    @abstractmethod
    def retry_after(self) -> float:
        """A fair guess, in seconds, of when a full queue has room again."""


class JobStore(ABC):
    """The read side of job and image history."""

    @abstractmethod
    async def get(self, job_id: str) -> JobRecord | None:
        """One job with its images, or None."""

    @abstractmethod
    async def list_jobs(
        self, limit: int = 20, before: datetime | None = None, owner: str | None = None
    ) -> list[JobRecord]:
        """The newest jobs first; only ``owner``'s (a managed key's name) when given."""

    @abstractmethod
    async def image(self, image_id: str) -> ImageRecord | None:
        """One stored image, or None."""

    @abstractmethod
    async def list_images(
        self, limit: int = 20, before: datetime | None = None, owner: str | None = None
    ) -> list[ImageRecord]:
        """The newest images first; only those of ``owner``'s jobs when given."""

    @abstractmethod
    async def counts(self) -> Mapping[str, int]:
        """How many jobs are in each status."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise unless the store answers a query."""


class EventBus(ABC):
    """Job events: stored in order, fanned out to live subscribers."""

    @abstractmethod
    async def publish(self, job_id: str, kind: str, data: Mapping[str, Any]) -> EventRecord:
        """Store one event and hand it to every subscriber of the job."""

    @abstractmethod
    def subscribe(self, job_id: str, after_id: int = 0) -> AsyncIterator[EventRecord]:
        """Events of the job with an id above ``after_id``: stored ones first, then live ones,
        ending after a terminal event (or at once for a finished job without one)."""


class BreakerStore(ABC):
    """Breaker state shared by every process that routes requests."""

    @abstractmethod
    async def load(self) -> dict[str, BreakerSnapshot]:
        """Every saved breaker, by provider name."""

    @abstractmethod
    async def save(self, snapshot: BreakerSnapshot) -> None:
        """Record one provider's breaker."""

    def watch(self, callback: Callable[[BreakerSnapshot], None]) -> None:
        """Call ``callback`` with each change another process saves (none when local)."""
        del callback  # one process: nothing else saves


class Backplane(ABC):
    """The four pieces together, with the workers' lifecycle."""

    jobs: JobQueue
    store: JobStore
    events: EventBus
    breakers: BreakerStore

    @abstractmethod
    async def start(self, handler: JobHandler) -> None:
        """Recover jobs a previous process left behind, then start the workers."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop the workers; jobs still running go back to the queue for the next start."""


async def end_unrecorded(
    store: Store,
    events: EventBus,
    outcome: JobOutcome,
    on_event: Callable[[EventRecord], None] | None = None,
) -> None:
    """The end of a job whose handler did not record it through its recorder: a job still
    open ends (failed or cancelled) with the outcome's error and its terminal event, so no
    row stays ``running`` after its run; otherwise only the terminal event is published.
    ``on_event`` hands a written end's event to an in-process fan-out."""
    job_id, error = outcome.job_id, outcome.error
    if outcome.status != "succeeded":
        job = await store.get_job(job_id)
        if job is not None and job.status not in TERMINAL_STATUSES:
            failed = Failed(
                error or ImagegateError(f"the job ended {outcome.status}"),
                error.attempts if error is not None else (),
                status="cancelled" if outcome.status == "cancelled" else "failed",
            )
            event = (await store.end(job_id, failed, event=True)).event
            if event is not None and on_event is not None:
                on_event(event)
            return
    if outcome.result is not None:
        data = succeeded_event_data(outcome.result)
    else:
        data = ended_event_data(error, len(error.attempts) if error is not None else 0)
    await events.publish(job_id, outcome.status, data)


class ProgressPump:
    """Writes a job's progress rows in order, keeping only the newest step while one is written.

    ``every_s`` spaces the rows out (a shared bus such as NOTIFY wants few), and ``on_event``
    hands each written row to an in-process fan-out. ``flush`` waits for the last row, so no
    progress lands after the job's end.
    """

    def __init__(
        self,
        store: Store,
        job_id: str,
        *,
        every_s: float = 0.0,
        on_event: Callable[[EventRecord], None] | None = None,
    ) -> None:
        self._store = store
        self._job_id = job_id
        self._every_s = every_s
        self._on_event = on_event
        self._next: Progress | None = None
        self._task: asyncio.Task[None] | None = None
        self._hurry = asyncio.Event()

    def report(self, step: Progress) -> None:
        """Note the newest step; it is written as soon as the previous write is done."""
        self._next = step
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._next is not None:
            step, self._next = self._next, None
            if step.steps < 1 or not 0 <= step.step <= step.steps:
                continue
            event = await self._store.record_progress(self._job_id, step.step, step.steps)
            if self._on_event is not None:
                self._on_event(event)
            if self._every_s and not self._hurry.is_set():  # newer steps wait, newest wins
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._every_s):
                        await self._hurry.wait()

    async def flush(self) -> None:
        """Wait until every reported step is written."""
        self._hurry.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task


class Recorder:
    """A job's end (images included) and its terminal event, written in one transaction.

    Written after the job's last progress row. ``on_event`` hands the event to an in-process
    fan-out (the local bus; PostgreSQL's NOTIFY needs none). A job cancelled because its
    backplane is ``stopping`` is not ended: it stays ``running`` for the backplane to put
    back in the queue. A job whose images the image store failed to keep (StorageError) goes
    back to the queue to run again once where the requeue rule allows (``paid`` names the
    paid providers), and ends failed with that error where it does not.
    """

    def __init__(
        self,
        store: Store,
        pump: ProgressPump,
        *,
        stopping: Callable[[], bool],
        on_event: Callable[[EventRecord], None] | None = None,
        paid: Collection[str] = (),
    ) -> None:
        self._store = store
        self._pump = pump
        self._stopping = stopping
        self._on_event = on_event
        self._paid = paid
        self.ended = False
        self.requeued = False
        """The image store failed and the job went back to the queue to run again (the
        requeue rule allowed it): the backplane queues it again instead of ending it."""

    @overload
    async def end(self, job_id: str, how: Succeeded) -> Ended[ImageResult]: ...

    @overload
    async def end(self, job_id: str, how: Failed) -> Ended[None]: ...

    async def end(self, job_id: str, how: Succeeded | Failed) -> Ended[ImageResult] | Ended[None]:
        await self._pump.flush()  # no progress row may land after the end
        if isinstance(how, Failed) and how.status == "cancelled" and self._stopping():
            return Ended(None)  # stopped by a shutdown: back to the queue, no end recorded
        storage_failed = isinstance(how, Failed) and isinstance(how.error, StorageError)
        if storage_failed and await self._requeue(job_id):
            return Ended(None)  # back to the queue: it runs again
        ended = await self._store.end(job_id, how, event=True)
        self._ended(ended.event)
        return ended

    async def _requeue(self, job_id: str) -> bool:
        """Put the job back in the queue after a failed image store, where the one requeue
        rule allows (an unpaid route, not yet retried); whether it did."""
        job = await self._store.get_job(job_id)
        if job is None or job.status != "running":
            return False
        rule = instead_of_requeue(
            job.route, self._paid, stopped_by="a storage failure", retries=job.retries
        )
        if rule is not None:
            return False
        event = await self._store.requeue_job(job_id, ran=True)
        if event is None:
            return False
        self.requeued = True
        if self._on_event is not None:
            self._on_event(event)
        return True

    def _ended(self, event: EventRecord | None) -> None:
        self.ended = True
        if event is not None and self._on_event is not None:
            self._on_event(event)
