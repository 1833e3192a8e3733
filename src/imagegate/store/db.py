"""The Store: job and image history in one SQL database, PNG files beside it.

The same code runs on ``sqlite+aiosqlite`` (the default, ``<data_dir>/imagegate.db``) and on
``postgresql+psycopg``. Opening the store creates the data dir and migrates the database to the
newest schema. Every method is one short transaction; what comes back is a frozen record, never
a live row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast
from uuid import uuid4

from sqlalchemy import URL, CursorResult, event, select, update
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from imagegate.request import Attempt, GeneratedImage, ImageRequest, ImageResult
from imagegate.store.files import IMAGES_DIR, write_png
from imagegate.store.migrate import upgrade
from imagegate.store.models import EVENT_KINDS, Image, Job, JobEvent
from imagegate.store.pngmeta import infotext, png_with_metadata, provenance
from imagegate.store.records import EventRecord, ImageRecord, JobRecord

DB_FILENAME = "imagegate.db"
SOURCES = ("library", "cli", "openai", "a1111", "jobs")
SQLITE_BUSY_TIMEOUT_MS = 5000
_NOT_OPEN = "the store is not open; use `async with Store(data_dir)` or await store.open()"


def default_url(data_dir: Path) -> str:
    """The SQLite database in the data dir."""
    url = URL.create("sqlite+aiosqlite", database=str(data_dir / DB_FILENAME))
    return url.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: a commit survives the process being killed (kill -9) without an fsync per
    # commit, which would cost milliseconds on every job; only a power loss can drop the last
    # commits before a checkpoint.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _check(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(allowed)}; got {value!r}")


def _error_dict(error: BaseException) -> dict[str, Any]:
    stage = getattr(error, "stage", None)
    data: dict[str, Any] = {
        "type": type(error).__name__,
        "message": str(error),
        "stage": None if stage is None else str(stage),
    }
    for extra in ("provider", "field", "limit", "retry_after"):
        value = getattr(error, extra, None)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            data[extra] = value
    return data


def _image_record(row: Image) -> ImageRecord:
    return ImageRecord.model_validate(row)


class Store:
    """Job and image history: ``async with Store(data_dir) as store: ...``."""

    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.url = url if url is not None else default_url(self.data_dir)
        self._engine: AsyncEngine | None = None
        self._sessionmaker: async_sessionmaker[AsyncSession] | None = None
        self._last_now: datetime | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the data dir and its images folder, connect, and migrate to the newest schema."""
        if self._engine is not None:
            return
        await asyncio.to_thread((self.data_dir / IMAGES_DIR).mkdir, parents=True, exist_ok=True)
        engine = create_async_engine(self.url)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(upgrade)
        except BaseException:
            await engine.dispose()
            raise
        self._engine = engine
        self._sessionmaker = async_sessionmaker(engine, expire_on_commit=False)

    async def close(self) -> None:
        """Close every connection; the store may be opened again."""
        engine, self._engine, self._sessionmaker = self._engine, None, None
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
        """The absolute path of a stored image's file."""
        return self.data_dir / image.path

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
        _check("status", status, ("queued", "running"))
        _check("source", source, SOURCES)
        now = self._now()
        job = Job(
            id=uuid4().hex,
            status=status,
            request=request.model_dump(mode="json"),
            route=list(route),
            provider=None,
            model=None,
            seed=request.seed,
            progress=0.0,
            steps=request.steps,
            attempts=[],
            error=None,
            cost=0.0,
            priority=priority,
            queue=queue,
            created_at=now,
            started_at=now if status == "running" else None,
            source=source,
            retries=0,
        )
        async with self._session() as session, session.begin():
            session.add(job)
        return job.id

    async def finish_job(
        self,
        job_id: str,
        result: ImageResult,
        *,
        cost: float = 0.0,
        effective: Mapping[str, Any] | None = None,
    ) -> ImageResult:
        """Store the images (files, then rows) and mark the job succeeded.

        ``effective`` carries the steps, sampler and guidance the provider really used, for
        the infotext; where it has no value the request's is written, and where neither has
        one the key is left out. Returns a copy of ``result`` whose images carry ``id``,
        ``path`` (absolute), ``sha256`` and ``png`` of the stored files, with ``job_id`` set.
        """
        now = self._now()
        meta = provenance(result, created_at=now)
        stored = await asyncio.to_thread(self._write_images, result, meta, effective or {})
        images: list[GeneratedImage] = []
        rows: list[Image] = []
        for original, (png, sha256, relative) in zip(result.images, stored, strict=True):
            image_id = uuid4().hex
            images.append(
                original.model_copy(
                    update={
                        "png": png,
                        "sha256": sha256,
                        "id": image_id,
                        "path": str(self.data_dir / relative),
                    }
                )
            )
            rows.append(
                Image(
                    id=image_id,
                    job_id=job_id,
                    sha256=sha256,
                    path=relative,
                    width=original.width,
                    height=original.height,
                    seed=original.seed,
                    provider=result.provider,
                    model=result.model,
                    prompt=result.request.prompt,
                    created_at=self._now(),
                )
            )
        async with self._session() as session, session.begin():
            job = await self._job_row(session, job_id)
            job.status = "succeeded"
            job.provider = result.provider
            job.model = result.model
            job.seed = result.images[0].seed if result.images else job.seed
            job.attempts = [attempt.model_dump(mode="json") for attempt in result.attempts]
            job.elapsed_s = result.elapsed_s
            job.finished_at = now
            job.started_at = job.started_at or now
            job.progress = 1.0
            job.cost = cost
            job.error = None
            session.add_all(rows)
        return result.model_copy(update={"images": images, "job_id": job_id})

    def _write_images(
        self, result: ImageResult, meta: dict[str, Any], effective: Mapping[str, Any]
    ) -> list[tuple[bytes, str, str]]:
        request = result.request

        def pick(key: str, fallback: Any) -> Any:
            value = effective.get(key)
            return fallback if value is None else value

        stored = []
        for image in result.images:
            parameters = infotext(
                request,
                seed=image.seed,
                width=image.width,
                height=image.height,
                model=result.model,
                steps=pick("steps", request.steps),
                sampler=pick("sampler", request.sampler),
                guidance=pick("guidance", request.guidance),
            )
            png = png_with_metadata(image.png, parameters, meta)
            sha256, relative = write_png(self.data_dir, png)
            stored.append((png, sha256, relative))
        return stored

    async def fail_job(
        self,
        job_id: str,
        error: BaseException,
        attempts: Sequence[Attempt],
        elapsed_s: float,
        *,
        status: str = "failed",
    ) -> None:
        """Mark the job failed (or cancelled) with the reason: error type, message and stage."""
        _check("status", status, ("failed", "cancelled"))
        async with self._session() as session, session.begin():
            job = await self._job_row(session, job_id)
            job.status = status
            job.error = _error_dict(error)
            job.attempts = [attempt.model_dump(mode="json") for attempt in attempts]
            job.elapsed_s = elapsed_s
            job.finished_at = self._now()

    async def set_progress(self, job_id: str, step: int, steps: int) -> None:
        """Record that the job has done ``step`` of ``steps``."""
        if steps < 1 or not 0 <= step <= steps:
            raise ValueError(f"step: must be between 0 and steps ({steps}); got {step}")
        async with self._session() as session, session.begin():
            done = await session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(step=step, steps=steps, progress=step / steps)
            )
            if cast("CursorResult[Any]", done).rowcount == 0:
                raise LookupError(f"no job {job_id!r} in the store")

    async def get_job(self, job_id: str) -> JobRecord | None:
        """The job with its images, or None."""
        async with self._session() as session:
            job = await session.get(Job, job_id)
            if job is None:
                return None
            images = await self._images_of(session, [job_id])
        return JobRecord.model_validate(job).model_copy(update={"images": images.get(job_id, [])})

    async def list_jobs(self, limit: int = 20, before: datetime | None = None) -> list[JobRecord]:
        """The newest jobs first, at most ``limit``, created strictly before ``before``."""
        query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(_limit(limit))
        if before is not None:
            query = query.where(Job.created_at < before)
        async with self._session() as session:
            jobs = list((await session.scalars(query)).all())
            images = await self._images_of(session, [job.id for job in jobs])
        return [
            JobRecord.model_validate(job).model_copy(update={"images": images.get(job.id, [])})
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

    # -- images ------------------------------------------------------------------------------

    async def get_image(self, image_id: str) -> ImageRecord | None:
        """One stored image, or None."""
        async with self._session() as session:
            row = await session.get(Image, image_id)
            return None if row is None else _image_record(row)

    async def list_images(
        self, limit: int = 20, before: datetime | None = None
    ) -> list[ImageRecord]:
        """The newest images first, at most ``limit``, created strictly before ``before``."""
        query = (
            select(Image).order_by(Image.created_at.desc(), Image.id.desc()).limit(_limit(limit))
        )
        if before is not None:
            query = query.where(Image.created_at < before)
        async with self._session() as session:
            return [_image_record(row) for row in (await session.scalars(query)).all()]

    # -- events ------------------------------------------------------------------------------

    async def add_event(self, job_id: str, kind: str, data: Mapping[str, Any]) -> EventRecord:
        """Append one event to the job's log and return it with its id."""
        _check("kind", kind, EVENT_KINDS)
        row = JobEvent(job_id=job_id, kind=kind, data=dict(data), created_at=self._now())
        async with self._session() as session, session.begin():
            session.add(row)
        return EventRecord.model_validate(row)

    async def events_after(self, job_id: str, last_id: int = 0) -> list[EventRecord]:
        """The job's events with an id above ``last_id``, oldest first."""
        query = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > last_id)
            .order_by(JobEvent.id)
        )
        async with self._session() as session:
            return [EventRecord.model_validate(row) for row in (await session.scalars(query))]


def _limit(limit: int) -> int:
    if limit < 1:
        raise ValueError(f"limit: must be at least 1; got {limit}")
    return limit
