"""Webhooks survive kill -9: an event not yet delivered when its process dies is delivered
after a restart, on the local backplane and on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from serverkit import free_port, stopped_at_exit, wait_until_up
from standardwebhooks import Webhook
from test_backplane import _database
from webhookkit import SECRET, receiver

SCRIPT = Path(__file__).parent / "slow_serve.py"
WEBHOOKS = (
    "[webhooks]\nallow_private = true\npoll_s = 0.1\nbackoff_s = 0.1\nmax_backoff_s = 0.3\n"
    "timeout_s = 2\n"
)


@contextmanager
def process(args: list[str], config: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`imagegate ARGS` (slow provider) in a subprocess."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args, "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "IMAGEGATE_WEBHOOK_SECRET": SECRET},
    )
    with stopped_at_exit(proc):
        yield proc


@pytest.fixture(params=["local", "postgresql"])
def backplane(request: pytest.FixtureRequest) -> Iterator[str]:
    """The ``[scale]`` table of each backplane ("" = local)."""
    if request.param == "local":
        yield ""
        return
    for url in _database():
        yield f'[scale]\nbackplane = "{url}"\nheartbeat_s = 0.5\nstalled_s = 2.0\n'


def test_an_undelivered_event_is_delivered_after_kill_9_and_a_restart(
    isolated_env: Path, backplane: str
) -> None:
    """The receiver fails until every process is killed -9; after a restart it gets the event."""
    config = isolated_env / "imagegate.toml"
    config.write_text(
        '[gateway]\nroute = ["slow"]\n\n[providers.slow]\ntype = "diffusers"\n\n'
        + WEBHOOKS
        + backplane
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = ["serve", "--port", str(port)]
    with receiver() as hook:
        hook.then = 500
        with ExitStack() as stack:
            first = [stack.enter_context(process(serve, config))]
            wait_until_up(f"{base}/readyz", first[0], "not up in 30 s", every_s=0.05)
            if backplane:
                first.append(stack.enter_context(process(["worker", "--queue", "slow"], config)))
            body = {"prompt": "a lighthouse", "webhook_url": hook.url}
            job_id = httpx.post(f"{base}/v1/jobs", json=body, timeout=10).json()["id"]
            hook.wait_posts(1, within_s=20)
            for proc in first:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        failed = len(hook.posts)
        hook.then = 200
        with process(serve, config) as second:
            wait_until_up(f"{base}/readyz", second, "not up in 30 s", every_s=0.05)
            post = hook.delivered(within_s=20)
            deadline = time.monotonic() + 10
            while (job := httpx.get(f"{base}/v1/jobs/{job_id}").json())["webhook"][
                "status"
            ] != "delivered":
                assert time.monotonic() < deadline, job
                time.sleep(0.05)
    assert Webhook(SECRET).verify(post.body, post.headers)["data"]["id"] == job_id
    assert failed >= 1  # the first process was killed holding an undelivered event
    assert job["webhook"]["attempts"][-1]["status"] == 200
