"""The distributed backplane: procrastinate on PostgreSQL, history in the same database.

N stateless ``imagegate serve`` replicas and M ``imagegate worker`` processes share one
PostgreSQL database (see docs/recipes/scaling-out.md):

- **submit** writes our ``jobs`` row, its ``queued`` event and procrastinate's job in ONE
  transaction (the transactional outbox; ``queueing_lock`` = our job id), so a job is never
  queued without its history row, nor the reverse.
- **queues**: a job goes to the queue named after the head of its route when that provider is
  local (a GPU worker runs ``imagegate worker --queue NAME`` and keeps that one model warm),
  and to the ``remote`` queue when it is a remote provider. Concurrency 1 per GPU worker;
  higher priority first.
- **cancel**: a queued job is cancelled in procrastinate and in our row at once; a running one
  gets ``cancel_job_by_id_async(abort=True)``: NOTIFY -> CancelledError in the task -> the
  provider's interrupt, within one step.
- **crash recovery**: every worker heartbeats; every worker also runs the stalled-job sweeper
  (an asyncio loop, not a procrastinate periodic task), which re-queues the jobs of workers
  whose heartbeat is older than ``stalled_s``, once; a job that may already have called a paid
  provider ends ``failed`` as interrupted instead, for the client to submit again.
- **progress**: ``job_events`` rows; a trigger NOTIFYs ``imagegate_events`` on each insert and
  one LISTEN connection per process wakes its subscribers, which read the rows (so a reconnect
  with Last-Event-ID replays what was missed, and a lost notification costs one poll).
- **breakers**: one ``breakers`` row per provider, upserted atomically, with a NOTIFY that
  makes every process apply it to its router.

Finished procrastinate jobs are deleted (``delete_jobs="always"``): history lives in ours.
Nothing here is imported unless ``[scale] backplane`` names a PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import procrastinate
import psycopg
from procrastinate.job_context import AbortReason
from procrastinate.job_context import JobContext as TaskContext
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate import tracing
from imagegate.backplane.base import (
    TERMINAL_STATUSES,
    Backplane,
    JobContext,
    JobHandler,
    JobOutcome,
    JobQueue,
    ProgressPump,
    QueueFull,
    Recorder,
    Submitted,
    end_unrecorded,
    fair_priority,
    instead_of_requeue,
    paid_providers,
)
from imagegate.backplane.local import LocalJobStore
from imagegate.backplane.pgbus import (
    BREAKERS_CHANNEL,
    EVENTS_CHANNEL,
    PostgresBreakerStore,
    PostgresEventBus,
)
from imagegate.config import Settings
from imagegate.errors import Cancelled, ImagegateError
from imagegate.jobend import Failed
from imagegate.request import Attempt, GeneratedImage, ImageRequest, ImageResult
from imagegate.store import Store
from imagegate.store.models import Job
from imagegate.store.records import JobRecord

if TYPE_CHECKING:
    from imagegate.gateway import Gateway

__all__ = [
    "REMOTE_QUEUE",
    "PostgresBackplane",
    "libpq_url",
    "postgres_backplane",
    "shared_store",
    "sqlalchemy_url",
]

log = logging.getLogger("imagegate.backplane")

REMOTE_QUEUE = "remote"
TASK_NAME = "imagegate.run_job"
SCHEMA_LOCK = 0x1A6E_6A7E  # pg_advisory_lock key: one process installs the schema
SWEEP_LOCK = 0x1A6E_5EE9  # one sweeper pass at a time across the fleet
GRACEFUL_S = 5.0  # at most this long a stopping worker waits for its running jobs
PROGRESS_EVERY_S = 0.25  # at most 4 progress rows (and NOTIFYs) a second per job

_TRIGGER_SQL = f"""
CREATE OR REPLACE FUNCTION imagegate_notify_event() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('{EVENTS_CHANNEL}', NEW.job_id);
  RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER imagegate_job_events_notify AFTER INSERT ON job_events
  FOR EACH ROW EXECUTE FUNCTION imagegate_notify_event();
"""


def libpq_url(url: str) -> str:
    """``postgresql://...`` for psycopg and procrastinate (any ``+driver`` dropped)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}"


