"""The Store: jobs, images and events in SQLite, PNG files content-addressed beside them."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest
from PIL import Image
from sqlalchemy import text

from imagegate.errors import Timeout
from imagegate.jobend import Failed, Succeeded
from imagegate.request import Attempt, AttemptError, GeneratedImage, ImageRequest, ImageResult
from imagegate.store import (
    EventRecord,
    ImageRecord,
    JobRecord,
    Store,
    parse_infotext,
    read_metadata,
)
from imagegate.store.files import write_png

T = TypeVar("T")

REQUEST = ImageRequest(
    prompt="a ✔ lighthouse", negative_prompt="blurry", width=64, height=64, steps=2, seed=7
)


def run_with_store(data_dir: Path, body: Callable[[Store], Awaitable[T]]) -> T:
    """Open a store in ``data_dir``, run ``body`` with it, close it."""

    async def main() -> T:
        async with Store(data_dir) as store:
            return await body(store)

    return asyncio.run(main())


def _png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(out, format="PNG")
    return out.getvalue()


def _result(*pngs: bytes, request: ImageRequest = REQUEST, model: str = "tiny") -> ImageResult:
    return ImageResult(
        images=[
            GeneratedImage(png=png, width=64, height=64, seed=7 + i) for i, png in enumerate(pngs)
        ],
        provider="local",
        model=model,
        attempts=[Attempt(provider="local", outcome="ok", elapsed_s=0.5)],
        elapsed_s=0.75,
        request=request,
    )


async def _stored(store: Store, result: ImageResult) -> ImageResult:
    job_id = await store.create_job(result.request, route=["local"], source="library")
    return (await store.end(job_id, Succeeded(result))).result


def test_open_creates_the_data_dir_its_images_folder_and_database(tmp_path: Path) -> None:
    """Opening a store in a missing folder creates it, ``images/`` and ``imagegate.db``."""
    data_dir = tmp_path / "data"

    async def body(store: Store) -> None:
        return None

    run_with_store(data_dir, body)

    assert (data_dir / "images").is_dir()
    assert (data_dir / "imagegate.db").is_file()


def test_sqlite_uses_wal_a_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    """Every SQLite connection runs in WAL mode, waits when busy and enforces foreign keys."""

    async def body(store: Store) -> list[object]:
        async with store.engine.connect() as conn:
            return [
                (await conn.execute(text(f"PRAGMA {name}"))).scalar()
                for name in ("journal_mode", "busy_timeout", "foreign_keys")
            ]

    assert run_with_store(tmp_path, body) == ["wal", 5000, 1]


def test_store_refuses_work_before_it_is_opened(tmp_path: Path) -> None:
    """A store that was never opened says how to open it."""
    store = Store(tmp_path)

    with pytest.raises(RuntimeError, match="not open"):
        asyncio.run(store.get_job("x"))


def test_create_job_records_a_running_job(tmp_path: Path) -> None:
    """A new job is running by default, with its request, route and source, started now."""

    async def body(store: Store) -> JobRecord | None:
        job_id = await store.create_job(REQUEST, route=["space", "local"], source="cli")
        return await store.get_job(job_id)

    job = run_with_store(tmp_path, body)

    assert job is not None
    assert (job.status, job.source, job.route) == ("running", "cli", ["space", "local"])
    assert job.request == REQUEST.model_dump(mode="json")
    assert job.started_at == job.created_at


def test_a_queued_job_has_not_started(tmp_path: Path) -> None:
    """A queued job keeps its queue and priority and has no start time yet."""

    async def body(store: Store) -> JobRecord | None:
        job_id = await store.create_job(
            REQUEST, route=["local"], source="jobs", status="queued", queue="sdxl", priority=5
        )
        return await store.get_job(job_id)

    job = run_with_store(tmp_path, body)

    assert job is not None
    assert (job.status, job.queue, job.priority, job.started_at) == ("queued", "sdxl", 5, None)


def test_create_job_refuses_an_unknown_source(tmp_path: Path) -> None:
    """The source must be one of the known surfaces, and the error lists them."""

    async def body(store: Store) -> str:
        return await store.create_job(REQUEST, route=["local"], source="web")

    with pytest.raises(ValueError, match="source: must be one of library, cli"):
        run_with_store(tmp_path, body)


def test_end_succeeded_fills_id_path_and_sha256(tmp_path: Path) -> None:
    """The returned result names the job, and each image its id, absolute path and digest."""
    result = run_with_store(tmp_path, lambda store: _stored(store, _result(_png())))

    image = result.images[0]
    assert result.job_id is not None
    assert image.id is not None
    assert image.path is not None
    assert Path(image.path).is_absolute()
    assert image.sha256 == hashlib.sha256(Path(image.path).read_bytes()).hexdigest()
    assert image.png == Path(image.path).read_bytes()


def test_stored_file_is_addressed_by_its_content(tmp_path: Path) -> None:
    """The file lives at ``images/<sha[:2]>/<sha>.png``, named for the stored bytes."""
    result = run_with_store(tmp_path, lambda store: _stored(store, _result(_png())))

    sha = result.images[0].sha256
    assert result.images[0].path == str(tmp_path / "images" / sha[:2] / f"{sha}.png")


def test_end_succeeded_marks_the_job_succeeded(tmp_path: Path) -> None:
    """The job records provider, model, first seed, attempts, time, cost and its images."""

    async def body(store: Store) -> JobRecord | None:
        job_id = await store.create_job(REQUEST, route=["local"], source="library")
        await store.end(job_id, Succeeded(_result(_png(), _png((0, 0, 255))), cost=0.02))
        return await store.get_job(job_id)

    job = run_with_store(tmp_path, body)

    assert job is not None
    assert (job.status, job.provider, job.model, job.seed) == ("succeeded", "local", "tiny", 7)
    assert job.attempts == [{"provider": "local", "outcome": "ok", "error": None, "elapsed_s": 0.5}]
    assert (job.elapsed_s, job.cost, job.progress) == (0.75, 0.02, 1.0)
    assert job.finished_at is not None
    assert [image.seed for image in job.images] == [7, 8]


def test_stored_png_carries_the_infotext_and_provenance(tmp_path: Path) -> None:
    """The stored file shows A1111's PNG Info and imagegate's provenance."""
    result = run_with_store(tmp_path, lambda store: _stored(store, _result(_png())))

    parameters, provenance = read_metadata(Path(str(result.images[0].path)).read_bytes())

    assert parameters is not None
    assert parse_infotext(parameters) | {"Version": ""} == {
        "Prompt": "a ✔ lighthouse",
        "Negative prompt": "blurry",
        "Steps": "2",
        "Seed": "7",
        "Size": "64x64",
        "Model": "tiny",
        "Version": "",
    }
    assert provenance is not None
    assert (provenance["provider"], provenance["model"]) == ("local", "tiny")


def test_effective_settings_fill_what_the_request_left_open(tmp_path: Path) -> None:
    """Steps, sampler and guidance the provider really used reach the infotext."""
    request = ImageRequest(prompt="p", width=64, height=64)

    async def body(store: Store) -> ImageResult:
        job_id = await store.create_job(request, route=["local"], source="library")
        effective = {"steps": 4, "sampler": "Euler a", "guidance": 0.0}
        return (
            await store.end(
                job_id, Succeeded(_result(_png(), request=request), effective=effective)
            )
        ).result

    result = run_with_store(tmp_path, body)

    parameters, _ = read_metadata(result.images[0].png)
    assert parameters is not None
    parsed = parse_infotext(parameters)
    assert (parsed["Steps"], parsed["Sampler"], parsed["CFG scale"]) == ("4", "Euler a", "0")


def test_identical_bytes_are_written_once(tmp_path: Path) -> None:
    """Writing bytes already stored leaves the existing file untouched."""
    sha, relative = write_png(tmp_path, b"png bytes")
    path = tmp_path / relative
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))

    assert write_png(tmp_path, b"png bytes") == (sha, relative)
    assert path.stat().st_mtime_ns == 1_000_000_000


def test_identical_images_share_one_file(tmp_path: Path) -> None:
    """Two images with the same stored bytes get two rows but one file."""
    png = _png()
    twins = _result(png, png, request=REQUEST.model_copy(update={"n": 2}))
    twins.images[1].seed = 7

    result = run_with_store(tmp_path, lambda store: _stored(store, twins))

    assert result.images[0].id != result.images[1].id
    assert result.images[0].path == result.images[1].path
    assert len(list((tmp_path / "images").rglob("*.png"))) == 1


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    """The atomic write renames its temporary file into place."""
    run_with_store(tmp_path, lambda store: _stored(store, _result(_png())))

    assert [p.suffix for p in (tmp_path / "images").rglob("*") if p.is_file()] == [".png"]


def test_end_failed_records_the_reason(tmp_path: Path) -> None:
    """A failed job keeps the error's type, message and stage, the attempts and the time."""
    attempts = [
        Attempt(
            provider="space",
            outcome="error",
            error=AttemptError(type="Timeout", stage="connect", message="too slow"),
            elapsed_s=2.0,
        )
    ]

    async def body(store: Store) -> JobRecord | None:
        job_id = await store.create_job(REQUEST, route=["space"], source="library")
        error = Timeout("connect took over 2 s", provider="space", stage="connect")
        await store.end(job_id, Failed(error, attempts, 2.5))
        return await store.get_job(job_id)

    job = run_with_store(tmp_path, body)

    assert job is not None
    assert job.status == "failed"
    assert job.error == {
        "type": "Timeout",
        "message": "space: connect took over 2 s",
        "stage": "connect",
        "provider": "space",
    }
    assert job.attempts == [attempt.model_dump(mode="json") for attempt in attempts]
    assert (job.elapsed_s, job.images) == (2.5, [])
    assert job.finished_at is not None


