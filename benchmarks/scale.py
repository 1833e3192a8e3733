"""Backplane throughput and submit-to-start latency: LocalBackplane vs PostgresBackplane.

Prints ONE JSON document. For each backplane and 1, 2 and 4 workers: ``jobs_per_s`` (a burst
of ``--jobs`` jobs submitted at once, from the first submit to the last job's end) and
``start_ms`` (submit-to-start latency p50/p95 of ``--probes`` jobs submitted one at a time on
an idle queue, from the job's ``created_at`` to its ``started_at``). The provider is a fast
fake: the handler records a tiny PNG at once, so the numbers are the backplane's cost (rows,
events, queue claims, NOTIFY), not a model's. ``submits_per_s`` is the burst's submit rate
(one submitter, sharing this process with the workers); for PostgreSQL, ``drain_jobs_per_s``
is how fast N workers empty a queue of ``--jobs`` jobs already waiting (what the workers and
the database take, without the submitter in the way).

The local backplane runs N slots in this process. The PostgreSQL one runs N workers of the
same queue (concurrency 1 each, as GPU workers run), in this process, against the database
at ``--pg`` (default ``postgresql://postgres@127.0.0.1:5432``; a scratch database is created
and dropped). Without psycopg/procrastinate or a database, PostgreSQL is skipped with a note.

``storage`` compares where the image bytes live, ``file`` (the data dir) against
``postgresql`` (``[storage] backend = "postgresql"``: chunks in the same database), on the
PostgreSQL backplane with 2 workers, for a 64 KB and a 1.5 MB PNG (random pixels, so they do
not compress): ``jobs_per_s`` of a burst of ``--storage-jobs`` jobs (each stores its image),
and ``fetch_ms`` p50/p95 of reading ``--fetches`` stored images whole the way the server
streams them (``ImageStore.chunks``), from a store opened as another replica would.

    python benchmarks/scale.py [--jobs 200] [--probes 20] [--storage-jobs 60] [--fetches 60]
        [--pg URL]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from imagegate.backplane import Backplane, JobContext, LocalBackplane
from imagegate.config import StorageSettings
from imagegate.jobend import Succeeded
from imagegate.request import GeneratedImage, ImageRequest, ImageResult
from imagegate.store import Store

WORKERS = (1, 2, 4)
REQUEST = ImageRequest(prompt="benchmark")


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


def _handler_for(png: bytes) -> Any:
    """The fast fake provider: one ``png`` image, recorded through the backplane."""

    async def handler(job: JobContext) -> ImageResult:
        assert job.recorder is not None
        result = ImageResult(
            images=[GeneratedImage(png=png, width=64, height=64, seed=1)],
            provider="fake",
            model="fake",
            attempts=[],
            elapsed_s=0.0,
            request=job.request,
        )
        return (await job.recorder.end(job.job_id, Succeeded(result))).result

    return handler


_handler = _handler_for(PNG)


async def _measure(store: Store, submit: Backplane, jobs: int, probes: int) -> dict[str, Any]:
    latencies = []
    for _ in range(probes):
        sent = await submit.jobs.submit(REQUEST, route=["fake"], source="jobs", queue="fake")
        await submit.jobs.wait(sent.job_id)
        job = await store.get_job(sent.job_id)
        assert job is not None
        assert job.started_at is not None
        latencies.append((job.started_at - job.created_at).total_seconds() * 1000)
    started = time.perf_counter()
    ids = [
        (await submit.jobs.submit(REQUEST, route=["fake"], source="jobs", queue="fake")).job_id
        for _ in range(jobs)
    ]
    submitted = time.perf_counter() - started
    outcomes = await asyncio.gather(*(submit.jobs.wait(job_id) for job_id in ids))
    elapsed = time.perf_counter() - started
    assert all(o.status == "succeeded" for o in outcomes)
    latencies.sort()
    return {
        "jobs_per_s": round(jobs / elapsed, 1),
        "submits_per_s": round(jobs / submitted, 1),
        "start_ms": {
            "p50": round(statistics.median(latencies), 2),
            "p95": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
        },
    }


async def _local(workers: int, jobs: int, probes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp))
        await store.open()
        backplane = LocalBackplane(store, max_queue=jobs + 10, concurrency={"fake": workers})
        await backplane.start(_handler)
        try:
            return await _measure(store, backplane, jobs, probes)
        finally:
            await backplane.stop()
            await store.close()


async def _postgres(server: str, workers: int, jobs: int, probes: int) -> dict[str, Any]:
    import psycopg

    from imagegate.backplane.postgres import PostgresBackplane, sqlalchemy_url

    name = f"imagegate_bench_{uuid.uuid4().hex[:10]}"
    async with await psycopg.AsyncConnection.connect(f"{server}/postgres", autocommit=True) as a:
        await a.execute(f"CREATE DATABASE {name}")
        url = f"{server}/{name}"
        try:
            with tempfile.TemporaryDirectory() as tmp:
                stores = [Store(Path(tmp), url=sqlalchemy_url(url)) for _ in range(workers + 1)]
                submitter = PostgresBackplane(stores[0], url, max_queue=jobs + 10)
                fleet = [
                    PostgresBackplane(store, url, worker_queues=["fake"], worker_name=f"w{i}")
                    for i, store in enumerate(stores[1:])
                ]
                await submitter.start(_handler)
                ids = [
                    (
                        await submitter.jobs.submit(
                            REQUEST, route=["fake"], source="jobs", queue="fake"
                        )
                    ).job_id
                    for _ in range(jobs)
                ]
                started = time.perf_counter()
                for worker in fleet:
                    await worker.start(_handler)
                try:
                    await asyncio.gather(*(submitter.jobs.wait(job_id) for job_id in ids))
                    drain = round(jobs / (time.perf_counter() - started), 1)
                    return await _measure(stores[0], submitter, jobs, probes) | {
                        "drain_jobs_per_s": drain
                    }
                finally:
                    for backplane in (submitter, *fleet):
                        await backplane.stop()
                    for store in stores:
                        await store.close()
        finally:
            await a.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _noise_png(approx_bytes: int) -> bytes:
    """A PNG of random pixels of about ``approx_bytes``."""
    side = int((approx_bytes / 3) ** 0.5)
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), random.randbytes(side * side * 3)).save(buf, "PNG")
    return buf.getvalue()


async def _storage(
    server: str, backend: str, png: bytes, jobs: int, fetches: int
) -> dict[str, Any]:
    import psycopg

    from imagegate.backplane.postgres import PostgresBackplane, sqlalchemy_url

    storage = StorageSettings.model_validate({"backend": backend})
    name = f"imagegate_bench_{uuid.uuid4().hex[:10]}"
    handler = _handler_for(png)
    async with await psycopg.AsyncConnection.connect(f"{server}/postgres", autocommit=True) as a:
        await a.execute(f"CREATE DATABASE {name}")
        url = f"{server}/{name}"
        try:
            with tempfile.TemporaryDirectory() as tmp:
                stores = [
                    Store(Path(tmp), url=sqlalchemy_url(url), storage=storage) for _ in range(4)
                ]
                submitter = PostgresBackplane(stores[0], url, max_queue=jobs + 10)
                fleet = [
                    PostgresBackplane(store, url, worker_queues=["fake"], worker_name=f"w{i}")
                    for i, store in enumerate(stores[1:3])
                ]
                await submitter.start(handler)
                for worker in fleet:
                    await worker.start(handler)
                try:
                    started = time.perf_counter()
                    ids = [
                        (
                            await submitter.jobs.submit(
                                REQUEST, route=["fake"], source="jobs", queue="fake"
                            )
                        ).job_id
                        for _ in range(jobs)
                    ]
                    await asyncio.gather(*(submitter.jobs.wait(job_id) for job_id in ids))
                    elapsed = time.perf_counter() - started
                    reader = stores[3]
                    await reader.open()
                    images = await reader.list_images(limit=fetches)
                    took = []
                    for image in images:
                        begun = time.perf_counter()
                        size = sum([len(c) async for c in reader.images.chunks(image.sha256)])
                        took.append((time.perf_counter() - begun) * 1000)
                        assert size > 0
                    took.sort()
                    return {
                        "jobs_per_s": round(jobs / elapsed, 1),
                        "fetch_ms": {
                            "p50": round(statistics.median(took), 2),
                            "p95": round(took[int(0.95 * (len(took) - 1))], 2),
                        },
                    }
                finally:
                    for backplane in (submitter, *fleet):
                        await backplane.stop()
                    for store in stores:
                        await store.close()
        finally:
            await a.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "benchmark": "scale",
        "jobs": args.jobs,
        "probes": args.probes,
        "provider": "in-process fake, 0 ms, one 64x64 PNG",
        "local": {},
        "postgres": {},
    }
    for workers in WORKERS:
        report["local"][str(workers)] = await _local(workers, args.jobs, args.probes)
    try:
        for workers in WORKERS:
            report["postgres"][str(workers)] = await _postgres(
                args.pg, workers, args.jobs, args.probes
            )
    except (ImportError, OSError) as exc:
        report["postgres"] = {"skipped": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # psycopg.OperationalError and kin: no database to use
        report["postgres"] = {"skipped": f"{type(exc).__name__}: {exc}"}
    report["storage"] = {"workers": 2, "jobs": args.storage_jobs, "fetches": args.fetches}
    try:
        for label, size in (("64KB", 64 * 1024), ("1.5MB", 1_500_000)):
            png = _noise_png(size)
            report["storage"][label] = {"png_bytes": len(png)}
            for backend in ("file", "postgresql"):
                report["storage"][label][backend] = await _storage(
                    args.pg, backend, png, args.storage_jobs, args.fetches
                )
    except (ImportError, OSError) as exc:
        report["storage"]["skipped"] = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # no database to use
        report["storage"]["skipped"] = f"{type(exc).__name__}: {exc}"
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--storage-jobs", type=int, default=60)
    parser.add_argument("--fetches", type=int, default=60)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
