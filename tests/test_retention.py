"""Retention: keep_days / max_store_gb sweeps and `imagegate history prune`, oldest first, on
SQLite and PostgreSQL, never a file a running job is writing, one sweeper at a time."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from serverkit import Fake, live, tiny_png
from sqlalchemy import insert, update
from test_backplane import _database
from test_cli import cli

from imagegate.config import GatewaySettings, ProviderConfig, ServerSettings, Settings
from imagegate.inputs import InputImage
from imagegate.jobend import Succeeded
from imagegate.request import GeneratedImage, ImageRequest, ImageResult
from imagegate.store import Store
from imagegate.store.models import Image
from imagegate.store.retention import RETENTION_LOCK, prune, store_bytes

OpenStore = Callable[[], Awaitable[Store]]


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens a Store on SQLite or on a fresh PostgreSQL database (files in tmp_path)."""
    url: str | None = None
    databases: Iterator[str] | None = None
    if request.param == "postgres":
        from imagegate.backplane.postgres import sqlalchemy_url

        databases = _database()
        url = sqlalchemy_url(next(databases))

    async def opened() -> Store:
        store = Store(tmp_path / "data", url=url)
        await store.open()
        return store

    yield opened
    if databases is not None:
        for _ in databases:  # drops the database
            pass


async def _image(store: Store, colour: int, age_days: float, prompt: str = "a fox") -> str:
    """One finished job with one image, made ``age_days`` ago; its image id."""
    request = ImageRequest(prompt=prompt, seed=1)
    job_id = await store.create_job(request, route=["p"], source="library")
    png = tiny_png(color=(colour, 10, 10))
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
    when = datetime.now(UTC) - timedelta(days=age_days)
    async with store.engine.begin() as conn:
        await conn.execute(update(Image).where(Image.id == image_id).values(created_at=when))
    return image_id


async def _path_of(store: Store, image_id: str) -> Path:
    record = await store.get_image(image_id)
    assert record is not None
    return store.image_path(record)


def test_older_than_deletes_old_rows_and_files_and_keeps_new_ones(open_store: OpenStore) -> None:
    """Two images 40 days old go (rows and files); one a day old stays."""

    async def main() -> None:
        store = await open_store()
        try:
            old = [await _image(store, 1, 40), await _image(store, 2, 41)]
            new = await _image(store, 3, 1)
            old_paths = [await _path_of(store, i) for i in old]
            report = await prune(
                store, older_than=datetime.now(UTC) - timedelta(days=30), grace_s=0, settle_s=0
            )
            assert (report.images, report.files) == (2, 2)
            for image_id, path in zip(old, old_paths, strict=True):
                assert await store.get_image(image_id) is None
                assert not path.exists()
            assert (await _path_of(store, new)).exists()
        finally:
            await store.close()

    asyncio.run(main())


def test_max_bytes_deletes_the_oldest_first(open_store: OpenStore) -> None:
    """With room for two of four files, the two oldest images go."""

    async def main() -> None:
        store = await open_store()
        try:
            ids = [await _image(store, c, age) for c, age in ((1, 4), (2, 3), (3, 2), (4, 1))]
            sizes = [(await _path_of(store, i)).stat().st_size for i in ids]
            report = await prune(store, max_bytes=sizes[2] + sizes[3], grace_s=0, settle_s=0)
            assert report.images == 2
            assert [await store.get_image(i) is None for i in ids] == [True, True, False, False]
            assert store_bytes(store.data_dir) <= sizes[2] + sizes[3]
        finally:
            await store.close()

    asyncio.run(main())


def test_a_dry_run_deletes_nothing_and_says_what_would_go(open_store: OpenStore) -> None:
    """--dry-run counts the old image but leaves its row and file."""

    async def main() -> None:
        store = await open_store()
        try:
            image_id = await _image(store, 1, 40)
            report = await prune(
                store,
                older_than=datetime.now(UTC) - timedelta(days=30),
                dry_run=True,
                grace_s=0,
                settle_s=0,
            )
            assert (report.images, report.files, report.dry_run) == (1, 1, True)
            assert report.bytes > 0
            assert (await _path_of(store, image_id)).exists()
        finally:
            await store.close()

    asyncio.run(main())


def test_a_file_another_image_still_names_is_kept(open_store: OpenStore) -> None:
    """Same bytes twice (one file): pruning the old row keeps the file the new row needs."""

    async def main() -> None:
        store = await open_store()
        try:
            old = await _image(store, 9, 40)
            record = await store.get_image(old)
            assert record is not None
            new = "same-bytes-as-old"
            row = record.model_dump() | {"id": new, "created_at": datetime.now(UTC)}
            async with store.engine.begin() as conn:  # a newer image of the same bytes
                await conn.execute(insert(Image).values(**row))
            report = await prune(
                store, older_than=datetime.now(UTC) - timedelta(days=30), grace_s=0, settle_s=0
            )
            assert (report.images, report.files) == (1, 0)
            assert (await _path_of(store, new)).exists()
        finally:
            await store.close()

    asyncio.run(main())


def test_a_file_a_job_stores_again_during_the_sweep_is_put_back(open_store: OpenStore) -> None:
    """A row naming the file appears while it is set aside: the file is restored."""

    async def main() -> None:
        store = await open_store()
        try:
            old = await _image(store, 5, 40)
            record = await store.get_image(old)
            assert record is not None
            path = store.image_path(record)
            sweep = asyncio.create_task(
                prune(
                    store,
                    older_than=datetime.now(UTC) - timedelta(days=30),
                    grace_s=0,
                    settle_s=1.0,
                )
            )
            for _ in range(500):  # until it is set aside (bounded: 5 s)
                if not path.exists():
                    break
                await asyncio.sleep(0.01)
            assert not path.exists()
            row = record.model_dump() | {"id": "stored-again", "created_at": datetime.now(UTC)}
            async with store.engine.begin() as conn:
                await conn.execute(insert(Image).values(**row))
            report = await sweep
            assert report.images == 1
            assert path.exists()
        finally:
            await store.close()

    asyncio.run(main())