def test_end_failed_can_record_a_cancellation(tmp_path: Path) -> None:
    """A cancelled job is stored as cancelled, with a stage of None for a plain error."""

    async def body(store: Store) -> JobRecord | None:
        job_id = await store.create_job(REQUEST, route=["local"], source="library")
        await store.end(job_id, Failed(asyncio.CancelledError(), elapsed_s=0.1, status="cancelled"))
        return await store.get_job(job_id)

    job = run_with_store(tmp_path, body)

    assert job is not None
    assert job.status == "cancelled"
    assert job.error == {"type": "CancelledError", "message": "", "stage": None}


def test_finishing_an_unknown_job_raises_lookup_error(tmp_path: Path) -> None:
    """A job id the store never issued is refused, not silently created."""

    async def body(store: Store) -> None:
        await store.end("missing", Failed(RuntimeError("x")))

    with pytest.raises(LookupError, match="missing"):
        run_with_store(tmp_path, body)


def test_get_job_of_an_unknown_id_is_none(tmp_path: Path) -> None:
    """Looking up an id that does not exist gives None."""

    async def body(store: Store) -> tuple[JobRecord | None, ImageRecord | None]:
        return (await store.get_job("missing"), await store.get_image("missing"))

    assert run_with_store(tmp_path, body) == (None, None)


