"""Scale-out end to end: two `serve` replicas, two `worker`s, one PostgreSQL, kill -9 a worker.

The provider is the real ``openai`` one pointed at the loopback OpenAI fake, which counts the
calls it gets per prompt: an unpaid provider for most jobs, a paid one for every fifth.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from faults import serve_app
from serverkit import free_port, stopped_at_exit, wait_until_up
from test_backplane import _database
from vendor_openai import OpenAIFake

JOBS = 50
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a fresh PostgreSQL database."""
    yield from _database()


def _start(args: list[str], config: Path, data_dir: Path | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OPENAI_API_KEY": "sk-test"}
    if data_dir is not None:
        env["IMAGEGATE_DATA_DIR"] = str(data_dir)
    return subprocess.Popen(
        [sys.executable, "-m", "imagegate", *args, "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


@contextmanager
def _process(
    args: list[str], config: Path, data_dir: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with stopped_at_exit(_start(args, config, data_dir)) as proc:
        yield proc


def _ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    wait_until_up(f"{base}/readyz", proc, "the server was not ready within 30 s", every_s=0.1)


def test_two_replicas_two_workers_lose_nothing_when_a_worker_is_killed(
    pg_url: str, tmp_path: Path
) -> None:
    """50 jobs through 2 replicas; a worker killed halfway: every job ends, none runs twice.

    Unpaid jobs succeed (a job cut short is run once more); a paid job that was running
    when its worker died ends failed as interrupted, and the fake saw it at most once.
    """
    fake = OpenAIFake(delay_s=0.15)
    with ExitStack() as stack:
        url = stack.enter_context(serve_app(fake.app()))
        config = tmp_path / "imagegate.toml"
        config.write_text(
            '[gateway]\nroute = ["free"]\n\n'
            f'[providers.free]\ntype = "openai"\nurl = "{url}/v1"\npaid = false\n\n'
            f'[providers.paid]\ntype = "openai"\nurl = "{url}/v1"\npaid = true\n\n'
            f'[scale]\nbackplane = "{pg_url}"\nheartbeat_s = 0.5\nstalled_s = 2.0\n'
            "sweep_s = 0.5\nremote_concurrency = 3\n"
        )
        ports = [free_port(), free_port()]
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        servers = [
            stack.enter_context(_process(["serve", "--port", str(port)], config)) for port in ports
        ]
        for base, server in zip(bases, servers, strict=True):
            _ready(base, server)
        doomed = stack.enter_context(_process(["worker", "--queue", "remote"], config))

        paid = {f"job {i}" for i in range(JOBS) if i % 5 == 0}
        ids: dict[str, str] = {}
        for i in range(JOBS):
            prompt = f"job {i}"
            body: dict[str, object] = {"prompt": prompt}
            if prompt in paid:
                body["provider"] = "paid"
            answer = httpx.post(f"{bases[i % 2]}/v1/jobs", json=body, timeout=10)
            assert answer.status_code == 202, answer.text
            ids[prompt] = answer.json()["id"]

        # the doomed worker runs alone until a quarter is done and calls are in flight, so it
        # surely dies mid-job; the second worker starts then, takes the rest and sweeps
        deadline = time.monotonic() + 30
        while len(fake.bodies) < JOBS // 4 or fake.in_flight < 1:
            assert time.monotonic() < deadline, (len(fake.bodies), fake.in_flight)
            time.sleep(0.005)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
        stack.enter_context(_process(["worker", "--queue", "remote"], config))

        deadline = time.monotonic() + 45
        while True:
            jobs = {
                prompt: httpx.get(f"{bases[n % 2]}/v1/jobs/{job_id}", timeout=5).json()
                for n, (prompt, job_id) in enumerate(ids.items())
            }
            if all(job["status"] in TERMINAL for job in jobs.values()):
                break
            assert time.monotonic() < deadline, Counter(j["status"] for j in jobs.values())
            time.sleep(0.2)
        # any replica streams any job's events, and replays after Last-Event-ID
        first = ids["job 1"]  # submitted to replica 1, streamed from replica 0
        stream = httpx.get(f"{bases[0]}/v1/jobs/{first}/events", timeout=10).text
        assert "event: started" in stream
        assert "event: succeeded" in stream
        ids_seen = [int(line[4:]) for line in stream.splitlines() if line.startswith("id: ")]
        replay = httpx.get(
            f"{bases[0]}/v1/jobs/{first}/events",
            headers={"last-event-id": str(ids_seen[0])},
            timeout=10,
        ).text
        assert [int(x[4:]) for x in replay.splitlines() if x.startswith("id: ")] == ids_seen[1:]

    calls = Counter(str(body["prompt"]) for body in fake.bodies)
    for prompt, job in jobs.items():
        if job["status"] == "succeeded":
            assert 1 <= calls[prompt] <= 1 + job["retries"], (prompt, calls[prompt], job)
        else:
            assert prompt in paid, (prompt, job["status"], job["error"])
            assert job["status"] == "failed"
            assert "interrupted" in job["error"]["message"]
        if prompt in paid:
            assert calls[prompt] <= 1, (prompt, calls[prompt])
    assert sum(job["status"] == "succeeded" for job in jobs.values()) >= JOBS - len(paid)
    hit = [p for p, job in jobs.items() if job["retries"] or job["status"] == "failed"]
    assert hit, "the killed worker had no job in flight"


def test_postgresql_storage_serves_every_image_from_every_replica_without_a_shared_disk(
    pg_url: str, tmp_path: Path
) -> None:
    """storage = "postgresql": two replicas and a worker, each with its own empty data dir;
    every image a job made is served, byte for byte, by both replicas, and no PNG file is
    written to any data dir."""
    fake = OpenAIFake()
    with ExitStack() as stack:
        url = stack.enter_context(serve_app(fake.app()))
        config = tmp_path / "imagegate.toml"
        config.write_text(
            '[gateway]\nroute = ["free"]\n\n'
            f'[providers.free]\ntype = "openai"\nurl = "{url}/v1"\npaid = false\n\n'
            f'[scale]\nbackplane = "{pg_url}"\n\n[storage]\nbackend = "postgresql"\n'
        )
        dirs = [tmp_path / name for name in ("replica-0", "replica-1", "worker")]
        ports = [free_port(), free_port()]
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        servers = [
            stack.enter_context(_process(["serve", "--port", str(port)], config, data))
            for port, data in zip(ports, dirs, strict=False)
        ]
        for base, server in zip(bases, servers, strict=True):
            _ready(base, server)
        stack.enter_context(_process(["worker", "--queue", "remote"], config, dirs[2]))
        ids = []
        for i in range(6):
            answer = httpx.post(f"{bases[i % 2]}/v1/jobs", json={"prompt": f"p{i}"}, timeout=10)
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["id"])
        deadline = time.monotonic() + 30
        while True:
            jobs = [httpx.get(f"{bases[0]}/v1/jobs/{i}", timeout=5).json() for i in ids]
            if all(job["status"] in TERMINAL for job in jobs):
                break
            assert time.monotonic() < deadline, Counter(job["status"] for job in jobs)
            time.sleep(0.1)
        assert [job["status"] for job in jobs] == ["succeeded"] * len(ids), jobs
        images = [image["id"] for job in jobs for image in job["images"]]
        assert len(images) == len(ids)
        for image_id in images:
            got = [httpx.get(f"{base}/v1/images/{image_id}", timeout=5) for base in bases]
            assert [r.status_code for r in got] == [200, 200]
            assert got[0].content == got[1].content
            assert got[0].content.startswith(b"\x89PNG")
    assert not [p for data in dirs for p in data.rglob("*.png")]