def test_a_recently_written_file_is_never_deleted(open_store: OpenStore) -> None:
    """A file touched within the grace period (a running job storing the same bytes) stays,
    though its old row goes."""

    async def main() -> None:
        store = await open_store()
        try:
            image_id = await _image(store, 1, 40)
            path = await _path_of(store, image_id)
            report = await prune(store, older_than=datetime.now(UTC) - timedelta(days=30))
            assert report.images == 1
            assert await store.get_image(image_id) is None
            assert path.exists()
        finally:
            await store.close()

    asyncio.run(main())


def test_one_sweeper_at_a_time_on_postgresql(tmp_path: Path) -> None:
    """While another session holds the retention lock, a prune skips and deletes nothing."""
    import psycopg

    from imagegate.backplane.postgres import sqlalchemy_url

    databases = _database()
    url = next(databases)

    async def main() -> None:
        store = Store(tmp_path, url=sqlalchemy_url(url))
        await store.open()
        try:
            image_id = await _image(store, 1, 40)
            with psycopg.connect(url, autocommit=True) as other:
                other.execute(f"SELECT pg_advisory_lock({RETENTION_LOCK})")
                report = await prune(
                    store, older_than=datetime.now(UTC) - timedelta(days=30), grace_s=0, settle_s=0
                )
                assert report.skipped
                assert await store.get_image(image_id) is not None
                other.execute(f"SELECT pg_advisory_unlock({RETENTION_LOCK})")
            report = await prune(
                store, older_than=datetime.now(UTC) - timedelta(days=30), grace_s=0, settle_s=0
            )
            assert report.images == 1
        finally:
            await store.close()

    try:
        asyncio.run(main())
    finally:
        for _ in databases:
            pass


def test_the_server_sweeps_in_the_background(isolated_env: Path) -> None:
    """keep_days set: an image past it disappears from the history without a request to
    prune, and a job running meanwhile still succeeds with its image."""
    settings = Settings(
        gateway=GatewaySettings(
            route=["a"], deadline_s=30, keep_days=1 / 86400, retention_sweep_s=0.05
        ),
        server=ServerSettings(),
        providers={"a": ProviderConfig(type="fake")},
    )
    with live(settings, {"a": Fake("a", delay_s=0.3)}) as server:
        first = httpx.post(f"{server.url}/v1/images/generations", json={"prompt": "a fox"})
        assert first.status_code == 200
        job_id = first.headers["x-imagegate-job"]
        job = httpx.get(f"{server.url}/v1/jobs/{job_id}").json()
        stored = job["images"][0]["id"]
        deadline = time.monotonic() + 20
        while httpx.get(f"{server.url}/v1/images/{stored}").status_code != 404:
            assert time.monotonic() < deadline, "the sweep never deleted the old image"
            time.sleep(0.05)
        second = httpx.post(f"{server.url}/v1/images/generations", json={"prompt": "a cat"})
        assert second.status_code == 200


def test_cli_prune_dry_run_json(isolated_env: Path) -> None:
    """`history prune --older-than 30d --dry-run --json` prints one JSON document."""
    run = cli("history", "prune", "--older-than", "30d", "--dry-run", "--json", cwd=isolated_env)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc == {"images": 0, "files": 0, "bytes": 0, "dry_run": True, "skipped": False}


def test_cli_prune_deletes_old_images(isolated_env: Path) -> None:
    """An image 40 days old is gone after `history prune --older-than 30d`."""

    async def seed() -> str:
        async with Store(isolated_env / "data") as store:
            return await _image(store, 1, 40)

    image_id = asyncio.run(seed())
    run = cli("history", "prune", "--older-than", "30d", cwd=isolated_env)
    assert run.returncode == 0, run.stderr
    assert "deleted 1 images" in run.stdout

    async def gone() -> bool:
        async with Store(isolated_env / "data") as store:
            return await store.get_image(image_id) is None

    assert asyncio.run(gone())


@pytest.mark.parametrize("age", ["30", "thirty days", "-3d", "0d", "3w"])
def test_cli_prune_bad_age_exits_2_naming_the_flag(isolated_env: Path, age: str) -> None:
    """A malformed --older-than: exit 2, one line naming it and the allowed units."""
    run = cli("history", "prune", "--older-than", age, cwd=isolated_env)
    assert run.returncode == 2, run.stderr
    assert "--older-than" in run.stderr
    assert "Traceback" not in run.stderr


def test_an_old_image_a_queued_edit_takes_as_input_keeps_its_bytes(open_store: OpenStore) -> None:
    """ "Edit this" on an old image queues a job naming its bytes: pruning the old image's row
    keeps the file until the edit has run, so the job does not fail with its input gone."""

    async def main() -> None:
        store = await open_store()
        try:
            old = await _image(store, 7, 40)
            path = await _path_of(store, old)
            edit = ImageRequest(
                prompt="an edit", images=(InputImage.from_bytes(path.read_bytes()),)
            )
            job_id = await store.create_job(edit, route=["p"], source="jobs", status="queued")
            report = await prune(
                store, older_than=datetime.now(UTC) - timedelta(days=30), grace_s=0, settle_s=0
            )
            assert (report.images, await store.get_image(old)) == (1, None)
            assert path.exists()
            job = await store.get_job(job_id)
            assert job is not None
            await store.load_request(job.request)  # its input is still there
        finally:
            await store.close()

    asyncio.run(main())
