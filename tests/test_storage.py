"""Image storage behind one interface (``[storage] backend``): the file backend as before, the
postgresql backend (bytes in the scale-out database, chunked, stored once), bad config."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image as PILImage
from serverkit import tiny_png
from sqlalchemy import func, select, update
from test_backplane import _database
from test_cli import cli

from imagegate.config import StorageSettings
from imagegate.jobend import Succeeded
from imagegate.request import GeneratedImage, ImageRequest, ImageResult
from imagegate.store import Store
from imagegate.store.blobs import DatabaseImages, FileImages
from imagegate.store.models import Image, ImageBlob, ImageChunk
from imagegate.store.retention import prune


def noisy_png(side: int) -> bytes:
    """A PNG of random pixels (it does not compress): about ``side * side * 3`` bytes."""
    out = io.BytesIO()
    PILImage.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG")
    return out.getvalue()


PG_STORAGE = StorageSettings(backend="postgresql", chunk_kb=16)


@pytest.fixture
def pg_store(tmp_path: Path) -> Iterator[Store]:
    """A Store on a fresh PostgreSQL database keeping image bytes in it (16 KiB chunks)."""
    from imagegate.backplane.postgres import sqlalchemy_url

    for url in _database():
        yield Store(tmp_path / "data", url=sqlalchemy_url(url), storage=PG_STORAGE)


async def _finish(store: Store, png: bytes, prompt: str = "a fox") -> str:
    """One finished job with one image; its image id."""
    request = ImageRequest(prompt=prompt, seed=1)
    job_id = await store.create_job(request, route=["p"], source="library")
    result = ImageResult(
        images=[GeneratedImage(png=png, width=64, height=64, seed=1)],
        provider="p",
        model="m",
        attempts=[],
        elapsed_s=0.0,
        request=request,
    )
    stored = (await store.end(job_id, Succeeded(result))).result
    image_id = stored.images[0].id
    assert image_id is not None
    return image_id


async def _blob_counts(store: Store) -> tuple[int, int]:
    async with store.engine.connect() as conn:
        blobs = (await conn.execute(select(func.count()).select_from(ImageBlob))).scalar()
        chunks = (await conn.execute(select(func.count()).select_from(ImageChunk))).scalar()
    return int(blobs or 0), int(chunks or 0)


def test_the_file_backend_is_the_default(tmp_path: Path) -> None:
    """Without a [storage] table images are files under the data dir, as before."""
    store = Store(tmp_path)

    assert isinstance(store.images, FileImages)
    assert StorageSettings().backend == "file"


def test_the_file_backend_puts_reads_iterates_and_deletes(tmp_path: Path) -> None:
    """put is content-addressed; read, chunks, exists, iterate and delete see the same bytes."""
    images = FileImages(tmp_path, chunk_size=4)

    async def main() -> None:
        sha, key = await images.put(b"0123456789")
        assert (sha, key) == await images.put(b"0123456789")
        assert sha == hashlib.sha256(b"0123456789").hexdigest()
        assert key == f"images/{sha[:2]}/{sha}.png"
        assert [c async for c in images.chunks(sha)] == [b"0123", b"4567", b"89"]
        assert await images.read(sha) == b"0123456789"
        assert [s async for s in images.iterate()] == [sha]
        assert await images.total_bytes() == 10
        await images.delete(sha)
        assert not await images.exists(sha)

    asyncio.run(main())


def test_postgresql_storage_keeps_the_same_bytes_once_in_chunks(pg_store: Store) -> None:
    """The same bytes put twice: one blob, in 16 KiB chunks, streamed back in order."""
    png = noisy_png(128)

    async def main() -> None:
        async with pg_store:
            first = await pg_store.images.put(png)
            assert await pg_store.images.put(png) == first
            pieces = [c async for c in pg_store.images.chunks(first[0])]
            assert await _blob_counts(pg_store) == (1, len(pieces))
            assert len(pieces) == -(-len(png) // (16 * 1024)) > 1
            assert b"".join(pieces) == png
            assert first[0] == hashlib.sha256(png).hexdigest()

    asyncio.run(main())


def test_a_job_on_postgresql_storage_writes_no_file(pg_store: Store) -> None:
    """A finished job's image is read back from the database; the data dir holds no PNG."""
    png = noisy_png(64)

    async def main() -> None:
        async with pg_store:
            record = await pg_store.get_image(await _finish(pg_store, png))
            assert record is not None
            stored = await pg_store.image_bytes(record)
            assert isinstance(pg_store.images, DatabaseImages)
            assert hashlib.sha256(stored).hexdigest() == record.sha256
            assert pg_store.image_file(record) is None

    asyncio.run(main())
    assert not list((pg_store.data_dir / "images").glob("*/*.png"))


def test_postgresql_storage_iterates_and_deletes(pg_store: Store) -> None:
    """iterate lists every digest once; delete takes the blob and its chunks."""

    async def main() -> None:
        async with pg_store:
            shas = sorted([(await pg_store.images.put(bytes([i]) * 40_000))[0] for i in range(3)])
            assert [s async for s in pg_store.images.iterate()] == shas
            assert await pg_store.images.total_bytes() == 120_000
            await pg_store.images.delete(shas[0])
            assert not await pg_store.images.exists(shas[0])
            assert await pg_store.images.size(shas[1]) == 40_000
            with pytest.raises(FileNotFoundError):
                await pg_store.images.read(shas[0])

    asyncio.run(main())


