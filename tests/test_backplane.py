"""The backplanes: the local one's own behaviour, then one contract run against each of
local and PostgreSQL (submit, cancel, queues, priority, rollback, SSE replay)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from serverkit import tiny_png

from imagegate.backplane import Backplane, JobContext, LocalBackplane, QueueFull
from imagegate.errors import Cancelled, StorageError
from imagegate.jobend import Failed, Succeeded
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
            return (await self.store.end(job.job_id, Succeeded(result))).result
        finally:
            self.active -= 1


async def _backplane(data: Path, **kwargs: object) -> tuple[Store, LocalBackplane]:
    store = Store(data)
    await store.open()
    return store, LocalBackplane(store, **kwargs)  # type: ignore[arg-type]


def test_submit_persists_the_job_with_its_position(make: Make) -> None:
    """A submitted job is in the store, queued, before submit returns; positions count up."""

    async def main() -> None:
        store, bp = await make()
        first = await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        second = await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        job = await store.get_job(second.job_id)
        assert job is not None
        assert job.status == "queued"
        assert (first.position, second.position) == (1, 2)
        await store.close()

    asyncio.run(main())


def test_a_full_queue_refuses_with_retry_after(make: Make) -> None:
    """Past max_queue waiting jobs, submit raises QueueFull carrying a retry_after."""

    async def main() -> None:
        store, bp = await make(max_queue=2)
        for _ in range(2):
            await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        with pytest.raises(QueueFull) as caught:
            await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        assert caught.value.retry_after >= 1
        await store.close()

    asyncio.run(main())


def test_jobs_run_and_wait_returns_the_result(make: Make) -> None:
    """A started backplane runs queued jobs; wait() hands back the stored result."""

    async def main() -> None:
        store, bp = await make()
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


def test_cancel_of_a_queued_job_ends_it_at_once(make: Make) -> None:
    """Cancelling a job that has not started marks it cancelled without running it."""

    async def main() -> None:
        store, bp = await make()
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


def test_subscribe_replays_stored_events_then_follows_live_ones(make: Make) -> None:
    """A subscriber gets the events after its last id in order, progress included, to the end."""

    async def main() -> None:
        store, bp = await make()
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
        return (await job.recorder.end(job.job_id, Succeeded(result))).result


def test_run_starts_a_job_at_once_when_a_slot_is_free(make: Make) -> None:
    """run() persists the job with queued and started, runs it, and logs one terminal event."""

    async def main() -> None:
        store, bp = await make()
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


# -- the contract: every backplane behaves the same ------------------------------------------


def _database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped after it."""
    import psycopg  # the `scale` extra; the README's test command installs it

    name = f"imagegate_t_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=3)
    except psycopg.OperationalError:
        pytest.fail("PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)")
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield f"{PG_SERVER}/{name}"
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


PG_SERVER = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database."""
    yield from _database()


@pytest.fixture(params=["local", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which backplane a contract test runs against."""
    return str(request.param)