def sqlalchemy_url(url: str) -> str:
    """``postgresql+psycopg://...`` for the Store."""
    return "postgresql+psycopg://" + libpq_url(url).partition("://")[2]


def _now() -> datetime:
    return datetime.now(UTC)


class PostgresJobQueue(JobQueue):
    """Jobs in procrastinate's queues, their history in ours."""

    def __init__(
        self,
        store: Store,
        events: PostgresEventBus,
        app: procrastinate.App,
        *,
        max_queue: int,
        remote: Collection[str],
        paid: Collection[str],
    ) -> None:
        self.store = store
        self.events = events
        self.app = app
        self.stopping = False
        self.handler: JobHandler | None = None
        self._max_queue = max_queue
        self._remote = frozenset(remote)
        self._paid = frozenset(paid)
        self._depth = 0

    def queue_for(self, provider: str) -> str:
        """The procrastinate queue of a job whose route starts at ``provider``."""
        return REMOTE_QUEUE if provider in self._remote else provider

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
        self._depth = await self._count_queued()
        if self._depth >= self._max_queue:
            raise QueueFull(self._depth, self.retry_after())
        name = self.queue_for(queue)
        position = self._depth + 1
        order = fair_priority(priority, await self._turn(name, priority, owner))
        traceparent = traceparent or tracing.traceparent()
        job_id, _ = await self.store.open_job(
            request,
            route=route,
            source=source,
            status="queued",
            queue=name,
            priority=priority,
            events=[("queued", {"position": position})],
            within=lambda session, job_id: self._defer(session, job_id, name, order),
            owner=owner,
            webhook=webhook,
            traceparent=traceparent,
        )
        self._depth += 1
        return Submitted(job_id=job_id, position=position)

    async def _defer(self, session: AsyncSession, job_id: str, queue: str, priority: int) -> None:
        """Defer the procrastinate job in the session's transaction (the outbox)."""
        raw = await (await session.connection()).get_raw_connection()
        await self.app.configure_task(
            TASK_NAME,
            queue=queue,
            priority=priority,
            queueing_lock=job_id,
            connection=raw.driver_connection,
        ).defer_async(job_id=job_id)

    async def _turn(self, queue: str, priority: int, owner: str | None) -> int:
        """How many of ``owner``'s jobs of this priority wait in ``queue`` (its turn)."""
        async with self.store.engine.connect() as conn:
            count = await conn.scalar(
                select(func.count())
                .select_from(Job)
                .where(
                    Job.status == "queued",
                    Job.queue == queue,
                    Job.priority == priority,
                    Job.owner.is_(None) if owner is None else Job.owner == owner,
                )
            )
        return int(count or 0)

    async def _count_queued(self) -> int:
        async with self.store.engine.connect() as conn:
            count = await conn.scalar(
                select(func.count()).select_from(Job).where(Job.status == "queued")
            )
        return int(count or 0)

    async def _task_id(self, job_id: str) -> tuple[int, str] | None:
        async with self.store.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT id, status::text FROM procrastinate_jobs "
                        "WHERE args->>'job_id' = :j ORDER BY id DESC LIMIT 1"
                    ),
                    {"j": job_id},
                )
            ).first()
        return None if row is None else (int(row[0]), str(row[1]))

    async def cancel(self, job_id: str) -> JobRecord | None:
        found = await self._task_id(job_id)
        manager = self.app.job_manager
        if found is not None and found[1] == "todo":
            if await manager.cancel_job_by_id_async(found[0], delete_job=True):
                self._depth = max(0, self._depth - 1)
                error = Cancelled("cancelled before it started")
                with contextlib.suppress(LookupError):
                    await self.store.end(job_id, Failed(error, status="cancelled"), event=True)
                return await self.store.get_job(job_id)
            found = await self._task_id(job_id)
        if found is not None and found[1] == "doing":
            await manager.cancel_job_by_id_async(found[0], abort=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    async for _ in self.events.subscribe(job_id):
                        pass
        return await self.store.get_job(job_id)

    async def wait(self, job_id: str) -> JobOutcome:
        await self.events.until_ended(job_id)
        return await self.outcome(job_id)

    async def outcome(self, job_id: str) -> JobOutcome:
        """How a finished job ended, from the store (the images read back from their files)."""
        job = await self.store.get_job(job_id)
        if job is None:
            raise LookupError(f"no job {job_id!r}")
        if job.status == "succeeded":
            images = [
                GeneratedImage(
                    png=await self.store.image_bytes(image),
                    width=image.width,
                    height=image.height,
                    seed=image.seed,
                    sha256=image.sha256,
                    id=image.id,
                    path=self.store.image_file(image),
                )
                for image in job.images
            ]
            result = ImageResult(
                images=images,
                provider=job.provider or "",
                model=job.model or "",
                attempts=[Attempt.model_validate(a) for a in job.attempts],
                elapsed_s=job.elapsed_s or 0.0,
                request=await self.store.load_request(job.request),
                job_id=job_id,
            )
            return JobOutcome(job_id, "succeeded", result=result)
        return JobOutcome.unsuccessful(job)

    def position(self, job_id: str) -> int | None:
        return None  # the queue is shared by every replica: no cheap in-memory answer

    def depth(self) -> int:
        return self._depth

    def retry_after(self) -> float:
        return float(min(60, max(1, self._depth)))

    # -- the task ------------------------------------------------------------------------------

    async def run_task(self, context: TaskContext, job_id: str) -> None:
        """Run one job on this worker: claim, handle, record; never raise (no engine retry)."""
        handler = self.handler
        if handler is None:
            raise RuntimeError("this process runs no worker")
        started = await self.store.claim_job(job_id)
        if started is None:
            return  # cancelled, finished or gone meanwhile
        job = await self.store.get_job(job_id)
        assert job is not None
        try:
            request = await self.store.load_request(job.request)
        except ValueError as exc:
            await self.store.end(job_id, Failed(ImagegateError(str(exc))))
            return
        pump = ProgressPump(self.store, job_id, every_s=PROGRESS_EVERY_S)
        recorder = Recorder(self.store, pump, stopping=lambda: self.stopping, paid=self._paid)
        queued_s = max(0.0, (datetime.now(UTC) - job.created_at).total_seconds())
        ctx = JobContext(
            job_id,
            request,
            job.source,
            pump.report,
            recorder=recorder,
            queued_s=queued_s,
            owner=job.owner,
            traceparent=job.traceparent,
        )
        task = asyncio.get_running_loop().create_task(handler(ctx))
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait({task})
            shutdown = context.abort_reason() == AbortReason.SHUTDOWN
            await asyncio.shield(self._after_abort(job_id, recorder, requeue=shutdown))
            raise
        await pump.flush()
        outcome = JobOutcome.of_task(job_id, task)
        if recorder.requeued:  # the image store failed: it runs again, on any worker
            await self._defer_again(job_id)
        elif not recorder.ended:
            with contextlib.suppress(LookupError):
                await end_unrecorded(self.store, self.events, outcome)

    async def _after_abort(self, job_id: str, recorder: Recorder, *, requeue: bool) -> None:
        job = await self.store.get_job(job_id)
        ended = (
            instead_of_requeue(job.route, self._paid, stopped_by="a shutdown")
            if requeue and job is not None and job.status == "running"
            else None
        )
        if ended is not None:
            with contextlib.suppress(LookupError):
                await self.store.end(job_id, Failed(ended), event=True)
            return
        if requeue:  # the worker is shutting down: back to the queue for another worker
            if await self.store.requeue_job(job_id, ran=False) is not None:
                await self._defer_again(job_id)
            return
        if not recorder.ended:
            error = Cancelled("cancelled while running")
            with contextlib.suppress(LookupError):
                await self.store.end(job_id, Failed(error, status="cancelled"), event=True)

    async def _defer_again(self, job_id: str) -> None:
        """Queue the task of a job put back in the queue, for any worker to claim."""
        job = await self.store.get_job(job_id)
        if job is not None and job.status == "queued":
            await self.app.configure_task(
                TASK_NAME,
                queue=job.queue,
                priority=fair_priority(job.priority, 0),
                queueing_lock=job_id,
            ).defer_async(job_id=job_id)

    # -- the sweeper ---------------------------------------------------------------------------

    async def sweep(self, stalled_s: float) -> list[str]:
        """Re-queue (once) or end as interrupted the jobs of workers that stopped heartbeating.

        One pass at a time across the fleet (an advisory lock). A job whose route has a paid
        provider and that was already running ends ``failed`` as interrupted: it may have been
        billed, so the client decides whether to submit it again. The ids handled come back.
        """
        manager = self.app.job_manager
        handled: list[str] = []
        async with self.store.engine.connect() as lock_conn:
            got = await lock_conn.scalar(text(f"SELECT pg_try_advisory_lock({SWEEP_LOCK})"))
            if not got:
                return handled
            try:
                for stalled in await manager.get_stalled_jobs(seconds_since_heartbeat=stalled_s):
                    job_id = str(stalled.task_kwargs.get("job_id", ""))
                    job = await self.store.get_job(job_id)
                    if job is None or job.status in TERMINAL_STATUSES:
                        assert stalled.id is not None
                        await manager.finish_job_by_id_async(
                            stalled.id, procrastinate.jobs.Status.FAILED, delete_job=True
                        )
                        continue
                    ran = job.status == "running"
                    ended = (
                        instead_of_requeue(
                            job.route,
                            self._paid,
                            stopped_by="a stalled worker",
                            retries=job.retries,
                        )
                        if ran
                        else None
                    )
                    if ended is not None:
                        await self.store.end(job_id, Failed(ended), event=True)
                        assert stalled.id is not None
                        await manager.finish_job_by_id_async(
                            stalled.id, procrastinate.jobs.Status.FAILED, delete_job=True
                        )
                    else:
                        if ran:  # with its queued event
                            await self.store.requeue_job(job_id, ran=True)
                        await manager.retry_job(stalled)
                    handled.append(job_id)
            finally:
                await lock_conn.execute(text(f"SELECT pg_advisory_unlock({SWEEP_LOCK})"))
        return handled


class PostgresBackplane(Backplane):
    """Jobs, events and breakers shared through one PostgreSQL database.

    ``worker_queues`` (None: none) makes this process a worker of those queues, with
    ``concurrency`` jobs at once (1 for a GPU); every process listens for events and
    breaker changes; workers also run the stalled-job sweeper every ``sweep_s``.
    """

    jobs: PostgresJobQueue
    store: LocalJobStore
    events: PostgresEventBus
    breakers: PostgresBreakerStore

    def __init__(
        self,
        store: Store,
        url: str,
        *,
        max_queue: int = 100,
        remote: Collection[str] = (),
        paid: Collection[str] = (),
        worker_queues: Sequence[str] | None = None,
        concurrency: int = 1,
        heartbeat_s: float = 2.0,
        stalled_s: float = 10.0,
        sweep_s: float = 2.0,
        worker_name: str | None = None,
    ) -> None:
        self._store = store
        self.url = libpq_url(url)
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=self.url, min_size=1, max_size=4)
        )
        self.events = PostgresEventBus(store)
        self.store = LocalJobStore(store)
        self.breakers = PostgresBreakerStore(store)
        self.jobs = PostgresJobQueue(
            store, self.events, self.app, max_queue=max_queue, remote=remote, paid=paid
        )
        self.worker_queues = list(worker_queues) if worker_queues is not None else None
        self.concurrency = concurrency
        self.heartbeat_s = heartbeat_s
        self.stalled_s = stalled_s
        self.sweep_s = sweep_s
        self.worker_name = worker_name
        self._tasks: list[asyncio.Task[None]] = []
        self._worker: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._opened = False

        async def run_job(context: TaskContext, job_id: str) -> None:
            await self.jobs.run_task(context, job_id)

        self.app.task(name=TASK_NAME, pass_context=True)(run_job)

    async def open(self) -> None:
        """Migrate (under the store's advisory lock), install procrastinate's schema and the
        NOTIFY trigger once (under ours), open procrastinate's pool."""
        if self._opened:
            return
        await self._store.open()
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            await conn.execute(f"SELECT pg_advisory_lock({SCHEMA_LOCK})")
            try:
                found = await (
                    await conn.execute("SELECT to_regclass('procrastinate_jobs')")
                ).fetchone()
                if found is None or found[0] is None:
                    schema = procrastinate.schema.SchemaManager.get_schema()
                    await conn.execute(schema)
                await conn.execute(_TRIGGER_SQL)
            finally:
                await conn.execute(f"SELECT pg_advisory_unlock({SCHEMA_LOCK})")
        await self.app.open_async()
        self._opened = True

    async def start(self, handler: JobHandler) -> None:
        await self.open()
        self.jobs.handler = handler
        self.jobs.stopping = False
        self._tasks.append(asyncio.get_running_loop().create_task(self._listen()))
        if self.worker_queues is not None:
            self._worker = asyncio.get_running_loop().create_task(
                self.app.run_worker_async(
                    queues=self.worker_queues,
                    concurrency=self.concurrency,
                    name=self.worker_name or f"imagegate-{'-'.join(self.worker_queues)}",
                    delete_jobs="always",
                    install_signal_handlers=False,
                    update_heartbeat_interval=self.heartbeat_s,
                    stalled_worker_timeout=self.stalled_s,
                    shutdown_graceful_timeout=self.graceful_s,
                    fetch_job_polling_interval=1.0,
                    abort_job_polling_interval=1.0,
                )
            )
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())
            self._tasks.append(self._sweeper)

    @property
    def graceful_s(self) -> float:
        """How long a stopping worker lets its jobs finish before it puts them back in the queue.

        procrastinate stops the heartbeat first, so the wait must end before the job looks
        stalled (``stalled_s`` after the last beat); else another sweeper would take it.
        """
        return max(0.0, min(GRACEFUL_S, self.stalled_s - self.heartbeat_s - 0.5))

    async def stop(self) -> None:
        self.jobs.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()  # first: this worker's own jobs, still finishing, look stalled
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(BaseException):
                await self._worker
            self._worker = None
        self._sweeper = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        self.jobs.handler = None
        if self._opened:
            await self.app.close_async()
            self._opened = False

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_s)
            try:
                await self.jobs.sweep(self.stalled_s)
            except Exception as exc:  # the database may be restarting: try again next pass
                log.warning("stalled-job sweep failed: %s: %s", type(exc).__name__, exc)

    async def _listen(self) -> None:
        """LISTEN for events and breaker changes, reconnecting with a bounded backoff."""
        wait = 0.1
        while True:
            try:
                async with await _connect_or_close(self.url) as conn:
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    await conn.execute(f"LISTEN {BREAKERS_CHANNEL}")
                    wait = 0.1
                    async for note in conn.notifies():
                        if note.channel == EVENTS_CHANNEL:
                            self.events.wake(note.payload)
                        else:
                            self.breakers.notified(note.payload)
            except (psycopg.Error, OSError) as exc:
                log.warning("LISTEN connection lost: %s; reconnecting", type(exc).__name__)
                await asyncio.sleep(wait)
                wait = min(5.0, wait * 2)


