"""Retention: delete the oldest images (rows and files) past an age or over a size.

``prune`` plans first, read-only: the oldest images older than ``older_than``, then more of
the oldest while the stored images add up to more than ``max_bytes``. Images are
content-addressed and may be shared by several image rows, so bytes are freed only when every
row that names them goes. Unless it is a dry run, the rows are deleted in short transactions,
then the freed bytes, by the image store (``[storage] backend``; each backend's ``reclaim``).

It never deletes what a running job is writing: a job's image rows appear only when it ends
(in the transaction that marks it succeeded), and bytes stored or found by a job within
``grace_s`` are left alone. On the file backend a file is first renamed aside; after
``settle_s`` (longer than a job takes from finding a file already stored to committing its
row) the references are counted again, and a file a new row names is put back, so a job
storing the same bytes as an old image keeps its file (the database backend gets the same from
the row lock its touch and its delete share). On
PostgreSQL an advisory lock lets one sweeper run at a time across every replica; another
sweep that finds it taken returns at once (``skipped``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select

from imagegate.config import GatewaySettings
from imagegate.store.blobs import FileImages
from imagegate.store.db import Store
from imagegate.store.models import Image, Job

log = logging.getLogger("imagegate.retention")

RETENTION_LOCK = 0x1A6E_0002  # PostgreSQL advisory lock: one sweeper at a time
BATCH = 500
DEFAULT_GRACE_S = 600.0
DEFAULT_SETTLE_S = 10.0


@dataclass
class PruneReport:
    """What a prune deleted (or, in a dry run, would delete)."""

    images: int = 0
    files: int = 0
    bytes: int = 0
    dry_run: bool = False
    skipped: bool = False
    """Another sweeper held the lock: nothing was looked at."""
    oldest_kept: datetime | None = None
    image_ids: list[str] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, object]:
        return {
            "images": self.images,
            "files": self.files,
            "bytes": self.bytes,
            "dry_run": self.dry_run,
            "skipped": self.skipped,
        }


def store_bytes(data_dir: Path) -> int:
    """The size of every image file in the data dir (the file backend)."""
    return FileImages(data_dir)._total_bytes()


async def prune(
    store: Store,
    *,
    older_than: datetime | None = None,
    max_bytes: int | None = None,
    dry_run: bool = False,
    grace_s: float = DEFAULT_GRACE_S,
    settle_s: float = DEFAULT_SETTLE_S,
) -> PruneReport:
    """Delete the images older than ``older_than``, then the oldest while over ``max_bytes``."""
    report = PruneReport(dry_run=dry_run)
    if older_than is None and max_bytes is None:
        return report
    async with store.engine.connect() as lock:
        if store.engine.dialect.name == "postgresql":
            got = await lock.exec_driver_sql(f"SELECT pg_try_advisory_lock({RETENTION_LOCK})")
            if not got.scalar():
                report.skipped = True
                return report
        try:
            await _prune(store, report, older_than, max_bytes, grace_s, settle_s)
        finally:
            if store.engine.dialect.name == "postgresql":
                await lock.exec_driver_sql(f"SELECT pg_advisory_unlock({RETENTION_LOCK})")
                await lock.commit()
    return report


async def _prune(
    store: Store,
    report: PruneReport,
    older_than: datetime | None,
    max_bytes: int | None,
    grace_s: float,
    settle_s: float,
) -> None:
    total = await store.images.total_bytes() if max_bytes is not None else 0
    doomed: dict[str, int] = {}  # sha256 -> rows planned for deletion
    refs: dict[str, int] = {}  # sha256 -> rows naming it
    freed: dict[str, str] = {}  # sha256 -> relative path, once every row naming it goes
    ids: list[str] = []
    after: tuple[datetime, str] | None = None
    async with store.engine.connect() as conn:
        while True:
            query = select(Image.id, Image.sha256, Image.path, Image.created_at)
            if after is not None:
                query = query.where(
                    (Image.created_at > after[0])
                    | ((Image.created_at == after[0]) & (Image.id > after[1]))
                )
            rows = (
                await conn.execute(query.order_by(Image.created_at, Image.id).limit(BATCH))
            ).all()
            if not rows:
                break
            new = [row.sha256 for row in rows if row.sha256 not in refs]
            if new:
                counted = await conn.execute(
                    select(Image.sha256, func.count())
                    .where(Image.sha256.in_(set(new)))
                    .group_by(Image.sha256)
                )
                refs.update({sha: int(n) for sha, n in counted.all()})
            stop = False
            for row in rows:
                old = older_than is not None and row.created_at < older_than
                over = max_bytes is not None and total - report.bytes > max_bytes
                if not (old or over):
                    report.oldest_kept = row.created_at
                    stop = True
                    break
                ids.append(row.id)
                doomed[row.sha256] = doomed.get(row.sha256, 0) + 1
                if doomed[row.sha256] == refs.get(row.sha256, 0):
                    freed[row.sha256] = row.path
                    report.bytes += await store.images.size(row.sha256)
            if stop:
                break
            after = (rows[-1].created_at, rows[-1].id)
    report.images = len(ids)
    report.image_ids = ids
    report.files = len(freed)
    if report.dry_run:
        return
    for chunk in _chunks(ids, BATCH):
        async with store.engine.begin() as conn:
            await conn.execute(delete(Image).where(Image.id.in_(chunk)))

    async def named(shas: Sequence[str]) -> set[str]:
        return await _named(store, shas)

    await store.images.reclaim(
        list(freed), untouched_since=time.time() - grace_s, settle_s=settle_s, named=named
    )


async def _named(store: Store, shas: Sequence[str]) -> set[str]:
    """Which of ``shas`` some image row names, or a job not yet ended takes as an input (an
    "Edit this" of an old image keeps its bytes until the edit has run)."""
    found: set[str] = set()
    async with store.engine.connect() as conn:
        for chunk in _chunks(shas, BATCH):
            named = await conn.execute(
                select(Image.sha256).where(Image.sha256.in_(chunk)).distinct()
            )
            found.update(named.scalars())
        requests = await conn.execute(
            select(Job.request).where(Job.status.in_(("queued", "running")))
        )
        found.update(
            set(shas) & {sha for request in requests.scalars() for sha in _inputs(request)}
        )
    return found


def _inputs(request: Mapping[str, Any]) -> list[str]:
    """The sha256 of a stored request's input images and mask."""
    images = [*(request.get("images") or []), request.get("mask")]
    return [
        str(image["sha256"]) for image in images if isinstance(image, dict) and image.get("sha256")
    ]


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def limits(settings: GatewaySettings, now: datetime | None = None) -> RetentionLimits:
    """The cutoff time and byte limit that ``keep_days`` and ``max_store_gb`` ask for now."""
    now = now or datetime.now(UTC)
    older_than = None if settings.keep_days is None else now - timedelta(days=settings.keep_days)
    max_bytes = None if settings.max_store_gb is None else int(settings.max_store_gb * 1e9)
    return RetentionLimits(older_than, max_bytes)


@dataclass(frozen=True)
class RetentionLimits:
    older_than: datetime | None
    max_bytes: int | None


async def sweep_forever(store: Store, settings: GatewaySettings) -> None:
    """Prune by ``keep_days`` / ``max_store_gb`` every ``retention_sweep_s``, until cancelled."""
    if settings.keep_days is None and settings.max_store_gb is None:
        return
    grace_s = max(DEFAULT_GRACE_S, settings.deadline_s)
    while True:
        wanted = limits(settings)
        try:
            report = await prune(
                store, older_than=wanted.older_than, max_bytes=wanted.max_bytes, grace_s=grace_s
            )
        except Exception as exc:  # the database may be away: the next sweep tries again
            log.warning("retention sweep failed: %s", type(exc).__name__)
        else:
            if report.images:
                log.info("retention: deleted %d images, %d files", report.images, report.files)
        await asyncio.sleep(settings.retention_sweep_s)
