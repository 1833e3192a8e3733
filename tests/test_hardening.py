"""`imagegate serve` bounds what a client can hold before auth: request heads are size-limited
and must arrive in time, silent connections cannot use up the connection cap, and a key's job
event streams are capped (issue 16 item 1). Against a live server on loopback, bounded."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serverkit import Fake, Live, fake_settings, free_port, live, stopped_at_exit, wait_until_up

from imagegate.deadline import Deadline
from imagegate.providers.base import ProgressCallback
from imagegate.request import GeneratedImage, ImageRequest

HEADER_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 8
MAX_HEADER_BYTES = 4096


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """`imagegate serve` with a 1 s header timeout, 8 connections and 4 KiB of headers at most."""
    home = tmp_path_factory.mktemp("hardening")
    config = home / "imagegate.toml"
    config.write_text(
        '[gateway]\nroute = ["sd"]\n\n[providers.sd]\ntype = "a1111"\nurl = "http://127.0.0.1:9"\n'
        f"\n[server]\nheader_timeout_s = {HEADER_TIMEOUT_S}\nmax_connections = {MAX_CONNECTIONS}"
        f"\nmax_header_bytes = {MAX_HEADER_BYTES}\n"
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "IMAGEGATE_API_KEYS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagegate", "serve", "--port", str(port), "--config", str(config)],
        cwd=home,
        env={**env, "IMAGEGATE_DATA_DIR": str(home / "data"), "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with stopped_at_exit(proc):
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/healthz", proc, "imagegate serve did not start", every_s=0.1)
        yield url, port


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (what it sends first is read)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_an_oversized_request_head_is_refused_before_auth(served: tuple[str, int]) -> None:
    """Headers past server.max_header_bytes get a 400 and the connection closes."""
    _, port = served
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 64 * 1024)
        sock.settimeout(5)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 400")


def test_a_silent_connection_is_closed_after_the_header_timeout(served: tuple[str, int]) -> None:
    """A connection that sends nothing is closed once server.header_timeout_s passes."""
    _, port = served
    with _connect(port) as sock:
        assert _closed_within(sock, HEADER_TIMEOUT_S + 3)


def test_a_slow_loris_head_is_closed_after_the_header_timeout(served: tuple[str, int]) -> None:
    """A request head trickled a few bytes at a time is cut off at the header timeout."""
    _, port = served
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        closed = False
        while time.monotonic() - started < HEADER_TIMEOUT_S + 3:
            try:
                sock.sendall(b"X-a: b\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.1)
        assert closed or _closed_within(sock, 0.5)


def test_silent_connections_past_the_cap_do_not_lock_out_a_prompt_client(
    served: tuple[str, int],
) -> None:
    """Three times server.max_connections silent connections: a normal request still succeeds."""
    url, port = served
    silent = [_connect(port) for _ in range(3 * MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        answer = httpx.get(f"{url}/healthz", timeout=5)
        assert answer.status_code == 200
    finally:
        for sock in silent:
            sock.close()


def test_keep_alive_reuse_still_works(served: tuple[str, int]) -> None:
    """A client reusing its connection for several requests is served each time."""
    url, _ = served
    with httpx.Client(timeout=5) as client:
        assert [client.get(f"{url}/healthz").status_code for _ in range(3)] == [200] * 3


@pytest.fixture
def one_stream() -> Iterator[Live]:
    """A server allowing one job event stream per key, with a provider that takes ~1 s."""
    settings = fake_settings(["slow"], max_event_streams=1)
    with live(settings, {"slow": Fake("slow", steps=20, step_s=0.05, concurrency=1)}) as s:
        yield s


def test_event_streams_past_the_cap_are_429_naming_the_key(one_stream: Live) -> None:
    """A second open event stream for the same caller is refused with 429 naming the setting."""
    url = one_stream.url
    job = httpx.post(f"{url}/v1/jobs", json={"prompt": "a fox"}).json()
    events = f"{url}/v1/jobs/{job['id']}/events"
    with httpx.stream("GET", events, timeout=10) as first:
        assert first.status_code == 200
        second = httpx.get(events, timeout=10)
        assert second.status_code == 429
        assert "server.max_event_streams" in second.json()["error"]["message"]
        for _ in first.iter_lines():
            pass
    again = httpx.get(events, timeout=10)
    assert again.status_code == 200


def test_connection_settings_default_to_bounded_values() -> None:
    """The defaults bound headers, the head timeout, connections and event streams."""
    from imagegate.config import ServerSettings

    server = ServerSettings()
    assert server.max_header_bytes == 64 * 1024
    assert server.header_timeout_s == 10
    assert server.max_connections == 512
    assert server.max_event_streams == 16


def test_the_connection_cap_leaves_half_the_file_descriptors_free() -> None:
    """server.max_connections is lowered to half of RLIMIT_NOFILE, so the cap bites first."""
    import resource

    from imagegate.config import ServerSettings
    from imagegate.server.connections import connection_cap

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = connection_cap(ServerSettings(max_connections=65536))
    assert cap == (65536 if soft == resource.RLIM_INFINITY else max(8, min(65536, soft // 2)))


@pytest.fixture
def quick() -> Iterator[Live]:
    """A server with one fake provider that answers at once."""
    with live(fake_settings(["quick"]), {"quick": Fake("quick")}) as s:
        yield s


def _one_image(server: Live) -> tuple[str, str]:
    made = httpx.post(f"{server.url}/v1/images/generations", json={"prompt": "a fox"}, timeout=10)
    assert made.status_code == 200
    image = httpx.get(f"{server.url}/v1/images", timeout=5).json()["data"][0]
    return image["id"], image["sha256"]


def test_a_stored_image_whose_bytes_changed_is_not_served(
    quick: Live, caplog: pytest.LogCaptureFixture
) -> None:
    """GET /v1/images/{id} checks the sha256: a corrupted file is a clear error, logged."""
    image_id, sha256 = _one_image(quick)
    assert httpx.get(f"{quick.url}/v1/images/{image_id}", timeout=5).status_code == 200
    store = quick.gateway.store
    assert store is not None
    path = store.images.local_path(sha256)
    assert path is not None
    path.write_bytes(path.read_bytes()[:-8] + b"corrupt!")
    answer = httpx.get(f"{quick.url}/v1/images/{image_id}", timeout=5)
    assert answer.status_code == 500
    assert answer.json()["error"]["code"] == "image_corrupted"
    assert answer.headers["content-type"].startswith("application/json")
    assert any("integrity check" in r.getMessage() for r in caplog.records)


def test_a_failed_result_write_ends_the_job_failed_with_the_reason(
    quick: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while the images are written: the job is failed saying so, not left running."""

    def disk_full(data_dir: Path, data: bytes) -> tuple[str, str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("imagegate.store.blobs.write_png", disk_full)
    answer = httpx.post(f"{quick.url}/v1/jobs", json={"prompt": "a fox"}, timeout=10)
    assert answer.status_code == 202
    job_id = answer.json()["id"]
    deadline = time.monotonic() + 10
    while (job := httpx.get(f"{quick.url}/v1/jobs/{job_id}", timeout=5).json())["status"] in (
        "queued",
        "running",
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job["status"] == "failed"
    assert "No space left on device" in json.dumps(job["error"])


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_deleted_or_replaced_database_makes_the_server_not_ready(quick: Live, how: str) -> None:
    """The SQLite file gone or swapped while serving: /readyz 503 with the reason, work refused."""
    assert httpx.get(f"{quick.url}/readyz", timeout=5).status_code == 200
    store = quick.gateway.store
    assert store is not None
    database = store.data_dir / "imagegate.db"
    database.rename(database.with_name("moved-aside.db"))
    if how == "replaced":
        database.write_bytes(b"")
    ready = httpx.get(f"{quick.url}/readyz", timeout=5)
    assert ready.status_code == 503
    assert how.split()[0] in ready.json()["reason"]
    submitted = httpx.post(f"{quick.url}/v1/jobs", json={"prompt": "a fox"}, timeout=5)
    assert submitted.status_code == 503
    assert str(database) in submitted.json()["error"]["message"]
    made = httpx.post(f"{quick.url}/v1/images/generations", json={"prompt": "a fox"}, timeout=5)
    assert made.status_code == 503


def test_a_cli_job_whose_process_died_is_ended_as_interrupted_by_the_next_process(
    tmp_path: Path,
) -> None:
    """An in-process job marked with a pid that is gone is failed (interrupted) at the next
    opening of the store; one whose process lives is left running."""
    import asyncio
    import socket as sockets

    from sqlalchemy import update

    from imagegate.request import ImageRequest
    from imagegate.store import Store
    from imagegate.store.models import Job

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True)  # fmt: skip
    dead = f"{int(done.stdout)}@{sockets.gethostname()}"

    async def scenario() -> tuple[str, str, str]:
        async with Store(tmp_path) as store:
            killed = await store.create_job(ImageRequest(prompt="a fox"), route=["x"], source="cli")
            alive = await store.create_job(ImageRequest(prompt="a cat"), route=["x"], source="cli")
            async with store.engine.begin() as conn:
                await conn.execute(update(Job).where(Job.id == killed).values(runner=dead))
        async with Store(tmp_path) as later:
            ended = await later.get_job(killed)
            running = await later.get_job(alive)
        assert ended is not None
        assert running is not None
        return ended.status, json.dumps(ended.error), running.status

    status, error, other = asyncio.run(scenario())
    assert status == "failed"
    assert "is gone" in error
    assert "Interrupted" in error
    assert other == "running"


def test_a_running_server_stops_reporting_a_dead_cli_job(quick: Live) -> None:
    """/sdapi/v1/progress and the metrics end a dead in-process job instead of counting it."""
    import asyncio
    import socket as sockets

    from sqlalchemy import update

    from imagegate.request import ImageRequest
    from imagegate.store import Store
    from imagegate.store.models import Job

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True)  # fmt: skip
    store = quick.gateway.store
    assert store is not None

    async def dead_cli_job() -> str:
        async with Store(store.data_dir) as other:  # as `imagegate generate` would
            job_id = await other.create_job(ImageRequest(prompt="a fox"), route=["x"], source="cli")
            async with other.engine.begin() as conn:
                runner = f"{int(done.stdout)}@{sockets.gethostname()}"
                await conn.execute(update(Job).where(Job.id == job_id).values(runner=runner))
        return job_id

    job_id = asyncio.run(dead_cli_job())
    progress = httpx.get(f"{quick.url}/sdapi/v1/progress", timeout=5).json()
    assert progress["state"]["job_count"] == 0
    metrics = httpx.get(f"{quick.url}/metrics", timeout=5).text
    assert 'status="running"} 1' not in metrics
    assert httpx.get(f"{quick.url}/v1/jobs/{job_id}", timeout=5).json()["status"] == "failed"