async def _age(store: Store, image_id: str, days: float) -> None:
    """Make an image row and its blob look ``days`` old."""
    when = datetime.now(UTC) - timedelta(days=days)
    async with store.engine.begin() as conn:
        await conn.execute(update(Image).where(Image.id == image_id).values(created_at=when))
        await conn.execute(update(ImageBlob).values(touched_at=when))


def test_retention_on_postgresql_storage_deletes_old_blobs_and_keeps_new_ones(
    pg_store: Store,
) -> None:
    """keep_days: the old image's row and blob go; the new one's stay."""

    async def main() -> None:
        async with pg_store:
            old = await _finish(pg_store, tiny_png(color=(1, 2, 3)), "old")
            await _age(pg_store, old, 40)
            new = await _finish(pg_store, tiny_png(color=(4, 5, 6)), "new")
            report = await prune(
                pg_store, older_than=datetime.now(UTC) - timedelta(days=30), settle_s=0
            )
            assert (report.images, report.files) == (1, 1)
            assert report.bytes > 0
            assert await pg_store.get_image(old) is None
            record = await pg_store.get_image(new)
            assert record is not None
            assert await pg_store.image_bytes(record)
            assert await _blob_counts(pg_store) == (1, 1)

    asyncio.run(main())


def test_retention_on_postgresql_storage_keeps_a_blob_a_job_just_stored(pg_store: Store) -> None:
    """A blob touched within the grace time is kept though no row names it yet."""

    async def main() -> None:
        async with pg_store:
            old = await _finish(pg_store, tiny_png(color=(7, 8, 9)), "old")
            await _age(pg_store, old, 40)
            await pg_store.images.put(tiny_png(color=(7, 8, 9)))  # a job stores it again
            await prune(pg_store, older_than=datetime.now(UTC) - timedelta(days=30), settle_s=0)
            assert await _blob_counts(pg_store) == (1, 1)

    asyncio.run(main())


def test_max_bytes_on_postgresql_storage_counts_the_blobs(pg_store: Store) -> None:
    """max_store_gb: the oldest images go until the blobs fit."""

    async def main() -> None:
        async with pg_store:
            ids = []
            for i in range(3):
                ids.append(await _finish(pg_store, tiny_png(color=(i, 0, 0)), f"p{i}"))
                await _age(pg_store, ids[-1], 3 - i)
            size = await pg_store.images.total_bytes()
            await prune(pg_store, max_bytes=size - 1, grace_s=0, settle_s=0)
            assert await pg_store.get_image(ids[0]) is None
            assert await pg_store.get_image(ids[2]) is not None
            assert await pg_store.images.total_bytes() < size

    asyncio.run(main())


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('[storage]\nbackend = "nfs"\n', "storage.backend"),
        ('[storage]\nbackend = "s3"\n', "storage.bucket"),
        ('[storage]\nbackend = "postgresql"\n', "storage.backend"),
    ],
)
def test_bad_storage_config_exits_2_naming_the_key(
    isolated_env: Path, table: str, key: str
) -> None:
    """An unknown backend, s3 without a bucket, postgresql without a backplane: exit 2."""
    path = isolated_env / "bad.toml"
    path.write_text(table)
    run = cli("config", "check", str(path), cwd=isolated_env)
    assert run.returncode == 2, run.stdout
    assert f"bad.toml: {key}: " in run.stderr
    assert "Traceback" not in run.stderr


def _migrate(home: Path, *args: str) -> dict[str, object]:
    run = cli("storage", "migrate", *args, "--json", cwd=home)
    assert run.returncode == 0, run.stderr
    answer: dict[str, object] = json.loads(run.stdout)
    return answer


def test_storage_migrate_copies_every_image_once_and_resumes(isolated_env: Path) -> None:
    """file -> postgresql: a first run copies all, a run after a loss copies only what is
    missing, a third copies nothing; the bytes arrive intact."""
    from imagegate.backplane.postgres import sqlalchemy_url

    pngs = [noisy_png(40 + i) for i in range(3)]
    for url in _database():
        (isolated_env / "imagegate.toml").write_text(f'[scale]\nbackplane = "{url}"\n')
        files = FileImages(isolated_env / "data")
        shas = [asyncio.run(files.put(png))[0] for png in pngs]
        target = Store(isolated_env / "data", url=sqlalchemy_url(url), storage=PG_STORAGE)

        first = _migrate(isolated_env, "--to", "postgresql")
        asyncio.run(_forget(target, shas[1]))
        second = _migrate(isolated_env, "--to", "postgresql")
        third = _migrate(isolated_env, "--to", "postgresql")

        assert (first["copied"], first["skipped"]) == (3, 0)
        assert (second["copied"], second["skipped"]) == (1, 2)
        assert (third["copied"], third["skipped"]) == (0, 3)
        assert asyncio.run(_read_all(target, shas)) == pngs


async def _forget(store: Store, sha256: str) -> None:
    async with store:
        await store.images.delete(sha256)


async def _read_all(store: Store, shas: list[str]) -> list[bytes]:
    async with store:
        return [await store.images.read(sha) for sha in shas]


@pytest.mark.parametrize(
    ("args", "flag"),
    [(["--to", "s3"], "--bucket"), (["--to", "postgresql"], "--to"), (["--to", "file"], "--to")],
)
def test_storage_migrate_bad_target_exits_2_naming_the_flag(
    isolated_env: Path, args: list[str], flag: str
) -> None:
    """s3 without a bucket, postgresql without a backplane, the backend already used: exit 2."""
    run = cli("storage", "migrate", *args, cwd=isolated_env)
    assert run.returncode == 2, run.stdout
    assert f"{flag}: " in run.stderr
    assert "Traceback" not in run.stderr
