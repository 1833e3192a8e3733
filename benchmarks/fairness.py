"""Fair queueing: key A queues 100 jobs, then key B queues 5; one worker slot, 50 ms a job.

Prints ONE JSON document. For each backplane (local SQLite, and PostgreSQL at
``postgresql://postgres@127.0.0.1:5432`` in a database made for the run and dropped after) it
runs the scenario twice: ``fair`` with the jobs owned by keys a and b (the default behaviour
with managed keys), and ``fifo``, the same jobs with no owner (one key: plain arrival order),
the baseline in the same run. Reported: the wait (queued to started) of B's jobs and of A's.

    python benchmarks/fairness.py [--jobs-a 100] [--jobs-b 5] [--job-ms 50] [--no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from imagegate.backplane import Backplane, JobContext, LocalBackplane
from imagegate.jobend import Succeeded
from imagegate.request import GeneratedImage, ImageRequest, ImageResult
from imagegate.store import Store

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


class Handler:
    """A fake provider: ``job_s`` per job, one image."""

    def __init__(self, store: Store, job_s: float) -> None:
        self.store = store
        self.job_s = job_s
        self.png = _png()

    async def __call__(self, job: JobContext) -> ImageResult:
        await asyncio.sleep(self.job_s)
        result = ImageResult(
            images=[GeneratedImage(png=self.png, width=64, height=64, seed=1)],
            provider="p",
            model="m",
            attempts=[],
            elapsed_s=self.job_s,
            request=job.request,
        )
        return (await self.store.end(job.job_id, Succeeded(result))).result


@contextmanager
def _database() -> Iterator[str]:
    import psycopg

    name = f"imagegate_fair_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True, connect_timeout=3) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield f"{PG_SERVER}/{name}"
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def _backplane(kind: str, data: Path, pg_url: str | None) -> tuple[Store, Backplane]:
    if kind == "local":
        store = Store(data)
        await store.open()
        return store, LocalBackplane(store, max_queue=10_000, concurrency={"p": 1})
    from imagegate.backplane.postgres import PostgresBackplane, sqlalchemy_url

    assert pg_url is not None
    store = Store(data, url=sqlalchemy_url(pg_url))
    bp = PostgresBackplane(store, pg_url, worker_queues=["p"], max_queue=10_000)
    await bp.open()
    return store, bp


async def scenario(
    kind: str, fair: bool, data: Path, pg_url: str | None, jobs_a: int, jobs_b: int, job_s: float
) -> dict[str, Any]:
    store, bp = await _backplane(kind, data, pg_url)
    await bp.start(Handler(store, job_s))
    ids: dict[str, list[str]] = {"a": [], "b": []}
    try:
        for owner, count in (("a", jobs_a), ("b", jobs_b)):
            for i in range(count):
                submitted = await bp.jobs.submit(
                    ImageRequest(prompt=f"{owner}{i}"),
                    route=["p"],
                    source="jobs",
                    queue="p",
                    owner=owner if fair else None,
                )
                ids[owner].append(submitted.job_id)
        await asyncio.gather(*(bp.jobs.wait(i) for i in ids["a"] + ids["b"]))
        waits: dict[str, list[float]] = {}
        for owner, job_ids in ids.items():
            for job_id in job_ids:
                job = await store.get_job(job_id)
                assert job is not None
                assert job.started_at is not None
                waits.setdefault(owner, []).append(
                    (job.started_at - job.created_at).total_seconds()
                )
    finally:
        await bp.stop()
        await store.close()

    def summary(values: list[float]) -> dict[str, float]:
        return {
            "median_s": round(statistics.median(values), 3),
            "max_s": round(max(values), 3),
            "mean_s": round(statistics.fmean(values), 3),
        }

    return {"a": summary(waits["a"]), "b": summary(waits["b"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs-a", type=int, default=100)
    parser.add_argument("--jobs-b", type=int, default=5)
    parser.add_argument("--job-ms", type=int, default=50)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    job_s = args.job_ms / 1000
    report: dict[str, Any] = {
        "benchmark": "fairness",
        "jobs_a": args.jobs_a,
        "jobs_b": args.jobs_b,
        "job_ms": args.job_ms,
        "worker_slots": 1,
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "backplanes": {},
    }
    kinds = ["local"] if args.no_postgres else ["local", "postgres"]
    with tempfile.TemporaryDirectory(prefix="imagegate-fair-") as tmp:
        for kind in kinds:
            results: dict[str, Any] = {}
            for mode in ("fifo", "fair"):
                data = Path(tmp) / f"{kind}-{mode}"
                if kind == "postgres":
                    with _database() as pg_url:
                        results[mode] = asyncio.run(
                            scenario(kind, mode == "fair", data, pg_url, args.jobs_a,
                                     args.jobs_b, job_s)
                        )  # fmt: skip
                else:
                    results[mode] = asyncio.run(
                        scenario(kind, mode == "fair", data, None, args.jobs_a, args.jobs_b, job_s)
                    )
            results["b_max_wait_in_jobs_fair"] = round(results["fair"]["b"]["max_s"] / job_s, 1)
            results["b_max_wait_in_jobs_fifo"] = round(results["fifo"]["b"]["max_s"] / job_s, 1)
            report["backplanes"][kind] = results
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