@pytest.mark.parametrize(
    ("field", "value"),
    [("seed", "7"), ("n", True), ("steps", 20.0), ("guidance", "7.5"), ("size", "0512x0512")],
)
def test_the_openai_surface_refuses_values_it_would_have_to_convert(
    quick: Live, field: str, value: object
) -> None:
    """`seed: "7"`, `n: true`, `size: "0512x0512"`...: a 400 naming the field, nothing coerced."""
    body = {"prompt": "a fox", field: value}
    answer = httpx.post(f"{quick.url}/v1/images/generations", json=body, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == field


@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/jobs", "/sdapi/v1/txt2img"])
def test_a_duplicate_json_key_is_refused_on_every_surface(quick: Live, path: str) -> None:
    """`{"seed": 1, "seed": 2}`: a 4xx naming the key on OpenAI, jobs and A1111, not last-wins."""
    body = b'{"prompt": "a fox", "seed": 1, "seed": 2}'
    answer = httpx.post(
        f"{quick.url}{path}",
        content=body,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert 400 <= answer.status_code < 500
    assert "duplicate key 'seed'" in answer.text


@pytest.mark.parametrize("field", ["override_settings", "alwayson_scripts", "unknown_extra"])
def test_a_body_nested_300_deep_is_refused_before_the_provider_is_called(
    quick: Live, field: str
) -> None:
    """A1111 txt2img with a field nested 300 deep: a 422 naming the limit, never a 500 after
    the generation (the provider is not called)."""
    deep: dict[str, object] = {}
    inner = deep
    for _ in range(300):
        inner["a"] = {}
        inner = inner["a"]  # type: ignore[assignment]
    fake = quick.gateway.router.providers["quick"]
    before = fake.calls  # type: ignore[attr-defined]
    body = {"prompt": "a fox", field: deep}
    answer = httpx.post(f"{quick.url}/sdapi/v1/txt2img", json=body, timeout=10)
    assert answer.status_code == 422
    assert "nested deeper than 32 levels" in answer.text
    assert fake.calls == before  # type: ignore[attr-defined]


@pytest.mark.parametrize(("field", "value"), [("seed", "7"), ("width", "512.0"), ("n", True)])
def test_the_jobs_surface_refuses_values_it_would_have_to_convert(
    quick: Live, field: str, value: object
) -> None:
    """POST /v1/jobs with `seed: "7"`, `width: "512.0"`, `n: true`: a 400 naming the field."""
    body = {"prompt": "a fox", field: value}
    answer = httpx.post(f"{quick.url}/v1/jobs", json=body, timeout=10)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == field


class BrokenFake(Fake):
    """A provider with a bug: it raises a KeyError (not a ProviderError) once called."""

    async def generate(
        self, request: ImageRequest, deadline: Deadline, progress: ProgressCallback | None
    ) -> list[GeneratedImage]:
        await super().generate(request, deadline, progress)
        raise KeyError("b64_json")


@pytest.mark.parametrize(
    ("path", "body"),
    [("/v1/images/generations", {"prompt": "a fox"}), ("/sdapi/v1/txt2img", {"prompt": "a fox"})],
)
def test_a_provider_that_breaks_once_called_is_a_502_naming_the_stage(
    path: str, body: dict[str, object]
) -> None:
    """A bug in a provider after it was called answers 502 naming the stage, never a 500; the
    job is recorded failed with that error, not left running."""
    with live(fake_settings(["broken"]), {"broken": BrokenFake("broken")}) as server:
        answer = httpx.post(f"{server.url}{path}", json=body, timeout=10)
        jobs = httpx.get(f"{server.url}/v1/jobs", timeout=5).json()["data"]
    assert answer.status_code == 502, answer.text
    assert "ProtocolError (runtime)" in answer.text
    assert [job["status"] for job in jobs] == ["failed"]
    attempt_error = jobs[0]["attempts"][0]["error"]
    assert (attempt_error["type"], attempt_error["stage"]) == ("ProtocolError", "runtime")


@pytest.mark.parametrize(
    ("path", "patched"),
    [
        ("/v1/images/generations", "imagegate.server.openai.images_response"),
        ("/sdapi/v1/txt2img", "imagegate.server.a1111.answers.info_of"),
    ],
)
def test_a_failure_building_the_answer_is_a_502_naming_the_job_that_keeps_the_images(
    quick: Live, monkeypatch: pytest.MonkeyPatch, path: str, patched: str
) -> None:
    """The generation succeeded and was stored, then building the answer failed: a 502 that
    names the stage and the job, whose images GET /v1/jobs/{id} still has."""

    def broken(*args: object, **kwargs: object) -> object:
        raise TypeError("cannot build the answer")

    monkeypatch.setattr(patched, broken)
    answer = httpx.post(f"{quick.url}{path}", json={"prompt": "a fox"}, timeout=10)
    assert answer.status_code == 502, answer.text
    assert "ResponseError" in answer.text
    assert "in stage respond (TypeError)" in answer.text
    job_id = answer.text.split("(job ", 1)[1].split(")", 1)[0]
    job = httpx.get(f"{quick.url}/v1/jobs/{job_id}", timeout=5).json()
    assert job["status"] == "succeeded"
    assert len(job["images"]) == 1
