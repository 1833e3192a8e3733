"""The Store: job and image history in one SQL database, PNG files beside it.

The same code runs on ``sqlite+aiosqlite`` (the default, ``<data_dir>/imagegate.db``) and on
``postgresql+psycopg``. Opening the store creates the data dir and migrates the database to the
newest schema. Every method is one short transaction; what comes back is a frozen record, never
a live row.

On SQLite the job path's writes (create, claim, progress, finish, fail, events) skip the async
engine: each is one step on :class:`~imagegate.store.jobsql.SQLiteWriter`'s thread, one
transaction, with the job's event in the same transaction where the caller asks for one.
Reads and every other database go through SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast, overload
from uuid import uuid4

from sqlalchemy import CursorResult, bindparam, event, select, text, update
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from imagegate.config import StorageSettings
from imagegate.errors import ImagegateError, Interrupted
from imagegate.jobend import Ended, Failed, Succeeded
from imagegate.request import ImageRequest, ImageResult, Reported
from imagegate.store import jobsql
from imagegate.store.blobs import FileImages, ImageStore, image_store
from imagegate.store.files import IMAGES_DIR
from imagegate.store.identity import PG_EVERY_S, DatabaseIdentity
from imagegate.store.migrate import upgrade
from imagegate.store.models import (
    EVENT_KINDS,
    ApiKey,
    Image,
    Job,
    JobEvent,
    UTCDateTime,
    WebhookOutbox,
    budget_periods,
)
from imagegate.store.pngmeta import infotext, png_with_metadata, provenance
from imagegate.store.records import (
    DeliveryRecord,
    EventRecord,
    ImageRecord,
    JobRecord,
    ended_event_data,
)
from imagegate.store.sqlite import (
    SQLITE_BUSY_TIMEOUT_MS,
    default_url,
    process_alive,
    sqlite_file,
    sqlite_pragmas,
)

SOURCES = ("library", "cli", "openai", "a1111", "jobs")
IN_PROCESS_SOURCES = ("library", "cli")
"""Jobs run in the caller's own process: no backplane puts them back in a queue."""
RUNNER = f"{os.getpid()}@{socket.gethostname()}"
"""This process, as a job's ``runner`` mark."""
MIGRATION_LOCK = 0x1A6E_0001  # PostgreSQL advisory lock: one process migrates a blank database
_NOT_OPEN = "the store is not open; use `async with Store(data_dir)` or await store.open()"


def _check(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(allowed)}; got {value!r}")


def _error_dict(error: BaseException) -> dict[str, Any]:
    """What the row keeps of ``error``: enough for ``error_from_dict`` to rebuild it."""
    if isinstance(error, ImagegateError):
        return error.to_dict()
    return {"type": type(error).__name__, "message": str(error), "stage": None}


_QUEUE_WEBHOOK = text(
    "INSERT INTO webhook_outbox (job_id, status, attempts, created_at, next_at) "
    "SELECT id, 'pending', '[]', :at, :at FROM jobs WHERE id = :job_id AND webhook IS NOT NULL "
    "ON CONFLICT (job_id) DO NOTHING"
).bindparams(bindparam("at", type_=UTCDateTime()))
"""The job's end into the webhook outbox when it has a webhook (``jobsql.queue_webhook`` is
the same on the SQLite writer's connection)."""


def _image_record(row: Image) -> ImageRecord:
    return ImageRecord.model_validate(row)


