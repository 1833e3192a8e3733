"""The s3 storage backend against a real S3-compatible server on 127.0.0.1: moto's standalone
server (``moto[server]``), started once for this module; one fresh bucket per test."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from serverkit import Fake, fake_settings, free_port, live, stopped_at_exit, wait_until_up
from test_storage import noisy_png

from imagegate.config import StorageSettings
from imagegate.errors import StorageError
from imagegate.gateway import Gateway
from imagegate.request import ImageRequest
from imagegate.store import Store
from imagegate.store.retention import prune


@pytest.fixture(scope="module")
def moto_port() -> Iterator[int]:
    """moto's standalone S3 server on 127.0.0.1 for this module's tests."""
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with stopped_at_exit(proc):
        wait_until_up(
            f"http://127.0.0.1:{port}/moto-api/", proc, "moto did not start in 30 s", every_s=0.1
        )
        yield port


@pytest.fixture
def bucket(moto_port: int, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; the credentials in the environment, where the backend reads them."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    name = f"imagegate-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}")
    client.create_bucket(Bucket=name)
    return name


def _storage(bucket: str, port: int, **more: object) -> StorageSettings:
    return StorageSettings.model_validate(
        {
            "backend": "s3",
            "bucket": bucket,
            "prefix": "gw/",
            "endpoint": f"http://127.0.0.1:{port}",
            **more,
        }
    )


def test_s3_storage_puts_reads_iterates_and_deletes(
    bucket: str, moto_port: int, tmp_path: Path
) -> None:
    """Content-addressed put (once), chunked read, exists, size, iterate and delete."""
    store = Store(tmp_path, storage=_storage(bucket, moto_port, chunk_kb=16))
    png = noisy_png(100)

    async def main() -> None:
        async with store:
            sha, key = await store.images.put(png)
            assert (sha, key) == await store.images.put(png)
            assert sha == hashlib.sha256(png).hexdigest()
            pieces = [c async for c in store.images.chunks(sha)]
            assert b"".join(pieces) == png
            assert len(pieces) > 1
            assert await store.images.size(sha) == len(png)
            assert [s async for s in store.images.iterate()] == [sha]
            assert await store.images.total_bytes() == len(png)
            await store.images.delete(sha)
            assert not await store.images.exists(sha)
            with pytest.raises(FileNotFoundError):
                await store.images.read(sha)

    asyncio.run(main())


def test_an_image_on_s3_storage_is_served_by_the_server(bucket: str, moto_port: int) -> None:
    """A job's image goes to the bucket and GET /v1/images/{id} streams it back."""
    settings = fake_settings(["p"]).model_copy(update={"storage": _storage(bucket, moto_port)})
    with live(settings, providers={"p": Fake("p")}) as server:
        answer = httpx.post(
            f"{server.url}/v1/images/generations",
            json={"prompt": "a fox", "response_format": "url"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        image = httpx.get(answer.json()["data"][0]["url"], timeout=10)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")


def test_retention_on_s3_storage_deletes_the_objects_no_row_names(
    bucket: str, moto_port: int, tmp_path: Path
) -> None:
    """A pruned image's object leaves the bucket; nothing is left aside."""
    store = Store(tmp_path, storage=_storage(bucket, moto_port))

    async def main() -> None:
        async with store:
            gateway = Gateway(fake_settings(["p"]), providers={"p": Fake("p")}, store=store)
            result = await gateway.generate(ImageRequest(prompt="old"))
            sha = result.images[0].sha256
            assert sha is not None
            assert await store.images.exists(sha)
            report = await prune(
                store, older_than=datetime.now(UTC) + timedelta(days=1), grace_s=0, settle_s=0
            )
            assert report.files == 1
            assert not await store.images.exists(sha)
            assert [s async for s in store.images.iterate()] == []

    asyncio.run(main())


class StallingRelay:
    """127.0.0.1:<port> relayed to ``target`` until a PUT starts; from then on the store
    stops answering: every byte from the client is swallowed and nothing comes back."""

    def __init__(self, target: int, *, stall_on_put: bool = True) -> None:
        self.target = target
        self.stall_on_put = stall_on_put
        self.stalled = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if outbound and self.stall_on_put and data.startswith(b"PUT "):
                    dst.sendall(data[: len(data) // 2])  # half the first piece gets through
                    self.stalled.set()
                    continue
                if not self.stalled.is_set():
                    dst.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way
        self._listener.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()


def test_a_store_that_stops_answering_mid_upload_fails_the_job(
    bucket: str, moto_port: int, tmp_path: Path
) -> None:
    """The upload times out: the job is recorded failed with StorageError and the store's
    reason, never succeeded; no image row is left."""
    relay = StallingRelay(moto_port)
    storage = _storage(bucket, moto_port, timeout_s=0.5).model_copy(
        update={"endpoint": f"http://127.0.0.1:{relay.port}"}
    )
    store = Store(tmp_path, storage=storage)

    async def main() -> None:
        async with store:
            gateway = Gateway(fake_settings(["p"]), providers={"p": Fake("p")}, store=store)
            with pytest.raises(StorageError) as caught:
                await gateway.generate(ImageRequest(prompt="lost"))
            jobs = await store.list_jobs(limit=5)
            assert relay.stalled.is_set()
            assert [job.status for job in jobs] == ["failed"]
            assert jobs[0].error is not None
            assert jobs[0].error["type"] == "StorageError"
            assert "TimeoutError: the store did not answer" in jobs[0].error["message"]
            assert caught.value.message == jobs[0].error["message"]
            assert jobs[0].images == []
            assert await store.list_images(limit=5) == []

    try:
        asyncio.run(main())
    finally:
        relay.close()


def test_an_image_fetch_from_an_unreachable_store_is_a_503_naming_it(
    bucket: str, moto_port: int
) -> None:
    """The store goes away after the job: GET /v1/images/{id} is a 503 naming the s3 store
    and its error, not a 500 or a traceback."""
    relay = StallingRelay(moto_port, stall_on_put=False)
    storage = _storage(bucket, moto_port, timeout_s=0.5).model_copy(
        update={"endpoint": f"http://127.0.0.1:{relay.port}"}
    )
    settings = fake_settings(["p"]).model_copy(update={"storage": storage})
    with live(settings, providers={"p": Fake("p")}) as server:
        answer = httpx.post(
            f"{server.url}/v1/images/generations",
            json={"prompt": "a fox", "response_format": "url"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        relay.close()  # the store stops listening
        got = httpx.get(answer.json()["data"][0]["url"], timeout=30)
    assert got.status_code == 503, got.text
    assert "s3 storage" in got.json()["error"]["message"]
    assert "Traceback" not in got.text


def test_a_served_job_whose_store_stops_answering_runs_again_once_then_fails(
    bucket: str, moto_port: int
) -> None:
    """Through the server: the upload stalls, the unpaid job runs once more (the provider is
    called twice), then the caller gets the StorageError with the store's reason."""
    relay = StallingRelay(moto_port)
    storage = _storage(bucket, moto_port, timeout_s=0.5).model_copy(
        update={"endpoint": f"http://127.0.0.1:{relay.port}"}
    )
    settings = fake_settings(["p"]).model_copy(update={"storage": storage})
    provider = Fake("p")
    try:
        with live(settings, providers={"p": provider}) as server:
            answer = httpx.post(
                f"{server.url}/v1/images/generations", json={"prompt": "lost"}, timeout=60
            )
            jobs = httpx.get(f"{server.url}/v1/jobs", timeout=10).json()["data"]
    finally:
        relay.close()
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["type"] == "StorageError"
    assert "s3 storage: storing image" in answer.json()["error"]["message"]  # and its reason
    assert provider.calls == 2
    assert [(job["status"], job["retries"]) for job in jobs] == [("failed", 1)]
