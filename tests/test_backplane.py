"""The local backplane: persisted submits, positions, cancel, recovery, event replay."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from serverkit import tiny_png

from imagegate.backplane import JobContext, LocalBackplane, QueueFull
from imagegate.providers.base import Progress
from imagegate.request import GeneratedImage, ImageRequest, ImageResult
from imagegate.store import Store

REQUEST = ImageRequest(prompt="a fox")


class Handler:
    """A handler that finishes jobs in the store itself, after ``delay_s``."""

    def __init__(self, store: Store, delay_s: float = 0.0, steps: int = 0) -> None:
        self.store = store
        self.delay_s = delay_s
        self.steps = steps
        self.active = 0
        self.peak = 0

    async def __call__(self, job: JobContext) -> ImageResult:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.delay_s)
            for step in range(1, self.steps + 1):
                job.progress(Progress(step, self.steps))
                await asyncio.sleep(0.005)
            result = ImageResult(
                images=[GeneratedImage(png=tiny_png(), width=64, height=64, seed=1)],
                provider="p",
                model="m",
                attempts=[],
                elapsed_s=0.0,
                request=job.request,
            )
            return await self.store.finish_job(job.job_id, result)
        finally:
            self.active -= 1


async def _backplane(data: Path, **kwargs: object) -> tuple[Store, LocalBackplane]:
    store = Store(data)
    await store.open()
    return store, LocalBackplane(store, **kwargs)  # type: ignore[arg-type]


def test_submit_persists_the_job_with_its_position(tmp_path: Path) -> None:
    """A submitted job is in the store, queued, before submit returns; positions count up."""

    async def main() -> None:
        store, bp = await _backplane(tmp_path)
        first = await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        second = await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        job = await store.get_job(second.job_id)
        assert job is not None
        assert job.status == "queued"
        assert (first.position, second.position) == (1, 2)
        await store.close()

    asyncio.run(main())


def test_a_full_queue_refuses_with_retry_after(tmp_path: Path) -> None:
    """Past max_queue waiting jobs, submit raises QueueFull carrying a retry_after."""

    async def main() -> None:
        store, bp = await _backplane(tmp_path, max_queue=2)
        for _ in range(2):
            await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        with pytest.raises(QueueFull) as caught:
            await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        assert caught.value.retry_after >= 1
        await store.close()

    asyncio.run(main())


def test_jobs_run_and_wait_returns_the_result(tmp_path: Path) -> None:
    """A started backplane runs queued jobs; wait() hands back the stored result."""

    async def main() -> None:
        store, bp = await _backplane(tmp_path)
        await bp.start(Handler(store))
        submitted = await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        outcome = await asyncio.wait_for(bp.jobs.wait(submitted.job_id), 5)
        assert outcome.status == "succeeded", repr(outcome.error)
        assert outcome.result is not None
        assert outcome.result.images[0].id
        await bp.stop()
        await store.close()

    asyncio.run(main())


def test_concurrency_per_queue_is_enforced(tmp_path: Path) -> None:
    """A queue whose provider allows 2 never runs more than 2 jobs at once."""

    async def main() -> None:
        store, bp = await _backplane(tmp_path, concurrency={"p": 2})
        handler = Handler(store, delay_s=0.05)
        await bp.start(handler)
        ids = [
            (await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")).job_id
            for _ in range(5)
        ]
        await asyncio.wait_for(asyncio.gather(*(bp.jobs.wait(i) for i in ids)), 5)
        assert handler.peak == 2
        await bp.stop()
        await store.close()

    asyncio.run(main())


def test_cancel_of_a_queued_job_ends_it_at_once(tmp_path: Path) -> None:
    """Cancelling a job that has not started marks it cancelled without running it."""

    async def main() -> None:
        store, bp = await _backplane(tmp_path)
        submitted = await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        job = await bp.jobs.cancel(submitted.job_id)
        assert job is not None
        assert job.status == "cancelled"
        assert bp.jobs.depth() == 0
        await store.close()

    asyncio.run(main())


def test_restart_resumes_queued_and_retries_running_once(tmp_path: Path) -> None:
    """On start, queued jobs run; a running job runs again once, then fails as interrupted."""

    async def main() -> None:
        store, bp = await _backplane(tmp_path)
        queued = await store.create_job(REQUEST, route=["p"], source="jobs", status="queued")
        running = await store.create_job(REQUEST, route=["p"], source="jobs", status="running")
        retried = await store.create_job(REQUEST, route=["p"], source="jobs", status="running")
        async with store.engine.begin() as conn:
            from sqlalchemy import text

            await conn.execute(text("UPDATE jobs SET retries = 1 WHERE id = :id"), {"id": retried})
        await bp.start(Handler(store))
        for job_id in (queued, running):
            assert (await asyncio.wait_for(bp.jobs.wait(job_id), 5)).status == "succeeded"
        gave_up = await store.get_job(retried)
        assert gave_up is not None
        assert gave_up.status == "failed"
        assert gave_up.error is not None
        assert "interrupted by restart" in gave_up.error["message"]
        await bp.stop()
        await store.close()

    asyncio.run(main())


def test_subscribe_replays_stored_events_then_follows_live_ones(tmp_path: Path) -> None:
    """A subscriber gets the events after its last id in order, progress included, to the end."""

    async def main() -> None:
        store, bp = await _backplane(tmp_path)
        await bp.start(Handler(store, steps=3))
        submitted = await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        kinds = []
        async with asyncio.timeout(5):
            async for event in bp.events.subscribe(submitted.job_id):
                kinds.append(event.kind)
        assert kinds[:2] == ["queued", "started"]
        assert kinds[-1] == "succeeded"
        assert "progress" in kinds
        first_two = await store.events_after(submitted.job_id)
        replayed = [e.kind async for e in bp.events.subscribe(submitted.job_id, first_two[1].id)]
        assert replayed == kinds[2:]
        await bp.stop()
        await store.close()

    asyncio.run(main())


class RecordingHandler(Handler):
    """A handler that records the job's end through the backplane's recorder, as the server's."""

    async def __call__(self, job: JobContext) -> ImageResult:
        assert job.recorder is not None
        result = ImageResult(
            images=[GeneratedImage(png=tiny_png(), width=64, height=64, seed=1)],
            provider="p",
            model="m",
            attempts=[],
            elapsed_s=0.0,
            request=job.request,
        )
        return await job.recorder.finish_job(job.job_id, result)


