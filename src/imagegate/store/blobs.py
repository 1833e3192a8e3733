"""Where image bytes live: one small interface, three backends (``[storage] backend``).

Every backend is content-addressed: an image is put under its sha256 and its key is
``images/<sha[:2]>/<sha>.png`` (the ``path`` of its row), so the same bytes are stored once
however many rows name them. :class:`FileImages` is the data dir (the default);
:class:`DatabaseImages` keeps the bytes in the store's own database, in chunks;
``imagegate.store.s3.S3Images`` keeps them in an S3-compatible bucket.

A put that fails raises :class:`~imagegate.errors.StorageError` naming the backend and the
store's own error class and reason, so a job never counts an image it could not keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

from sqlalchemy import CursorResult, delete, exists, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from imagegate.config import StorageSettings
from imagegate.errors import StorageError
from imagegate.store.files import IMAGES_DIR, relative_path, write_png
from imagegate.store.models import Image, ImageBlob, ImageChunk

Named = Callable[[Sequence[str]], Awaitable[set[str]]]
"""Which of these digests some image row names (retention passes the store's query)."""


@runtime_checkable
class ImageStore(Protocol):
    """Image bytes by sha256: put, read (whole or in chunks), exists, delete, iterate."""

    backend: str

    async def put(self, data: bytes) -> tuple[str, str]:
        """Keep ``data`` under its sha256 (once); return ``(sha256, key)``."""
        ...

    def chunks(self, sha256: str) -> AsyncIterator[bytes]:
        """The stored bytes a piece at a time; FileNotFoundError when there are none."""
        ...

    async def read(self, sha256: str) -> bytes:
        """The stored bytes; FileNotFoundError when there are none."""
        ...

    async def exists(self, sha256: str) -> bool:
        """Whether bytes with this digest are stored."""
        ...

    async def size(self, sha256: str) -> int:
        """How many bytes are stored under this digest (0 when none)."""
        ...

    async def delete(self, sha256: str) -> None:
        """Forget the bytes with this digest (nothing when there are none)."""
        ...

    def iterate(self) -> AsyncIterator[str]:
        """Every stored digest, in no promised order."""
        ...

    async def total_bytes(self) -> int:
        """The size of everything stored."""
        ...

    def local_path(self, sha256: str) -> Path | None:
        """The file holding these bytes when the backend is the local disk, else None."""
        ...

    async def reclaim(
        self, shas: Sequence[str], *, untouched_since: float, settle_s: float, named: Named
    ) -> int:
        """Delete those of ``shas`` no row names and no job stored since ``untouched_since``
        (epoch seconds), without racing a job that stores the same bytes; how many went."""
        ...

    async def close(self) -> None:
        """Release connections (nothing for most backends)."""
        ...


async def read_all(chunks: AsyncIterator[bytes]) -> bytes:
    """Join a chunk stream."""
    return b"".join([chunk async for chunk in chunks])


class FileImages:
    """``images/<sha[:2]>/<sha>.png`` under the data dir: today's layout, unchanged."""

    backend = "file"

    def __init__(self, data_dir: Path, chunk_size: int = 256 * 1024) -> None:
        self.data_dir = Path(data_dir)
        self.chunk_size = chunk_size

    def put_blocking(self, data: bytes) -> tuple[str, str]:
        """:meth:`put` on this thread (the SQLite writer's thread stores files this way); a
        failed write (a full disk, a read-only data dir) is a StorageError saying why."""
        try:
            return write_png(self.data_dir, data)
        except OSError as exc:
            raise StorageError(
                f"writing the image under {self.data_dir} failed: {type(exc).__name__}: {exc}",
                backend=self.backend,
            ) from exc

    async def put(self, data: bytes) -> tuple[str, str]:
        return await asyncio.to_thread(self.put_blocking, data)

    def _path(self, sha256: str) -> Path:
        return self.data_dir / relative_path(sha256)

    async def chunks(self, sha256: str) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(self._path(sha256).open, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, self.chunk_size):
                yield chunk
        finally:
            handle.close()

    async def read(self, sha256: str) -> bytes:
        return await asyncio.to_thread(self._path(sha256).read_bytes)

    async def exists(self, sha256: str) -> bool:
        return await asyncio.to_thread(self._path(sha256).is_file)

    async def size(self, sha256: str) -> int:
        return _size(self._path(sha256))

    async def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._path(sha256).unlink)

    async def iterate(self) -> AsyncIterator[str]:
        paths = await asyncio.to_thread(
            lambda: sorted((self.data_dir / IMAGES_DIR).glob("*/*.png"))
        )
        for path in paths:
            yield path.stem

    async def total_bytes(self) -> int:
        return await asyncio.to_thread(self._total_bytes)

    def _total_bytes(self) -> int:
        total = 0
        for path in (self.data_dir / IMAGES_DIR).glob("*/*.png"):
            total += _size(path)
        return total

    def local_path(self, sha256: str) -> Path | None:
        return self._path(sha256)

    async def reclaim(
        self, shas: Sequence[str], *, untouched_since: float, settle_s: float, named: Named
    ) -> int:
        """A file is first renamed aside; after ``settle_s`` (longer than a job takes from
        finding a file already stored to committing its row) the references are counted
        again, and a file a new row names is put back. A file modified after
        ``untouched_since`` is left alone."""
        still = await named(shas)
        aside: dict[str, tuple[Path, Path]] = {}
        for sha in shas:
            if sha not in still:
                path = self._path(sha)
                moved = _move_aside_unless_fresh(path, untouched_since)
                if moved is not None:
                    aside[sha] = (path, moved)
        if not aside:
            return 0
        await asyncio.sleep(settle_s)
        named_now = await named(list(aside))
        gone = 0
        for sha, (path, moved) in aside.items():
            with contextlib.suppress(FileNotFoundError):
                if sha in named_now and not path.exists():
                    moved.replace(path)  # a job stored these bytes meanwhile: put the file back
                else:
                    moved.unlink()
                    gone += 1
        return gone

    async def close(self) -> None:
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _move_aside_unless_fresh(path: Path, cutoff: float) -> Path | None:
    """Rename ``path`` aside unless it was modified after ``cutoff``; the new name, or None."""
    aside = path.with_name(f".{path.name}.prune")
    try:
        if path.stat().st_mtime > cutoff:
            return None
        path.rename(aside)
    except FileNotFoundError:
        return None
    return aside