async def _connect_or_close(url: str) -> psycopg.AsyncConnection[Any]:
    """Connect; if cancelled while connecting (a stop right after a start), the connection
    still being made is closed rather than left for the garbage collector."""
    connecting = asyncio.ensure_future(psycopg.AsyncConnection.connect(url, autocommit=True))
    try:
        return await asyncio.shield(connecting)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            conn = await connecting
            await conn.close()
        raise


def shared_store(settings: Settings) -> Store:
    """The Store on the ``[scale] backplane`` database; images where ``[storage]`` says (the
    data dir, then shared by every replica and worker, or the database, or S3)."""
    assert settings.scale.backplane
    return Store(
        settings.data_dir, url=sqlalchemy_url(settings.scale.backplane), storage=settings.storage
    )


def postgres_backplane(
    settings: Settings, gateway: Gateway, worker_queues: Sequence[str] | None = None
) -> PostgresBackplane:
    """The backplane of a server replica (no ``worker_queues``) or of a worker."""
    assert gateway.store is not None
    url = settings.scale.backplane
    assert url is not None
    providers = gateway.providers
    remote = [name for name, p in providers.items() if p.endpoint() is not None]
    scale = settings.scale
    concurrency = 1
    if worker_queues and REMOTE_QUEUE in worker_queues:
        concurrency = scale.remote_concurrency
    return PostgresBackplane(
        gateway.store,
        url,
        max_queue=settings.server.max_queue,
        remote=remote,
        paid=paid_providers(providers),
        worker_queues=worker_queues,
        concurrency=concurrency,
        heartbeat_s=scale.heartbeat_s,
        stalled_s=scale.stalled_s,
        sweep_s=scale.sweep_s,
    )