class Store:
    """Job and image history: ``async with Store(data_dir) as store: ...``."""

    def __init__(
        self, data_dir: Path, url: str | None = None, storage: StorageSettings | None = None
    ) -> None:
        self.data_dir = Path(data_dir)
        self.url = url if url is not None else default_url(self.data_dir)
        self.images: ImageStore = image_store(
            storage or StorageSettings(), self.data_dir, lambda: self.engine
        )
        self._engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._writer: jobsql.SQLiteWriter | None = None
        self._last_now: datetime | None = None
        self.identity = DatabaseIdentity()
        """The database opened, to notice it deleted or replaced (``verify_database``)."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the data dir and its images folder, connect, and migrate to the newest schema."""
        if self._engine is not None:
            return
        await asyncio.to_thread((self.data_dir / IMAGES_DIR).mkdir, parents=True, exist_ok=True)
        engine = create_async_engine(self.url)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        try:
            async with engine.begin() as connection:
                if engine.dialect.name == "postgresql":  # held until this transaction ends
                    await connection.exec_driver_sql(
                        f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"
                    )
                    await self.identity.remember_database(connection)
                await connection.run_sync(upgrade)
        except BaseException:
            await engine.dispose()
            raise
        path = sqlite_file(self.url)
        if path is not None:
            writer = jobsql.SQLiteWriter(path, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS)
            try:
                await writer.open()
            except BaseException:
                await engine.dispose()
                raise
            self._writer = writer
            self.identity.remember_file(path)
        self._engine = engine
        self._sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
        await self.end_dead_runs()

    async def end_dead_runs(self) -> list[str]:
        """End as interrupted the in-process jobs left queued or running by a process of this
        host that is gone (killed, crashed); their ids."""
        host = socket.gethostname()
        query = (
            select(Job.id, Job.runner)
            .where(Job.status.in_(("queued", "running")))
            .where(Job.source.in_(IN_PROCESS_SOURCES))
            .where(Job.runner.like(f"%@{host}"))
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        ended = []
        for job_id, runner in rows:
            pid = (runner or "").split("@", 1)[0]
            if not pid.isdigit() or process_alive(int(pid)):
                continue
            gone = Interrupted(f"the process that ran it (pid {pid} on {host}) is gone")
            await self.end(job_id, Failed(gone), event=True)
            ended.append(job_id)
        return ended

    async def verify_database(self, *, every_s: float = 0.0) -> None:
        """Raise StorageError when the database opened is gone or replaced: the SQLite file
        deleted or another inode, or a PostgreSQL database dropped and created again (its oid
        read again at most every ``every_s``). What is written now would be lost."""
        await self.identity.verify(self.engine, every_s=every_s)

    async def close(self) -> None:
        """Close every connection; the store may be opened again."""
        engine, self._engine, self._sessionmaker = self._engine, None, None
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.close()
        await self.images.close()
        if engine is not None:
            await engine.dispose()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def engine(self) -> AsyncEngine:
        """The open engine, for code that adds its own queries (a job queue, a backplane)."""
        if self._engine is None:
            raise RuntimeError(_NOT_OPEN)
        return self._engine

    def _session(self) -> AsyncSession:
        if self._sessionmaker is None:
            raise RuntimeError(_NOT_OPEN)
        return self._sessionmaker()

    def _now(self) -> datetime:
        """UTC now, strictly increasing within this store, so ``before`` paging never ties."""
        now = datetime.now(UTC)
        if self._last_now is not None and now <= self._last_now:
            now = self._last_now + timedelta(microseconds=1)
        self._last_now = now
        return now

    def image_path(self, image: ImageRecord) -> Path:
        """The absolute path of a stored image's file (``[storage] backend = "file"``)."""
        return self.data_dir / image.path

    async def image_bytes(self, image: ImageRecord) -> bytes:
        """A stored image's bytes, from whichever backend keeps them."""
        return await self.images.read(image.sha256)

    def image_file(self, image: ImageRecord) -> str | None:
        """The absolute path of a stored image's file, or None where the bytes are not on
        this disk (the database or S3 backend)."""
        return self._local(image.sha256)

    def _local(self, sha256: str) -> str | None:
        path = self.images.local_path(sha256)
        return None if path is None else str(path)

    async def load_request(self, stored: Mapping[str, Any]) -> ImageRequest:
        """A job's stored request (its input images named by sha256 only) with the images'
        bytes read back from their content-addressed files; ValueError when an input is gone
        or no longer validates."""
        data = dict(stored)

        async def read(image: Mapping[str, Any]) -> dict[str, Any]:
            sha256 = str(image.get("sha256"))
            try:
                body = await self.images.read(sha256)
            except FileNotFoundError:
                missing = f"the input image {sha256[:12]} of the job is gone from the store"
                raise ValueError(missing) from None
            if hashlib.sha256(body).hexdigest() != sha256:
                raise ValueError(f"the input image {sha256[:12]} no longer matches its digest")
            return {**image, "data": body}

        if data.get("images"):
            data["images"] = [await read(image) for image in data["images"]]
        if data.get("mask"):
            data["mask"] = await read(data["mask"])
        return ImageRequest.model_validate(data)

    # -- jobs --------------------------------------------------------------------------------

    async def create_job(
        self,
        request: ImageRequest,
        *,
        route: Sequence[str],
        source: str,
        status: str = "running",
        queue: str = "default",
        priority: int = 0,
    ) -> str:
        """Record a new job (queued, or running from now) and return its id."""
        job_id, _ = await self.open_job(
            request, route=route, source=source, status=status, queue=queue, priority=priority
        )
        return job_id

    async def open_job(
        self,
        request: ImageRequest,
        *,
        route: Sequence[str],
        source: str,
        status: str = "running",
        queue: str = "default",
        priority: int = 0,
        events: Sequence[tuple[str, Mapping[str, Any]]] = (),
        within: Callable[[AsyncSession, str], Awaitable[None]] | None = None,
        owner: str | None = None,
        webhook: Mapping[str, str] | None = None,
        traceparent: str | None = None,
    ) -> tuple[str, list[EventRecord]]:
        """Record a new job with its first ``events`` (kind, data) in one transaction.

        ``webhook`` (``url`` and ``base``) makes the job's end go to the webhook outbox;
        ``traceparent`` is the trace the job continues.

        ``within(session, job_id)`` runs inside that transaction before it commits (a
        backplane enqueues the job there); it takes the SQLAlchemy path on every database.
        Returns the job's id and the stored events, in order, for the caller to fan out.
        """
        await self.verify_database(every_s=PG_EVERY_S)
        _check("status", status, ("queued", "running"))
        _check("source", source, SOURCES)
        for kind, _ in events:
            _check("kind", kind, EVENT_KINDS)
        inputs = [*request.images, *([request.mask] if request.mask is not None else [])]
        if inputs:  # the job keeps their sha256 (InputImage.data is left out of dumps)
            for image in inputs:
                await self.images.put(image.data)
        now = self._now()
        values: dict[str, Any] = {
            "id": uuid4().hex,
            "status": status,
            "request": request.model_dump(mode="json"),
            "route": list(route),
            "provider": None,
            "model": None,
            "seed": request.seed,
            "progress": 0.0,
            "step": None,
            "steps": request.steps,
            "attempts": [],
            "error": None,
            "cost": 0.0,
            "priority": priority,
            "queue": queue,
            "created_at": now,
            "started_at": now if status == "running" else None,
            "finished_at": None,
            "elapsed_s": None,
            "source": source,
            "retries": 0,
            "owner": owner,
            "webhook": dict(webhook) if webhook is not None else None,
            "traceparent": traceparent,
            "runner": RUNNER if source in IN_PROCESS_SOURCES else None,
        }
        job_id: str = values["id"]
        stamped = [(kind, dict(data), self._now()) for kind, data in events]
        if self._writer is not None and within is None:

            def step(conn: sqlite3.Connection) -> list[int]:
                with jobsql.transaction(conn):
                    jobsql.insert_job(conn, values)
                    return [jobsql.insert_event(conn, job_id, *event) for event in stamped]

            ids = await self._writer.run(step)
        else:
            async with self._session() as session, session.begin():
                session.add(Job(**values))
                await session.flush()
                ids = await _add_events(session, job_id, stamped)
                if within is not None:
                    await within(session, job_id)
        return job_id, _event_records(job_id, ids, stamped)

    async def requeue_job(self, job_id: str, *, ran: bool) -> EventRecord | None:
        """Put a running job back in the queue, with its ``queued`` event, in one transaction:
        ``started_at`` cleared, and ``retries`` counted up when it ``ran`` (a crash or a
        failed end, not a clean shutdown). None (nothing written) when it was not running."""
        stamped: list[tuple[str, dict[str, Any], datetime]] = [
            ("queued", {"position": None}, self._now())
        ]
        values: dict[str, Any] = {"status": "queued", "started_at": None}
        if ran:
            values["retries"] = Job.retries + 1
        async with self._session() as session, session.begin():
            done = await session.execute(
                update(Job).where(Job.id == job_id, Job.status == "running").values(**values)
            )
            if cast("CursorResult[Any]", done).rowcount != 1:
                return None
            ids = await _add_events(session, job_id, stamped)
        return _event_records(job_id, ids, stamped)[0]

    async def claim_job(self, job_id: str) -> EventRecord | None:
        """Mark a queued job running and append its ``started`` event, in one transaction.

        None (and nothing written) when the job is no longer queued: cancelled, or taken.
        """
        now = self._now()
        stamped: list[tuple[str, dict[str, Any], datetime]] = [("started", {}, now)]
        values: dict[str, Any] = {"status": "running", "started_at": now}
        if self._writer is not None:

            def step(conn: sqlite3.Connection) -> list[int]:
                with jobsql.transaction(conn):
                    if jobsql.update_job(conn, job_id, values, status="queued") != 1:
                        return []
                    return [jobsql.insert_event(conn, job_id, *stamped[0])]

            ids = await self._writer.run(step)
        else:
            async with self._session() as session, session.begin():
                done = await session.execute(
                    update(Job).where(Job.id == job_id, Job.status == "queued").values(**values)
                )
                claimed = cast("CursorResult[Any]", done).rowcount == 1
                ids = await _add_events(session, job_id, stamped) if claimed else []
        records = _event_records(job_id, ids, stamped)
        return records[0] if records else None

    @overload
    async def end(
        self, job_id: str, how: Succeeded, *, event: bool = False
    ) -> Ended[ImageResult]: ...

    @overload
    async def end(self, job_id: str, how: Failed, *, event: bool = False) -> Ended[None]: ...

    async def end(
        self, job_id: str, how: Succeeded | Failed, *, event: bool = False
    ) -> Ended[ImageResult] | Ended[None]:
        """End the job, the one way every path does: :class:`Succeeded` stores the images
        (files, then rows) and marks it succeeded; :class:`Failed` marks it failed or
        cancelled with the reason. With ``event``, the terminal event is written in the same
        transaction. Either way its webhook (if any) is queued in that transaction.

        A success's result is a copy whose images carry ``id``, ``path`` (absolute),
        ``sha256`` and ``png`` of the stored files, with ``job_id`` set. Raises LookupError
        for an unknown job, StorageError when the image store fails (nothing is recorded).
        """
        if isinstance(how, Succeeded):
            return await self._succeed(job_id, how, event)
        return Ended(None, await self._fail(job_id, how, event))

    async def _succeed(self, job_id: str, how: Succeeded, event: bool) -> Ended[ImageResult]:
        result, cost, effective = how.result, how.cost, how.effective
        now = self._now()
        meta = provenance(result, created_at=now)
        image_ids = [uuid4().hex for _ in result.images]
        created = [self._now() for _ in result.images]
        event_at = self._now()
        values: dict[str, Any] = {
            "status": "succeeded",
            "provider": result.provider,
            "model": result.model,
            "attempts": [attempt.model_dump(mode="json") for attempt in result.attempts],
            "elapsed_s": result.elapsed_s,
            "finished_at": now,
            "progress": 1.0,
            "cost": cost,
            "error": None,
        }
        if result.images:
            values["seed"] = result.images[0].seed
        done: dict[str, Any] = {
            "provider": result.provider,
            "images": image_ids,
            "attempts": len(result.attempts),
        }

        def rows_for(stored: list[tuple[bytes, str, str]]) -> list[dict[str, Any]]:
            return [
                {
                    "id": image_id,
                    "job_id": job_id,
                    "sha256": sha256,
                    "path": relative,
                    "width": original.width,
                    "height": original.height,
                    "seed": original.seed,
                    "provider": result.provider,
                    "model": result.model,
                    "prompt": result.request.prompt,
                    "created_at": when,
                }
                for image_id, original, (_, sha256, relative), when in zip(
                    image_ids, result.images, stored, created, strict=True
                )
            ]

        event_id: int | None = None
        files = self.images if isinstance(self.images, FileImages) else None
        early: list[tuple[bytes, str, str]] | None = None
        if files is None:  # the bytes go to another store first: a failure there ends here
            early = await self._put_images(result, meta, effective or {})
        if self._writer is not None:

            def step(conn: sqlite3.Connection) -> tuple[list[tuple[bytes, str, str]], int | None]:
                stored = early
                if stored is None:
                    stored = self._write_images(result, meta, effective or {})
                with jobsql.transaction(conn):
                    webhook = jobsql.end_job(conn, job_id, values)
                    if webhook is None:
                        raise LookupError(f"no job {job_id!r} in the store")
                    jobsql.insert_images(conn, rows_for(stored))
                    if webhook:
                        jobsql.queue_webhook(conn, job_id, now)
                    if cost:
                        jobsql.add_spend(conn, job_id, cost, budget_periods(now))
                    written = (
                        jobsql.insert_event(conn, job_id, "succeeded", done, event_at)
                        if event
                        else None
                    )
                return stored, written

            stored, event_id = await self._writer.run(step)
        else:
            if early is None:
                stored = await asyncio.to_thread(self._write_images, result, meta, effective or {})
            else:
                stored = early
            async with self._session() as session, session.begin():
                job = await self._job_row(session, job_id)
                for key, value in values.items():
                    setattr(job, key, value)
                job.started_at = job.started_at or now
                session.add_all(Image(**row) for row in rows_for(stored))
                if cost and job.owner is not None:
                    await session.execute(
                        update(ApiKey)
                        .where(
                            ApiKey.name == job.owner, ApiKey.spent_since.in_(budget_periods(now))
                        )
                        .values(spent=ApiKey.spent + cost)
                    )
                await session.flush()
                await session.execute(_QUEUE_WEBHOOK, {"at": now, "job_id": job_id})
                if event:
                    await session.flush()
                    (event_id,) = await _add_events(
                        session, job_id, [("succeeded", done, event_at)]
                    )
        images = [
            original.model_copy(
                update={
                    "png": png,
                    "sha256": sha256,
                    "id": image_id,
                    "path": self._local(sha256),
                }
            )
            for image_id, original, (png, sha256, _) in zip(
                image_ids, result.images, stored, strict=True
            )
        ]
        record = (
            None
            if event_id is None
            else _event_records(job_id, [event_id], [("succeeded", done, event_at)])[0]
        )
        return Ended(result.model_copy(update={"images": images, "job_id": job_id}), record)

    def _write_images(
        self, result: ImageResult, meta: dict[str, Any], effective: Mapping[str, Any]
    ) -> list[tuple[bytes, str, str]]:
        """The PNGs with their metadata, written as files on this thread (the file backend)."""
        assert isinstance(self.images, FileImages)
        return [
            (png, *self.images.put_blocking(png)) for png in self._render(result, meta, effective)
        ]

    async def _put_images(
        self, result: ImageResult, meta: dict[str, Any], effective: Mapping[str, Any]
    ) -> list[tuple[bytes, str, str]]:
        """The PNGs with their metadata, put in the image store one by one."""
        pngs = await asyncio.to_thread(self._render, result, meta, effective)
        return [(png, *(await self.images.put(png))) for png in pngs]

    def _render(
        self, result: ImageResult, meta: dict[str, Any], effective: Mapping[str, Any]
    ) -> list[bytes]:
        request = result.request

        def pick(key: str, fallback: Any) -> Any:
            value = effective.get(key)
            return fallback if value is None else value

        stored = []
        for image in result.images:
            reported = image.reported or Reported()
            parameters = reported.infotext or infotext(
                request,
                seed=image.seed,
                width=image.width,
                height=image.height,
                model=reported.model or result.model,
                steps=_first(reported.steps, pick("steps", request.steps)),
                sampler=reported.sampler or pick("sampler", request.sampler),
                scheduler=reported.scheduler or pick("scheduler", request.scheduler),
                guidance=_first(reported.guidance, pick("guidance", request.guidance)),
                model_hash=reported.model_hash,
            )
            stored.append(png_with_metadata(image.png, parameters, meta))
        return stored

    async def _fail(self, job_id: str, how: Failed, event: bool) -> EventRecord | None:
        error, attempts, elapsed_s, status = how.error, how.attempts, how.elapsed_s, how.status
        _check("status", status, ("failed", "cancelled"))
        values: dict[str, Any] = {
            "status": status,
            "error": _error_dict(error),
            "attempts": [attempt.model_dump(mode="json") for attempt in attempts],
            "elapsed_s": elapsed_s,
            "finished_at": self._now(),
        }
        stamped = [(status, ended_event_data(error, len(attempts)), self._now())] if event else []
        if self._writer is not None:

            def step(conn: sqlite3.Connection) -> list[int]:
                with jobsql.transaction(conn):
                    if jobsql.update_job(conn, job_id, values) != 1:
                        raise LookupError(f"no job {job_id!r} in the store")
                    jobsql.queue_webhook(conn, job_id, values["finished_at"])
                    return [jobsql.insert_event(conn, job_id, *e) for e in stamped]

            ids = await self._writer.run(step)
        else:
            async with self._session() as session, session.begin():
                job = await self._job_row(session, job_id)
                for key, value in values.items():
                    setattr(job, key, value)
                await session.flush()
                await session.execute(
                    _QUEUE_WEBHOOK, {"at": values["finished_at"], "job_id": job_id}
                )
                ids = await _add_events(session, job_id, stamped)
        records = _event_records(job_id, ids, stamped)
        return records[0] if records else None

    async def record_progress(self, job_id: str, step: int, steps: int) -> EventRecord:
        """Record that the job has done ``step`` of ``steps``, and its ``progress`` event, in
        one transaction."""
        if steps < 1 or not 0 <= step <= steps:
            raise ValueError(f"step: must be between 0 and steps ({steps}); got {step}")
        values = {"step": step, "steps": steps, "progress": step / steps}
        data = {"step": step, "steps": steps, "progress": round(step / steps, 4)}
        stamped = [("progress", data, self._now())]
        if self._writer is not None:

            def write(conn: sqlite3.Connection) -> list[int]:
                with jobsql.transaction(conn):
                    if jobsql.update_job(conn, job_id, values) != 1:
                        raise LookupError(f"no job {job_id!r} in the store")
                    return [jobsql.insert_event(conn, job_id, *stamped[0])]

            ids = await self._writer.run(write)
        else:
            async with self._session() as session, session.begin():
                await session.execute(update(Job).where(Job.id == job_id).values(**values))
                ids = await _add_events(session, job_id, stamped)
        return _event_records(job_id, ids, stamped)[0]

    async def get_job(self, job_id: str) -> JobRecord | None:
        """The job with its images, or None."""
        async with self._session() as session:
            job = await session.get(Job, job_id)
            if job is None:
                return None
            images = await self._images_of(session, [job_id])
            deliveries = await self._deliveries_of(session, [job] if job.webhook else [])
        return JobRecord.model_validate(job).model_copy(
            update={"images": images.get(job_id, []), "delivery": deliveries.get(job_id)}
        )

    async def list_jobs(
        self, limit: int = 20, before: datetime | None = None, owner: str | None = None
    ) -> list[JobRecord]:
        """The newest jobs first, at most ``limit``, created strictly before ``before``;
        only ``owner``'s when given (a managed key's name)."""
        query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(_limit(limit))
        if before is not None:
            query = query.where(Job.created_at < before)
        if owner is not None:
            query = query.where(Job.owner == owner)
        async with self._session() as session:
            jobs = list((await session.scalars(query)).all())
            images = await self._images_of(session, [job.id for job in jobs])
            deliveries = await self._deliveries_of(session, [job for job in jobs if job.webhook])
        return [
            JobRecord.model_validate(job).model_copy(
                update={"images": images.get(job.id, []), "delivery": deliveries.get(job.id)}
            )
            for job in jobs
        ]

    @staticmethod
    async def _job_row(session: AsyncSession, job_id: str) -> Job:
        job = await session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise LookupError(f"no job {job_id!r} in the store")
        return job

    @staticmethod
    async def _images_of(
        session: AsyncSession, job_ids: Sequence[str]
    ) -> dict[str, list[ImageRecord]]:
        if not job_ids:
            return {}
        query = select(Image).where(Image.job_id.in_(job_ids)).order_by(Image.created_at, Image.id)
        grouped: dict[str, list[ImageRecord]] = {}
        for row in (await session.scalars(query)).all():
            grouped.setdefault(row.job_id, []).append(_image_record(row))
        return grouped

    @staticmethod
    async def _deliveries_of(
        session: AsyncSession, jobs: Sequence[Job]
    ) -> dict[str, DeliveryRecord]:
        """The webhook deliveries of ``jobs`` (those with a webhook), by job id."""
        if not jobs:
            return {}
        query = select(WebhookOutbox).where(WebhookOutbox.job_id.in_([job.id for job in jobs]))
        rows = (await session.scalars(query)).all()
        return {row.job_id: DeliveryRecord.model_validate(row) for row in rows}

    # -- images ------------------------------------------------------------------------------

    async def get_image(self, image_id: str) -> ImageRecord | None:
        """One stored image, or None."""
        async with self._session() as session:
            row = await session.get(Image, image_id)
            return None if row is None else _image_record(row)

    async def list_images(
        self, limit: int = 20, before: datetime | None = None, owner: str | None = None
    ) -> list[ImageRecord]:
        """The newest images first, at most ``limit``, created strictly before ``before``;
        only those of ``owner``'s jobs when given."""
        query = (
            select(Image).order_by(Image.created_at.desc(), Image.id.desc()).limit(_limit(limit))
        )
        if before is not None:
            query = query.where(Image.created_at < before)
        if owner is not None:
            query = query.join(Job, Job.id == Image.job_id).where(Job.owner == owner)
        async with self._session() as session:
            return [_image_record(row) for row in (await session.scalars(query)).all()]

    # -- events ------------------------------------------------------------------------------

    async def add_event(self, job_id: str, kind: str, data: Mapping[str, Any]) -> EventRecord:
        """Append one event to the job's log and return it with its id."""
        _check("kind", kind, EVENT_KINDS)
        stamped = [(kind, dict(data), self._now())]
        if self._writer is not None:

            def step(conn: sqlite3.Connection) -> list[int]:
                with jobsql.transaction(conn):
                    return [jobsql.insert_event(conn, job_id, *stamped[0])]

            ids = await self._writer.run(step)
        else:
            async with self._session() as session, session.begin():
                ids = await _add_events(session, job_id, stamped)
        return _event_records(job_id, ids, stamped)[0]

    async def events_after(self, job_id: str, last_id: int = 0) -> list[EventRecord]:
        """The job's events with an id above ``last_id``, oldest first."""
        query = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > last_id)
            .order_by(JobEvent.id)
        )
        async with self._session() as session:
            return [EventRecord.model_validate(row) for row in (await session.scalars(query))]


async def _add_events(
    session: AsyncSession,
    job_id: str,
    events: Sequence[tuple[str, dict[str, Any], datetime]],
) -> list[int]:
    """Add events in the session's transaction; their ids."""
    rows = [JobEvent(job_id=job_id, kind=k, data=d, created_at=at) for k, d, at in events]
    session.add_all(rows)
    if rows:
        await session.flush()
    return [row.id for row in rows]


def _event_records(
    job_id: str, ids: Sequence[int], events: Sequence[tuple[str, dict[str, Any], datetime]]
) -> list[EventRecord]:
    return [
        EventRecord(id=event_id, job_id=job_id, kind=kind, data=data, created_at=at)
        for event_id, (kind, data, at) in zip(ids, events, strict=False)
    ]


def _limit(limit: int) -> int:
    if limit < 1:
        raise ValueError(f"limit: must be at least 1; got {limit}")
    return limit


def _first(value: Any, fallback: Any) -> Any:
    return fallback if value is None else value