class DatabaseImages:
    """Image bytes in the store's database (``image_blobs`` + ``image_chunks``).

    A put hashes the bytes, then in one transaction either touches the blob already there
    (``touched_at``) or writes its row and its chunks one at a time: the PNG is never copied
    whole again. Reads stream the chunks in order. Retention deletes a blob only when no image
    row names it and no job touched it since the cutoff, in one statement, so a job that finds
    the blob stored keeps it (the touch and the delete take the same row lock).
    """

    backend = "postgresql"

    def __init__(self, engine: Callable[[], AsyncEngine], chunk_size: int = 256 * 1024) -> None:
        self._engine = engine
        self.chunk_size = chunk_size

    async def put(self, data: bytes) -> tuple[str, str]:
        sha256 = hashlib.sha256(data).hexdigest()
        try:
            await self._put(sha256, data)
        except Exception as exc:
            raise StorageError(
                f"storing image {sha256[:12]} failed: {type(exc).__name__}: {exc}",
                backend=self.backend,
            ) from exc
        return sha256, relative_path(sha256)

    async def _put(self, sha256: str, data: bytes) -> None:
        now = datetime.now(UTC)
        async with self._engine().begin() as conn:
            touched = await conn.execute(
                update(ImageBlob).where(ImageBlob.sha256 == sha256).values(touched_at=now)
            )
            if cast("CursorResult[Any]", touched).rowcount == 1:
                return
            added = await conn.execute(
                _insert_ignoring_duplicates(conn.dialect.name)
                .values(sha256=sha256, size=len(data), touched_at=now)
                .returning(ImageBlob.sha256)
            )
            if added.first() is None:
                return  # another job stored the same bytes meanwhile (and committed)
            view = memoryview(data)
            for seq, start in enumerate(range(0, max(len(data), 1), self.chunk_size)):
                await conn.execute(
                    insert(ImageChunk).values(
                        sha256=sha256, seq=seq, data=bytes(view[start : start + self.chunk_size])
                    )
                )

    async def chunks(self, sha256: str) -> AsyncIterator[bytes]:
        """One chunk per query, by primary key, on a pooled connection held meanwhile: a
        64 KB image is one round trip, and only one chunk is in memory at a time."""
        async with self._engine().connect() as conn:
            seq = 0
            while True:
                found = await conn.execute(
                    select(ImageChunk.data).where(
                        ImageChunk.sha256 == sha256, ImageChunk.seq == seq
                    )
                )
                chunk = found.scalar()
                if chunk is None:
                    break
                yield bytes(chunk)
                seq += 1
        if seq == 0:
            raise FileNotFoundError(f"no image {sha256} in the database")

    async def read(self, sha256: str) -> bytes:
        return await read_all(self.chunks(sha256))

    async def exists(self, sha256: str) -> bool:
        async with self._engine().connect() as conn:
            found = await conn.execute(select(ImageBlob.sha256).where(ImageBlob.sha256 == sha256))
            return found.first() is not None

    async def size(self, sha256: str) -> int:
        try:
            async with self._engine().connect() as conn:
                found = await conn.execute(select(ImageBlob.size).where(ImageBlob.sha256 == sha256))
                return int(found.scalar() or 0)
        except (SQLAlchemyError, OSError) as exc:
            raise StorageError(
                f"reading image {sha256[:12]} failed: {type(exc).__name__}: {exc}",
                backend=self.backend,
            ) from exc

    async def delete(self, sha256: str) -> None:
        async with self._engine().begin() as conn:
            await conn.execute(delete(ImageChunk).where(ImageChunk.sha256 == sha256))
            await conn.execute(delete(ImageBlob).where(ImageBlob.sha256 == sha256))

    async def iterate(self) -> AsyncIterator[str]:
        after = ""
        while True:
            async with self._engine().connect() as conn:
                page = (
                    await conn.execute(
                        select(ImageBlob.sha256)
                        .where(ImageBlob.sha256 > after)
                        .order_by(ImageBlob.sha256)
                        .limit(500)
                    )
                ).scalars()
                shas = list(page)
            if not shas:
                return
            for sha in shas:
                yield sha
            after = shas[-1]

    async def total_bytes(self) -> int:
        async with self._engine().connect() as conn:
            return int((await conn.execute(select(func.sum(ImageBlob.size)))).scalar() or 0)

    def local_path(self, sha256: str) -> Path | None:
        return None

    async def reclaim(
        self, shas: Sequence[str], *, untouched_since: float, settle_s: float, named: Named
    ) -> int:
        cutoff = datetime.fromtimestamp(untouched_since, UTC)
        gone = 0
        for start in range(0, len(shas), 500):
            chunk = list(shas[start : start + 500])
            unnamed = ~exists().where(Image.sha256 == ImageBlob.sha256)
            async with self._engine().begin() as conn:
                doomed = (
                    select(ImageBlob.sha256)
                    .where(ImageBlob.sha256.in_(chunk), ImageBlob.touched_at < cutoff, unnamed)
                    .with_for_update()
                )
                shas_gone = list((await conn.execute(doomed)).scalars())
                if shas_gone:
                    await conn.execute(delete(ImageChunk).where(ImageChunk.sha256.in_(shas_gone)))
                    await conn.execute(delete(ImageBlob).where(ImageBlob.sha256.in_(shas_gone)))
                gone += len(shas_gone)
        return gone

    async def close(self) -> None:
        return None


def _insert_ignoring_duplicates(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(ImageBlob).on_conflict_do_nothing(index_elements=["sha256"])
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(ImageBlob).on_conflict_do_nothing(index_elements=["sha256"])


def image_store(
    storage: StorageSettings, data_dir: Path, engine: Callable[[], AsyncEngine]
) -> ImageStore:
    """The backend ``[storage]`` names; ``engine`` is the store's own (opened later)."""
    chunk_size = storage.chunk_kb * 1024
    if storage.backend == "postgresql":
        return DatabaseImages(engine, chunk_size)
    if storage.backend == "s3":
        from imagegate.store.s3 import S3Images

        return S3Images(storage)
    return FileImages(data_dir, chunk_size)


__all__ = [
    "DatabaseImages",
    "FileImages",
    "ImageStore",
    "image_store",
    "read_all",
]