@pytest.fixture
def make(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Make:
    """Build (store, backplane) of ``kind``; postgres ones work the given queues."""
    url = request.getfixturevalue("pg_url") if kind == "postgres" else None

    async def build(queues: Sequence[str] = ("p",), **kwargs: Any) -> tuple[Store, Backplane]:
        if url is None:
            store = Store(tmp_path)
            await store.open()
            return store, LocalBackplane(store, **kwargs)
        from imagegate.backplane.postgres import PostgresBackplane, sqlalchemy_url

        store = Store(tmp_path, url=sqlalchemy_url(url))
        backplane = PostgresBackplane(
            store,
            url,
            worker_queues=list(queues),
            heartbeat_s=0.5,
            stalled_s=2.0,
            sweep_s=0.5,
            paid=kwargs.get("paid", ()),
            max_queue=kwargs.get("max_queue", 100),
        )
        await backplane.open()
        return store, backplane

    return build


Make = Callable[..., Awaitable[tuple[Store, Backplane]]]


def test_contract_submit_and_complete(make: Make) -> None:
    """A submitted job is queued on disk, runs on a worker, and wait() hands back its images."""

    async def main() -> None:
        store, bp = await make()
        await bp.start(RecordingHandler(store))
        submitted = await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        outcome = await asyncio.wait_for(bp.jobs.wait(submitted.job_id), 10)
        assert outcome.status == "succeeded", repr(outcome.error)
        assert outcome.result is not None
        assert outcome.result.images[0].png
        events = await store.events_after(submitted.job_id)
        assert [e.kind for e in events] == ["queued", "started", "succeeded"]
        await bp.stop()
        await store.close()

    asyncio.run(main())


class Blocking(RecordingHandler):
    """A handler that reports a step every 20 ms for ``steps`` steps, then finishes."""

    def __init__(self, store: Store, steps: int = 500, only: str | None = None) -> None:
        super().__init__(store)
        self.steps = steps
        self.only = only
        self.started = asyncio.Event()
        self.cancelled_at: float | None = None

    async def __call__(self, job: JobContext) -> ImageResult:
        if self.only is not None and job.request.prompt != self.only:
            return await super().__call__(job)
        self.started.set()
        try:
            for step in range(1, self.steps + 1):
                await asyncio.sleep(0.02)
                job.progress(Progress(step, self.steps))
        except asyncio.CancelledError:
            self.cancelled_at = time.monotonic()
            assert job.recorder is not None
            await job.recorder.end(job.job_id, Failed(Cancelled("cancelled"), status="cancelled"))
            raise
        return await super().__call__(job)


async def _running_job(make: Make, **kwargs: Any) -> tuple[Store, Backplane, Blocking, str]:
    """A backplane running one long job on queue p: store, backplane, handler, job id."""
    store, bp = await make(**kwargs)
    handler = Blocking(store)
    await bp.start(handler)
    submitted = await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
    await asyncio.wait_for(handler.started.wait(), 10)
    return store, bp, handler, submitted.job_id


def test_contract_cancel_of_a_running_job_lands_within_a_second(make: Make) -> None:
    """Cancelling a running job reaches the handler and ends it cancelled within a second."""

    async def main() -> None:
        store, bp, handler, job_id = await _running_job(make)
        asked = time.monotonic()
        job = await asyncio.wait_for(bp.jobs.cancel(job_id), 5)
        assert job is not None
        assert job.status == "cancelled"
        assert handler.cancelled_at is not None
        assert handler.cancelled_at - asked < 1.0
        await bp.stop()
        await store.close()

    asyncio.run(main())


def test_contract_stop_puts_a_running_job_back_in_the_queue(make: Make) -> None:
    """Stopping the backplane mid-job leaves the job queued, with no terminal event."""

    async def main() -> None:
        store, bp, _, job_id = await _running_job(make)
        await asyncio.wait_for(bp.stop(), 10)
        job = await store.get_job(job_id)
        assert job is not None
        assert (job.status, job.retries, job.error) == ("queued", 0, None)
        kinds = [e.kind for e in await store.events_after(job_id)]
        assert not {"succeeded", "failed", "cancelled"} & set(kinds), kinds
        await store.close()

    asyncio.run(main())


def test_contract_stop_ends_a_running_paid_job_as_interrupted(make: Make) -> None:
    """A job on a paid route that a shutdown stops is not run again: it fails as interrupted."""

    async def main() -> None:
        store, bp, _, job_id = await _running_job(make, paid=["p"])
        await asyncio.wait_for(bp.stop(), 10)
        job = await store.get_job(job_id)
        assert job is not None
        assert job.status == "failed"
        assert job.error is not None
        assert "interrupted by a shutdown" in job.error["message"]
        kinds = [e.kind for e in await store.events_after(job_id)]
        assert kinds[-1] == "failed", kinds
        await store.close()

    asyncio.run(main())


def test_contract_a_queue_runs_while_another_is_busy(make: Make, kind: str) -> None:
    """A job on queue b finishes while queue a's only worker is busy with a long job."""

    async def main() -> None:
        store, bp = await make(queues=["a"])
        handler = Blocking(store, steps=100, only="busy")
        await bp.start(handler)
        extra: list[tuple[Store, Backplane]] = []
        if kind == "postgres":  # one worker per queue, as `imagegate worker --queue` runs
            extra.append(await make(queues=["b"]))
            await extra[0][1].start(handler)
        slow = ImageRequest(prompt="busy")
        busy = await bp.jobs.submit(slow, route=["a"], source="jobs", queue="a")
        await asyncio.wait_for(handler.started.wait(), 10)
        other = await bp.jobs.submit(REQUEST, route=["b"], source="jobs", queue="b")
        assert (await asyncio.wait_for(bp.jobs.wait(other.job_id), 10)).status == "succeeded"
        first = await store.get_job(busy.job_id)
        assert first is not None
        assert first.status == "running"
        for other_store, other_bp in extra:
            await other_bp.stop()
            await other_store.close()
        await bp.stop()
        await store.close()

    asyncio.run(main())


def test_contract_a_worker_takes_only_its_queue(pg_url: str, tmp_path: Path) -> None:
    """A PostgreSQL worker of queue b never runs a job of queue a (it stays queued)."""
    from imagegate.backplane.postgres import PostgresBackplane, sqlalchemy_url

    async def main() -> None:
        store = Store(tmp_path, url=sqlalchemy_url(pg_url))
        bp = PostgresBackplane(store, pg_url, worker_queues=["b"])
        await bp.start(RecordingHandler(store))
        for_a = await bp.jobs.submit(REQUEST, route=["a"], source="jobs", queue="a")
        for_b = await bp.jobs.submit(REQUEST, route=["b"], source="jobs", queue="b")
        assert (await asyncio.wait_for(bp.jobs.wait(for_b.job_id), 10)).status == "succeeded"
        await asyncio.sleep(0.3)
        job = await store.get_job(for_a.job_id)
        assert job is not None
        assert job.status == "queued"
        await bp.stop()
        await store.close()

    asyncio.run(main())


def test_contract_higher_priority_starts_first(make: Make) -> None:
    """With the worker busy, a later job of higher priority starts before an earlier low one."""

    async def main() -> None:
        store, bp = await make()
        order: list[str] = []
        gate = asyncio.Event()
        running = asyncio.Event()

        class Ordered(RecordingHandler):
            async def __call__(self, job: JobContext) -> ImageResult:
                order.append(job.request.prompt)
                running.set()
                await gate.wait()
                return await super().__call__(job)

        await bp.start(Ordered(store))
        first = await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        await asyncio.wait_for(running.wait(), 10)
        ids = [first.job_id]
        for prompt, priority in (("low", 0), ("high", 10)):
            request = ImageRequest(prompt=prompt)
            submitted = await bp.jobs.submit(
                request, route=["p"], source="jobs", queue="p", priority=priority
            )
            ids.append(submitted.job_id)
        gate.set()
        await asyncio.wait_for(asyncio.gather(*(bp.jobs.wait(i) for i in ids)), 10)
        assert order == ["a fox", "high", "low"]
        await bp.stop()
        await store.close()

    asyncio.run(main())


def test_contract_keys_take_turns_within_a_priority(make: Make) -> None:
    """Key a queues six jobs, then key b two: with one slot they start a, b, a, b, a, a, ..."""

    async def main() -> None:
        store, bp = await make()
        order: list[str] = []
        gate = asyncio.Event()
        running = asyncio.Event()

        class Ordered(RecordingHandler):
            async def __call__(self, job: JobContext) -> ImageResult:
                order.append(job.request.prompt)
                running.set()
                await gate.wait()
                return await super().__call__(job)

        await bp.start(Ordered(store))
        first = await bp.jobs.submit(
            ImageRequest(prompt="busy"), route=["p"], source="jobs", queue="p", owner="a"
        )
        await asyncio.wait_for(running.wait(), 10)
        ids = [first.job_id]
        for owner, count in (("a", 6), ("b", 2)):
            for i in range(1, count + 1):
                submitted = await bp.jobs.submit(
                    ImageRequest(prompt=f"{owner}{i}"),
                    route=["p"],
                    source="jobs",
                    queue="p",
                    owner=owner,
                )
                ids.append(submitted.job_id)
        gate.set()
        await asyncio.wait_for(asyncio.gather(*(bp.jobs.wait(i) for i in ids)), 20)
        assert order == ["busy", "a1", "b1", "a2", "b2", "a3", "a4", "a5", "a6"]
        await bp.stop()
        await store.close()

    asyncio.run(main())


def test_contract_a_rolled_back_submit_leaves_no_job(pg_url: str, tmp_path: Path) -> None:
    """When the transaction that enqueues fails, neither the history row nor the job exists."""
    from sqlalchemy import text

    from imagegate.backplane.postgres import PostgresBackplane, sqlalchemy_url

    async def main() -> None:
        store = Store(tmp_path, url=sqlalchemy_url(pg_url))
        bp = PostgresBackplane(store, pg_url, worker_queues=[])
        await bp.open()

        async def boom(session: Any, job_id: str) -> None:
            await bp.jobs._defer(session, job_id, "p", 0)
            raise RuntimeError("the transaction fails after the defer")

        with pytest.raises(RuntimeError):
            await store.open_job(REQUEST, route=["p"], source="jobs", status="queued", within=boom)
        async with store.engine.connect() as conn:
            jobs = await conn.scalar(text("SELECT count(*) FROM jobs"))
            queued = await conn.scalar(text("SELECT count(*) FROM procrastinate_jobs"))
        assert (jobs, queued) == (0, 0)
        await bp.stop()
        await store.close()

    asyncio.run(main())


def test_contract_sse_replay_after_reconnect(make: Make) -> None:
    """A subscriber that reconnects after event N gets every later event once, to the end."""

    async def main() -> None:
        store, bp = await make()
        await bp.start(Handler(store, steps=5))
        submitted = await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        seen = []
        async with asyncio.timeout(10):
            async for event in bp.events.subscribe(submitted.job_id):
                seen.append(event)
                if len(seen) == 2:
                    break  # the client drops after "started"
            resumed = [e async for e in bp.events.subscribe(submitted.job_id, seen[-1].id)]
        kinds = [e.kind for e in seen + resumed]
        assert kinds[:2] == ["queued", "started"]
        assert kinds[-1] == "succeeded"
        ids = [e.id for e in seen + resumed]
        assert ids == sorted(set(ids))
        await bp.stop()
        await store.close()

    asyncio.run(main())


SLOW_SCRIPT = Path(__file__).parent / "slow_serve.py"


def test_contract_kill_9_of_a_worker_mid_job_finishes_it_once(pg_url: str, tmp_path: Path) -> None:
    """A worker killed mid-job: the sweeper re-queues it and another worker ends it, once.

    (The local backplane's equivalent is restart recovery: the tests above and
    test_server_restart.py.)
    """
    from imagegate.backplane.postgres import PostgresBackplane, sqlalchemy_url

    config = tmp_path / "worker.toml"
    config.write_text(
        '[gateway]\nroute = ["slow"]\n\n[providers.slow]\ntype = "diffusers"\n\n'
        f'[scale]\nbackplane = "{pg_url}"\nheartbeat_s = 0.5\nstalled_s = 2.0\nsweep_s = 0.5\n'
    )
    worker = subprocess.Popen(
        [sys.executable, str(SLOW_SCRIPT), "worker", "--queue", "slow", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def main() -> None:
        store = Store(tmp_path / "data", url=sqlalchemy_url(pg_url))
        bp = PostgresBackplane(store, pg_url, worker_queues=[], sweep_s=0.5, stalled_s=2.0)
        await bp.open()
        submitted = await bp.jobs.submit(REQUEST, route=["slow"], source="jobs", queue="slow")
        async with asyncio.timeout(30):
            while True:
                job = await store.get_job(submitted.job_id)
                assert job is not None
                if job.progress > 0:
                    break
                assert worker.poll() is None, "the worker exited"
                await asyncio.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        await bp.stop()
        rescuer = PostgresBackplane(
            store, pg_url, worker_queues=["slow"], heartbeat_s=0.5, stalled_s=2.0, sweep_s=0.5
        )
        handler = Handler(store)
        await rescuer.start(handler)
        outcome = await asyncio.wait_for(rescuer.jobs.wait(submitted.job_id), 20)
        assert outcome.status == "succeeded"
        job = await store.get_job(submitted.job_id)
        assert job is not None
        assert job.retries == 1
        kinds = [e.kind for e in await store.events_after(submitted.job_id)]
        assert kinds.count("succeeded") == 1
        assert kinds.count("started") == 2
        await rescuer.stop()
        await store.close()

    try:
        asyncio.run(main())
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


class StoreFails(RecordingHandler):
    """A handler whose image store fails (StorageError) on its first ``failures`` calls: the
    end is recorded as the gateway records it, then the error is raised."""

    def __init__(self, store: Store, failures: int) -> None:
        super().__init__(store)
        self.failures = failures
        self.calls = 0

    async def __call__(self, job: JobContext) -> ImageResult:
        self.calls += 1
        if self.calls > self.failures:
            return await super().__call__(job)
        assert job.recorder is not None
        error = StorageError("s3 storage: the store did not answer in 0.5 s")
        await job.recorder.end(job.job_id, Failed(error))
        raise error


def test_contract_a_job_whose_store_fails_runs_again_once(make: Make) -> None:
    """An unpaid job whose images the store could not keep goes back to the queue and runs
    again; the caller waiting on run() gets the second run's images."""

    async def main() -> None:
        store, bp = await make()
        handler = StoreFails(store, failures=1)
        await bp.start(handler)
        outcome = await asyncio.wait_for(
            bp.jobs.run(REQUEST, route=["p"], source="openai", queue="p"), 20
        )
        assert outcome.status == "succeeded", repr(outcome.error)
        assert handler.calls == 2
        job = await store.get_job(outcome.job_id)
        assert job is not None
        assert (job.status, job.retries, len(job.images)) == ("succeeded", 1, 1)
        kinds = [e.kind for e in await store.events_after(outcome.job_id)]
        assert kinds == ["queued", "started", "queued", "started", "succeeded"], kinds
        await bp.stop()
        await store.close()

    asyncio.run(main())


def test_contract_a_store_that_keeps_failing_fails_the_job_after_one_retry(make: Make) -> None:
    """The second failed store ends the job failed with the StorageError and its reason."""

    async def main() -> None:
        store, bp = await make()
        handler = StoreFails(store, failures=5)
        await bp.start(handler)
        submitted = await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        outcome = await asyncio.wait_for(bp.jobs.wait(submitted.job_id), 20)
        assert outcome.status == "failed"
        assert isinstance(outcome.error, StorageError), repr(outcome.error)
        assert "did not answer" in outcome.error.message
        assert handler.calls == 2
        job = await store.get_job(submitted.job_id)
        assert job is not None
        assert job.error is not None
        assert (job.status, job.retries, job.error["type"]) == ("failed", 1, "StorageError")
        await bp.stop()
        await store.close()

    asyncio.run(main())


def test_contract_a_paid_job_whose_store_fails_is_not_run_again(make: Make) -> None:
    """A job on a paid route may have been billed: a failed store ends it failed at once."""

    async def main() -> None:
        store, bp = await make(paid=["p"])
        handler = StoreFails(store, failures=1)
        await bp.start(handler)
        submitted = await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        outcome = await asyncio.wait_for(bp.jobs.wait(submitted.job_id), 20)
        assert outcome.status == "failed"
        assert isinstance(outcome.error, StorageError), repr(outcome.error)
        assert handler.calls == 1
        await bp.stop()
        await store.close()

    asyncio.run(main())


class Crashing(Handler):
    """A handler with a bug: it raises a plain exception and records nothing."""

    async def __call__(self, job: JobContext) -> ImageResult:
        raise RuntimeError("a bug")


def test_contract_a_handler_that_crashes_ends_its_job_failed(make: Make) -> None:
    """A handler that raises without recording the end leaves no job running: the job ends
    failed with the error named, and its terminal event."""

    async def main() -> None:
        store, bp = await make()
        await bp.start(Crashing(store))
        submitted = await bp.jobs.submit(REQUEST, route=["p"], source="jobs", queue="p")
        outcome = await asyncio.wait_for(bp.jobs.wait(submitted.job_id), 20)
        assert outcome.status == "failed"
        job = await store.get_job(submitted.job_id)
        assert job is not None
        assert job.error is not None
        assert job.status == "failed"
        assert "RuntimeError: a bug" in job.error["message"]
        kinds = [e.kind for e in await store.events_after(submitted.job_id)]
        assert kinds == ["queued", "started", "failed"], kinds
        await bp.stop()
        await store.close()

    asyncio.run(main())
