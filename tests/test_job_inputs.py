"""Edit jobs keep their input images content-addressed beside the outputs: the stored request
names them by sha256 only, and a worker (local after a restart, or a PostgreSQL worker) reads
them back."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from editkit import INIT, MASK, edit_request
from fakekit import solid_png
from serverkit import NUMPY_COPY_WARNING, Live, live, tiny_settings
from test_backplane import Make, RecordingHandler, kind, make, pg_url  # noqa: F401

from imagegate.backplane import JobContext, LocalBackplane
from imagegate.request import ImageRequest, ImageResult
from imagegate.store import Store
from imagegate.store.files import relative_path
from imagegate.store.pngmeta import read_metadata

EDIT = edit_request(mask=True)


class Seeing(RecordingHandler):
    """A handler that keeps the requests it ran."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.seen: list[ImageRequest] = []

    async def __call__(self, job: JobContext) -> ImageResult:
        self.seen.append(job.request)
        return await super().__call__(job)


def test_contract_an_edit_job_runs_with_its_inputs_read_back(
    make: Make,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The worker gets the input image and mask bytes; the stored request names only sha256."""

    async def main() -> None:
        store, bp = await make()
        handler = Seeing(store)
        await bp.start(handler)
        submitted = await bp.jobs.submit(EDIT, route=["p"], source="jobs", queue="p")
        outcome = await asyncio.wait_for(bp.jobs.wait(submitted.job_id), 10)
        assert outcome.status == "succeeded", repr(outcome.error)
        ran = handler.seen[0]
        assert ran.images[0].data == INIT.data
        assert ran.mask is not None
        assert ran.mask.data == MASK.data
        job = await store.get_job(submitted.job_id)
        assert job is not None
        assert "data" not in json.dumps(job.request)
        assert job.request["images"][0]["sha256"] == INIT.sha256
        for image in (INIT, MASK):
            assert (tmp_path / relative_path(image.sha256)).read_bytes() == image.data
        await bp.stop()
        await store.close()

    asyncio.run(main())


def test_the_same_input_twice_is_stored_once(tmp_path: Path) -> None:
    """Two jobs with one input image share its one file."""

    async def main() -> None:
        async with Store(tmp_path) as store:
            for _ in range(2):
                await store.create_job(EDIT, route=["p"], source="jobs", status="queued")
        files = sorted(p.name for p in (tmp_path / "images").glob("*/*"))
        assert files == sorted([f"{INIT.sha256}.png", f"{MASK.sha256}.png"])

    asyncio.run(main())


def test_a_queued_edit_job_runs_with_its_inputs_after_a_restart(tmp_path: Path) -> None:
    """A job left queued by a previous process is rebuilt from its stored inputs."""

    async def main() -> None:
        async with Store(tmp_path) as store:
            job_id = await store.create_job(EDIT, route=["p"], source="jobs", status="queued")
        async with Store(tmp_path) as store:
            bp = LocalBackplane(store)
            handler = Seeing(store)
            await bp.start(handler)
            outcome = await asyncio.wait_for(bp.jobs.wait(job_id), 10)
            assert outcome.status == "succeeded", repr(outcome.error)
            assert handler.seen[0].images[0].data == INIT.data
            await bp.stop()

    asyncio.run(main())


def test_a_job_whose_input_file_is_gone_fails_saying_so(tmp_path: Path) -> None:
    """A recovered job whose input was deleted fails naming the missing input, no traceback."""

    async def main() -> None:
        async with Store(tmp_path) as store:
            job_id = await store.create_job(EDIT, route=["p"], source="jobs", status="queued")
        (tmp_path / relative_path(INIT.sha256)).unlink()
        async with Store(tmp_path) as store:
            bp = LocalBackplane(store)
            await bp.start(Seeing(store))
            job = await store.get_job(job_id)
            assert job is not None
            assert job.status == "failed"
            assert job.error is not None
            await bp.stop()

    asyncio.run(main())


@pytest.fixture
def local(tiny_model: Path) -> Iterator[Live]:
    """imagegate on the tiny local pipeline."""
    with live(tiny_settings(tiny_model)) as server:
        yield server


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.filterwarnings(NUMPY_COPY_WARNING)
def test_a_native_job_takes_base64_images_and_mask(local: Live) -> None:
    """POST /v1/jobs with base64 images and mask runs an inpaint and links its inputs."""
    body = {
        "prompt": "a lighthouse",
        "steps": 2,
        "images": [b64(INIT.data)],
        "mask": "data:image/png;base64," + b64(MASK.data),
        "strength": 0.5,
    }
    accepted = httpx.post(f"{local.url}/v1/jobs", json=body, timeout=30)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    with httpx.stream("GET", f"{local.url}/v1/jobs/{job_id}/events", timeout=60) as stream:
        kinds = [line[7:] for line in stream.iter_lines() if line.startswith("event: ")]
    assert "progress" in kinds
    assert kinds[-1] == "succeeded"
    job = httpx.get(f"{local.url}/v1/jobs/{job_id}").json()
    assert job["request"]["images"][0]["sha256"] == INIT.sha256
    assert job["request"]["mask"]["sha256"] == MASK.sha256
    png = httpx.get(job["images"][0]["url"], timeout=10).content
    parameters, _ = read_metadata(png)
    assert parameters is not None
    assert "Denoising strength: 0.5, Mask blur: 4, Version:" in parameters


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"images": ["bm90IGFuIGltYWdl"]}, "images"),
        ({"images": [b64(INIT.data[:40])]}, "images"),
        ({"images": [b64(INIT.data)] * 17}, "images"),
        ({"images": [b64(INIT.data)], "mask": b64(solid_png(64, 64, (0, 0, 0)))}, "mask"),
        ({"images": [b64(INIT.data)], "strength": 1.5}, "strength"),
    ],
    ids=["not-an-image", "truncated", "too-many", "empty-mask", "strength"],
)
@pytest.mark.filterwarnings(NUMPY_COPY_WARNING)
def test_a_native_job_with_bad_inputs_is_400_naming_the_field(
    local: Live, fields: dict[str, object], field: str
) -> None:
    """Bad input images are refused naming the field; no job is stored."""
    answer = httpx.post(f"{local.url}/v1/jobs", json={"prompt": "x", **fields}, timeout=30)
    assert answer.status_code == 400, answer.text
    assert field in json.dumps(answer.json())
    assert httpx.get(f"{local.url}/v1/jobs").json()["data"] == []
