"""Webhooks: a job's end posted to its webhook_url, signed per Standard Webhooks, retried
with backoff from the outbox, private destinations refused."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from serverkit import Fake, Live, live
from standardwebhooks import Webhook
from test_cli import cli
from webhookkit import SECRET, receiver

from imagegate.config import GatewaySettings, Settings, WebhookSettings
from imagegate.errors import InvalidRequest, ProviderError
from imagegate.providers.base import ProviderConfig
from imagegate.request import ImageRequest
from imagegate.store import Store
from imagegate.transport.guard import resolve

FAST = {"poll_s": 0.05, "backoff_s": 0.05, "max_backoff_s": 0.2, "timeout_s": 5.0}


@pytest.fixture(autouse=True)
def webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEGATE_WEBHOOK_SECRET", SECRET)


def settings(**webhooks: Any) -> Settings:
    return Settings(
        gateway=GatewaySettings(route=["p"], deadline_s=30),
        providers={"p": ProviderConfig(type="fake")},
        webhooks=WebhookSettings(**{"allow_private": True, **FAST, **webhooks}),
    )


def submit(server: Live, webhook_url: str, **fields: Any) -> httpx.Response:
    body = {"prompt": "a lighthouse", "webhook_url": webhook_url, **fields}
    return httpx.post(f"{server.url}/v1/jobs", json=body, timeout=10)


def job_when(server: Live, job_id: str, done: Any, within_s: float = 10.0) -> dict[str, Any]:
    """The job once ``done(job)`` holds."""
    deadline = time.monotonic() + within_s
    while True:
        job: dict[str, Any] = httpx.get(f"{server.url}/v1/jobs/{job_id}").json()
        if done(job):
            return job
        assert time.monotonic() < deadline, f"not done in {within_s} s: {job}"
        time.sleep(0.02)


def delivered(job: dict[str, Any]) -> bool:
    return (job.get("webhook") or {}).get("status") in ("delivered", "failed")


def test_a_finished_job_is_posted_signed_per_standard_webhooks() -> None:
    """The job document arrives once, and the standardwebhooks verifier accepts its signature."""
    with receiver() as hook, live(settings(), {"p": Fake("p")}) as server:
        job_id = submit(server, hook.url).json()["id"]
        post = hook.delivered()
        payload = Webhook(SECRET).verify(post.body, post.headers)
        job = job_when(server, job_id, delivered)
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["id"] == job_id
    assert payload["data"]["images"][0]["url"].startswith(f"{server.url}/v1/images/")
    assert post.headers["webhook-id"] == f"msg_{job_id}"
    assert job["webhook"]["status"] == "delivered"
    assert [a["status"] for a in job["webhook"]["attempts"]] == [200]


def test_a_receiver_that_fails_three_times_gets_the_event_once_it_recovers() -> None:
    """500, 500, 500, then 200: four attempts, each on the job, one event id throughout."""
    with receiver([500, 500, 500]) as hook, live(settings(), {"p": Fake("p")}) as server:
        job_id = submit(server, hook.url).json()["id"]
        post = hook.delivered()
        job = job_when(server, job_id, delivered)
    Webhook(SECRET).verify(post.body, post.headers)
    assert [p.answered for p in hook.posts] == [500, 500, 500, 200]
    assert {p.headers["webhook-id"] for p in hook.posts} == {f"msg_{job_id}"}
    attempts = job["webhook"]["attempts"]
    assert [a["status"] for a in attempts] == [500, 500, 500, 200]
    assert [a["error"] for a in attempts] == ["HTTP 500"] * 3 + [None]
    assert job["webhook"]["status"] == "delivered"


def test_a_failed_job_is_posted_as_job_failed() -> None:
    """A job that fails is posted too, with its error."""
    failing = Fake("p", fail=lambda: ProviderError("the provider broke"))
    with receiver() as hook, live(settings(), {"p": failing}) as server:
        job_id = submit(server, hook.url).json()["id"]
        payload = json.loads(hook.delivered().body)
    assert payload["type"] == "job.failed"
    assert payload["data"]["id"] == job_id
    assert payload["data"]["attempts"][0]["error"]["message"] == "the provider broke"


def test_a_delivery_is_given_up_after_retry_for_s() -> None:
    """A receiver that never recovers: the delivery ends failed, every attempt recorded."""
    with receiver() as hook, live(settings(retry_for_s=0.3), {"p": Fake("p")}) as server:
        hook.then = 503
        job_id = submit(server, hook.url).json()["id"]
        job = job_when(server, job_id, delivered)
    assert job["webhook"]["status"] == "failed"
    assert len(job["webhook"]["attempts"]) == len(hook.posts) >= 2


def test_a_redirect_is_not_followed() -> None:
    """A 3xx answer is a failed attempt; the Location is never fetched."""
    with receiver([307]) as hook, live(settings(), {"p": Fake("p")}) as server:
        job_id = submit(server, hook.url).json()["id"]
        hook.delivered()
        job = job_when(server, job_id, delivered)
    assert "redirects are not followed" in job["webhook"]["attempts"][0]["error"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://localhost/hook",
        "ftp://example.com/hook",
        "not a url",
        "https://example.com/" + "a" * 2100,
    ],
)
def test_a_private_or_malformed_webhook_url_is_a_400_naming_webhook_url(url: str) -> None:
    """Loopback, private, link-local, non-http(s) and too-long URLs are refused at submit."""
    with live(settings(allow_private=False), {"p": Fake("p")}) as server:
        answer = submit(server, url)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "webhook_url"


def test_a_webhook_url_is_refused_when_the_server_has_no_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a signing secret the server sends no webhooks, and says so with a 400."""
    monkeypatch.delenv("IMAGEGATE_WEBHOOK_SECRET")
    with live(settings(), {"p": Fake("p")}) as server:
        answer = submit(server, "https://example.com/hook")
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "webhook_url"
    assert "IMAGEGATE_WEBHOOK_SECRET" in answer.json()["error"]["message"]


