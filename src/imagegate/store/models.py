"""The tables, declared once for SQLite and PostgreSQL alike.

Only portable types: string ids, ``JSON`` columns, timezone-aware timestamps (stored as UTC),
integers and floats. Seeds reach 2**32 - 1, past PostgreSQL's INTEGER, so they are BIGINT.
Constraint and index names follow one naming convention, so a migration can name what it
drops on every database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
EVENT_KINDS = ("queued", "started", "progress", "succeeded", "failed", "cancelled")


def period_start(period: str, now: datetime) -> datetime:
    """The start of the current budget period (``day`` or ``month``, UTC)."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


def budget_periods(now: datetime) -> tuple[datetime, datetime]:
    """The starts of the current ``day`` and ``month`` periods: a job's cost counts toward a
    key's ``spent`` when the key's ``spent_since`` is one of them."""
    return period_start("day", now), period_start("month", now)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that is stored as UTC and always read back aware.

    SQLite keeps no offset, so values are converted to UTC before they are written (which
    also keeps string comparison in date order) and marked UTC when read. A naive value is
    taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """The declarative base; its metadata is what migrations must reproduce."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    """One generation, from the library, the CLI or a queued server job."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    request: Mapped[dict[str, Any]] = mapped_column(JSON())
    route: Mapped[list[str]] = mapped_column(JSON())
    provider: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(256))
    seed: Mapped[int | None] = mapped_column(BigInteger)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    step: Mapped[int | None] = mapped_column(Integer)
    steps: Mapped[int | None] = mapped_column(Integer)
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON(), default=list)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    queue: Mapped[str] = mapped_column(String(64), default="default")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    elapsed_s: Mapped[float | None] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(16))
    retries: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str | None] = mapped_column(String(64))
    """The managed key's name that submitted the job; None = an admin key or no auth."""
    webhook: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    """Where the job's end is posted: ``{"url": ..., "base": ...}`` (the server's base URL
    the job was submitted to, for its image URLs); None = no webhook."""
    traceparent: Mapped[str | None] = mapped_column(String(55))
    runner: Mapped[str | None] = mapped_column(String(128))
    """``pid@host`` of the process running an in-process job (``cli``, ``library``); a later
    process on that host ends the job as interrupted once that pid is gone."""
    """The W3C trace context of the submitting request, continued by whoever runs the job."""

    __table_args__ = (
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index("ix_jobs_created_at", "created_at"),
        Index("ix_jobs_owner_created_at", "owner", "created_at"),
    )


class Image(Base):
    """One stored PNG; ``path`` is relative to the data dir, with forward slashes."""

    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(512))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    prompt: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_images_created_at", "created_at"),
        Index("ix_images_job_id", "job_id"),
    )


class JobEvent(Base):
    """One event of a job, in order; replayed to a late SSE subscriber."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSON())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)


class Breaker(Base):
    """The circuit-breaker state of one provider, shared by every server and worker."""

    __tablename__ = "breakers"

    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    opened_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failures: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKey(Base):
    """A managed API key (a tenant): only the SHA-256 of the key is stored, never the key."""

    __tablename__ = "api_keys"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    routes: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    rate_per_min: Mapped[int | None] = mapped_column(Integer)
    budget: Mapped[float | None] = mapped_column(Float)
    period: Mapped[str | None] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    spent: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    """What the key's jobs cost since ``spent_since``, the start of its budget period; each
    job adds its cost when it is recorded (store.keys.add_spend)."""
    spent_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """The period ``spent`` counts; another (or none) means it is summed from the jobs again."""
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    """Where the end of this key's jobs is posted when a job names no ``webhook_url``."""


class WebhookOutbox(Base):
    """One job's end, to be posted to its webhook: written in the transaction that ends the
    job, then sent (and retried) by any process until it is delivered or given up."""

    __tablename__ = "webhook_outbox"

    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    status: Mapped[str] = mapped_column(String(16))
    """``pending``, ``delivered`` or ``failed`` (given up after ``retry_for_s``)."""
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON(), default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_at: Mapped[datetime] = mapped_column(UTCDateTime())
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """A process sending it holds it until then; after that (a crash) another may send."""
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_webhook_outbox_status_next_at", "status", "next_at"),)


class ImageBlob(Base):
    """The bytes of one image in the database (``[storage] backend = "postgresql"``), by
    digest: stored once however many image rows name it; ``touched_at`` is the last time a
    job stored (or found) it, so retention leaves alone what a job is about to name."""

    __tablename__ = "image_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    touched_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ImageChunk(Base):
    """One piece of an image blob, in order: written and streamed a piece at a time."""

    __tablename__ = "image_chunks"

    sha256: Mapped[str] = mapped_column(
        String(64), ForeignKey("image_blobs.sha256", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)