def test_run_starts_a_job_at_once_when_a_slot_is_free(tmp_path: Path) -> None:
    """run() persists the job with queued and started, runs it, and logs one terminal event."""

    async def main() -> None:
        store, bp = await _backplane(tmp_path)
        await bp.start(RecordingHandler(store))
        outcome = await asyncio.wait_for(
            bp.jobs.run(REQUEST, route=["p"], source="openai", queue="p"), 5
        )
        assert outcome.status == "succeeded"
        assert outcome.result is not None
        events = await store.events_after(outcome.job_id)
        assert [e.kind for e in events] == ["queued", "started", "succeeded"]
        assert events[-1].data["images"] == [outcome.result.images[0].id]
        job = await store.get_job(outcome.job_id)
        assert job is not None
        assert job.status == "succeeded"
        await bp.stop()
        await store.close()

    asyncio.run(main())


def test_run_waits_its_turn_when_the_queue_is_busy(tmp_path: Path) -> None:
    """With the one slot taken, run() queues the job and it starts only after the first."""

    async def main() -> None:
        store, bp = await _backplane(tmp_path)
        handler = Handler(store, delay_s=0.05)
        await bp.start(handler)
        first = await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        outcome = await asyncio.wait_for(
            bp.jobs.run(REQUEST, route=["p"], source="openai", queue="p"), 5
        )
        assert outcome.status == "succeeded"
        assert handler.peak == 1
        assert (await bp.jobs.wait(first.job_id)).status == "succeeded"
        await bp.stop()
        await store.close()

    asyncio.run(main())