def test_a_name_that_resolves_to_a_private_address_is_refused_at_send_time() -> None:
    """The address is checked when sending (against DNS rebinding), not only at submit."""
    with pytest.raises(InvalidRequest, match="non-public address") as caught:
        asyncio.run(resolve(httpx.URL("http://localhost:9/"), allow_private=False, timeout_s=5))
    assert caught.value.field == "webhook_url"


def test_a_name_rebound_to_a_private_address_after_submit_is_never_posted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: public at submit, loopback at send; the send is refused and given up."""
    real = socket.getaddrinfo
    answers = iter(["93.184.216.34"])

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.example":
            return real(host, port, *args, **kwargs)
        address = next(answers, "127.0.0.1")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with receiver() as hook, live(settings(allow_private=False), {"p": Fake("p")}) as server:
        port = httpx.URL(hook.url).port
        answer = submit(server, f"http://rebind.example:{port}/hook")
        assert answer.status_code == 202, answer.text
        job = job_when(server, answer.json()["id"], delivered)
    assert hook.posts == []
    assert job["webhook"]["status"] == "failed"
    assert "127.0.0.1, a non-public address" in job["webhook"]["attempts"][0]["error"]


def test_a_keys_default_webhook_url_gets_its_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key created with a webhook_url has its jobs posted there when they name none."""
    monkeypatch.setenv("IMAGEGATE_API_KEYS", "admin-key")
    with receiver() as hook, live(settings(), {"p": Fake("p")}) as server:
        admin = {"authorization": "Bearer admin-key"}
        created = httpx.post(
            f"{server.url}/v1/keys",
            json={"name": "tenant", "webhook_url": hook.url},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        tenant = {"authorization": f"Bearer {created.json()['key']}"}
        answer = httpx.post(f"{server.url}/v1/jobs", json={"prompt": "x"}, headers=tenant)
        payload = Webhook(SECRET).verify(hook.delivered().body, hook.delivered().headers)
    assert payload["data"]["id"] == answer.json()["id"]
    assert payload["data"]["owner"] == "tenant"


def test_a_job_cancelled_in_the_queue_is_posted_as_job_cancelled() -> None:
    """Cancelling a queued job ends it; its end is posted like any other."""
    slow = Fake("p", delay_s=2.0, concurrency=1)
    with receiver() as hook, live(settings(), {"p": slow}) as server:
        submit(server, hook.url)  # holds the one slot
        queued = submit(server, hook.url).json()["id"]
        httpx.post(f"{server.url}/v1/jobs/{queued}/cancel", timeout=10)
        deadline = time.monotonic() + 10
        while not any(json.loads(p.body)["data"]["id"] == queued for p in hook.posts):
            assert time.monotonic() < deadline, hook.posts
            time.sleep(0.02)
    payload = next(json.loads(p.body) for p in hook.posts if queued in p.body.decode())
    assert payload["type"] == "job.cancelled"


def test_cli_keys_create_refuses_a_private_webhook_url(isolated_env: Path) -> None:
    """`keys create --webhook-url` on a loopback address: exit 2 naming the flag."""
    run = cli("keys", "create", "bob", "--webhook-url", "http://127.0.0.1/hook", cwd=isolated_env)
    assert run.returncode == 2, run.stderr
    assert "--webhook-url" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_job_interrupted_by_a_restart_is_posted_as_failed_interrupted() -> None:
    """A paid job left running by a dead process ends interrupted at the restart: posted."""

    async def left_running(url: str) -> str:
        async with Store(settings().data_dir) as store:
            job_id, _ = await store.open_job(
                ImageRequest(prompt="x"),
                route=["p"],
                source="jobs",
                status="running",
                queue="p",
                webhook={"url": url, "base": "http://127.0.0.1"},
            )
        return job_id

    with receiver() as hook:
        job_id = asyncio.run(left_running(hook.url))
        with live(settings(), {"p": Fake("p", paid=True)}):
            payload = Webhook(SECRET).verify(hook.delivered().body, hook.delivered().headers)
    assert payload["type"] == "job.failed"
    assert payload["data"]["id"] == job_id
    assert payload["data"]["error"]["type"] == "Interrupted"