def test_timestamps_read_back_in_utc(tmp_path: Path) -> None:
    """Times come back timezone-aware, in UTC, even from SQLite."""

    async def body(store: Store) -> JobRecord | None:
        job_id = await store.create_job(REQUEST, route=["local"], source="library")
        return await store.get_job(job_id)

    job = run_with_store(tmp_path, body)

    assert job is not None
    assert job.created_at.tzinfo is not None
    assert job.created_at.utcoffset() is not None
    assert abs((datetime.now(UTC) - job.created_at).total_seconds()) < 60


def test_list_jobs_gives_the_newest_first(tmp_path: Path) -> None:
    """Jobs come newest first, at most ``limit`` of them."""

    async def body(store: Store) -> tuple[list[str], list[str]]:
        ids = [await store.create_job(REQUEST, route=["local"], source="library") for _ in range(4)]
        return ids, [job.id for job in await store.list_jobs(limit=3)]

    ids, listed = run_with_store(tmp_path, body)

    assert listed == ids[::-1][:3]


def test_list_jobs_before_pages_back_in_time(tmp_path: Path) -> None:
    """``before`` the oldest job of one page gives the next page, without overlap."""

    async def body(store: Store) -> tuple[list[str], list[str]]:
        ids = [await store.create_job(REQUEST, route=["local"], source="library") for _ in range(5)]
        first = await store.list_jobs(limit=2)
        second = await store.list_jobs(limit=2, before=first[-1].created_at)
        third = await store.list_jobs(limit=2, before=second[-1].created_at)
        return ids, [job.id for job in first + second + third]

    ids, listed = run_with_store(tmp_path, body)

    assert listed == ids[::-1]


