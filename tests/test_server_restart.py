"""Crash safety: kill -9 or SIGTERM the server mid-run, restart on the same data: lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from serverkit import free_port, stopped_at_exit, wait_until_up

SCRIPT = Path(__file__).parent / "slow_serve.py"
TERMINAL = {"succeeded", "failed", "cancelled"}


@contextmanager
def serve(config: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """`imagegate serve` (slow provider) in a subprocess, ready when /healthz answers."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "serve", "--port", str(port), "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with stopped_at_exit(proc):
        late = "the server did not start within 30 s"
        wait_until_up(f"http://127.0.0.1:{port}/healthz", proc, late, every_s=0.05)
        yield proc


def test_kill_9_mid_run_then_restart_finishes_every_job(isolated_env: Path) -> None:
    """Jobs queued or running at a kill -9 all end after a restart: none lost, none stuck."""
    jobs = _stop_mid_run_then_restart(isolated_env, signal.SIGKILL)
    assert [job["status"] for job in jobs] == ["succeeded"] * 4
    assert jobs[0]["retries"] == 1


def test_sigterm_mid_run_requeues_the_running_job_without_a_retry(isolated_env: Path) -> None:
    """SIGTERM ends the server at once; after a restart every job succeeds, none as a retry."""
    jobs = _stop_mid_run_then_restart(isolated_env, signal.SIGTERM)
    assert [job["status"] for job in jobs] == ["succeeded"] * 4
    assert [job["retries"] for job in jobs] == [0] * 4


def _stop_mid_run_then_restart(data: Path, sig: signal.Signals) -> list[dict[str, Any]]:
    """Queue 4 jobs, send ``sig`` once the first makes progress, restart; the jobs at the end."""
    config = data / "imagegate.toml"
    config.write_text('[gateway]\nroute = ["slow"]\n\n[providers.slow]\ntype = "diffusers"\n')
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with serve(config, port) as first:
        ids = [
            httpx.post(f"{base}/v1/jobs", json={"prompt": f"job {i}"}).json()["id"]
            for i in range(4)
        ]
        deadline = time.monotonic() + 10
        while httpx.get(f"{base}/v1/jobs/{ids[0]}").json()["progress"] == 0:
            assert time.monotonic() < deadline, "the first job never made progress"
            time.sleep(0.02)
        os.kill(first.pid, sig)
        first.wait(10)  # a SIGTERM'd server that hangs fails here
    with serve(config, port):
        deadline = time.monotonic() + 20
        while True:
            jobs = [httpx.get(f"{base}/v1/jobs/{job_id}").json() for job_id in ids]
            if all(job["status"] in TERMINAL for job in jobs) or time.monotonic() > deadline:
                return jobs
            time.sleep(0.1)