def test_list_images_pages_newest_first(tmp_path: Path) -> None:
    """Images come newest first, with the prompt for the history, and page with ``before``."""

    async def body(store: Store) -> tuple[list[str], list[str]]:
        ids: list[str] = []
        for color in ((1, 0, 0), (2, 0, 0), (3, 0, 0)):
            result = await _stored(store, _result(_png(color)))
            ids.append(str(result.images[0].id))
        first = await store.list_images(limit=2)
        rest = await store.list_images(limit=2, before=first[-1].created_at)
        assert {image.prompt for image in first + rest} == {"a ✔ lighthouse"}
        return ids, [image.id for image in first + rest]

    ids, listed = run_with_store(tmp_path, body)

    assert listed == ids[::-1]


def test_get_image_resolves_to_the_stored_file(tmp_path: Path) -> None:
    """An image record's path, resolved by the store, is the file ending the job wrote."""

    async def body(store: Store) -> tuple[str | None, Path]:
        result = await _stored(store, _result(_png()))
        record = await store.get_image(str(result.images[0].id))
        assert record is not None
        return result.images[0].path, store.image_path(record)

    returned, resolved = run_with_store(tmp_path, body)

    assert str(resolved) == returned


def test_history_survives_reopening(tmp_path: Path) -> None:
    """A second store on the same data dir sees what the first one wrote."""
    result = run_with_store(tmp_path, lambda store: _stored(store, _result(_png())))

    async def body(store: Store) -> JobRecord | None:
        return await store.get_job(str(result.job_id))

    job = run_with_store(tmp_path, body)

    assert job is not None
    assert [image.id for image in job.images] == [result.images[0].id]


def test_record_progress_records_step_and_fraction(tmp_path: Path) -> None:
    """Progress is stored as step, steps and their fraction."""

    async def body(store: Store) -> JobRecord | None:
        job_id = await store.create_job(REQUEST, route=["local"], source="jobs")
        await store.record_progress(job_id, 1, 4)
        return await store.get_job(job_id)

    job = run_with_store(tmp_path, body)

    assert job is not None
    assert (job.step, job.steps, job.progress) == (1, 4, 0.25)


def test_events_after_replays_later_events_in_order(tmp_path: Path) -> None:
    """A subscriber that saw event N gets every later event of that job, oldest first."""

    async def body(store: Store) -> tuple[list[str], list[dict[str, object]]]:
        job_id = await store.create_job(REQUEST, route=["local"], source="jobs")
        other = await store.create_job(REQUEST, route=["local"], source="jobs")
        first = await store.add_event(job_id, "started", {})
        await store.add_event(other, "started", {})
        await store.add_event(job_id, "progress", {"step": 1, "steps": 2})
        await store.add_event(job_id, "succeeded", {})
        events = await store.events_after(job_id, first.id)
        return [event.kind for event in events], [event.data for event in events]

    kinds, data = run_with_store(tmp_path, body)

    assert kinds == ["progress", "succeeded"]
    assert data == [{"step": 1, "steps": 2}, {}]


def test_end_can_write_the_succeeded_event_with_the_job(tmp_path: Path) -> None:
    """end(Succeeded, event=True) stores the succeeded event naming the stored image ids."""

    async def body(store: Store) -> tuple[ImageResult, list[EventRecord], EventRecord | None]:
        job_id = await store.create_job(REQUEST, route=["local"], source="jobs")
        ended = await store.end(job_id, Succeeded(_result(_png())), event=True)
        stored, event = ended.result, ended.event
        return stored, await store.events_after(job_id), event

    stored, logged, event = run_with_store(tmp_path, body)

    assert [e.kind for e in logged] == ["succeeded"]
    assert event == logged[0]
    assert logged[0].data["images"] == [stored.images[0].id]


def test_a_write_waits_off_the_event_loop_while_another_process_holds_the_lock(
    tmp_path: Path,
) -> None:
    """A job write blocked by another connection's lock waits on the writer thread, not the loop."""
    import sqlite3

    async def body(store: Store) -> list[str]:
        job_id = await store.create_job(REQUEST, route=["local"], source="jobs")
        other = sqlite3.connect(tmp_path / "imagegate.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        write = asyncio.ensure_future(store.add_event(job_id, "progress", {"step": 1}))
        ticks = 0
        for _ in range(10):  # the loop keeps running while the write waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert not write.done()
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(write, 5)
        assert ticks == 10
        return [e.kind for e in await store.events_after(job_id)]

    assert run_with_store(tmp_path, body) == ["progress"]
