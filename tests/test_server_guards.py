"""Auth, limits and health: keys, body size, field errors, a full queue, metrics, providers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from serverkit import Fake, Live, fake_settings, live

KEY = "sk-guard-test"


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    """A server with API keys on."""
    monkeypatch.setenv("IMAGEGATE_API_KEYS", KEY)
    with live(fake_settings(["a"]), {"a": Fake("a")}) as server:
        yield server


@pytest.fixture
def small() -> Iterator[Live]:
    """A server with a 2 KiB body limit and room for 2 waiting jobs on a slow provider."""
    settings = fake_settings(["slow"], max_body_bytes=2048, max_queue=2)
    with live(settings, {"slow": Fake("slow", delay_s=0.5, concurrency=1)}) as server:
        yield server


def test_without_a_key_every_route_but_healthz_is_401(keyed: Live) -> None:
    """No key: 401 in OpenAI's shape; /healthz still answers."""
    answer = httpx.get(f"{keyed.url}/v1/models")
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "invalid_api_key"
    assert KEY not in answer.text
    assert httpx.get(f"{keyed.url}/healthz").status_code == 200


def test_bearer_and_basic_keys_are_accepted(keyed: Live) -> None:
    """The key works as a Bearer token and as a Basic password; a wrong one does not."""
    assert httpx.get(
        f"{keyed.url}/v1/models", headers={"authorization": f"Bearer {KEY}"}
    ).is_success
    assert httpx.get(f"{keyed.url}/v1/models", auth=("anyone", KEY)).is_success
    wrong = httpx.get(f"{keyed.url}/v1/models", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401


def test_serve_refuses_a_public_host_without_keys() -> None:
    """`imagegate serve --host 0.0.0.0` without keys exits 2 and says what to set."""
    done = subprocess.run(
        [sys.executable, "-m", "imagegate.cli", "serve", "--host", "0.0.0.0", "--port", "9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "IMAGEGATE_API_KEYS" in done.stderr


def test_an_oversize_body_is_413_json(small: Live) -> None:
    """A body past server.max_body_bytes is refused with 413 and a JSON error."""
    answer = httpx.post(f"{small.url}/v1/images/generations", json={"prompt": "x" * 5000})
    assert answer.status_code == 413
    assert answer.json()["error"]["type"] == "request_too_large"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "n": 99}, "n"),
        ({"prompt": "x", "size": "huge"}, "size"),
        ({"prompt": "x", "steps": -1}, "steps"),
        ({"prompt": "x", "provider": "nope"}, "provider"),
        ({"prompt": "x", "response_format": "gif"}, "response_format"),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    small: Live, body: dict[str, object], param: str
) -> None:
    """Each bad field is a 400 whose param names it, never a 500."""
    answer = httpx.post(f"{small.url}/v1/images/generations", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param


def test_malformed_json_is_400(small: Live) -> None:
    """A body that is not JSON is a 400, not a traceback."""
    answer = httpx.post(
        f"{small.url}/v1/jobs", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "body"


def test_a_full_queue_is_429_with_retry_after() -> None:
    """Past max_queue waiting jobs, submitting is 429 with a Retry-After header."""
    settings = fake_settings(["slow"], max_queue=2)
    # the running job outlasts the four submissions however slow the machine is
    with live(settings, {"slow": Fake("slow", delay_s=30, concurrency=1)}) as server:
        answers = [httpx.post(f"{server.url}/v1/jobs", json={"prompt": "x"}) for _ in range(4)]
    assert [a.status_code for a in answers[:3]] == [202, 202, 202]
    assert answers[3].status_code == 429
    assert int(answers[3].headers["retry-after"]) >= 1


def test_readyz_and_metrics(small: Live) -> None:
    """readyz answers ok; /metrics exports requests, attempts, queue depth and jobs by status."""
    assert httpx.get(f"{small.url}/readyz").json() == {"status": "ok"}
    httpx.post(f"{small.url}/v1/images/generations", json={"prompt": "x"}, timeout=10)
    text = httpx.get(f"{small.url}/metrics").text
    assert 'imagegate_requests_total{outcome="succeeded",provider="slow"} 1.0' in text
    assert 'imagegate_attempts_total{outcome="ok",provider="slow"} 1.0' in text
    assert "imagegate_queue_depth 0.0" in text
    assert 'imagegate_jobs{status="succeeded"} 1.0' in text


def test_providers_show_breaker_and_recent_latency(small: Live) -> None:
    """/v1/providers lists each provider with its breaker state and recent latency."""
    httpx.post(f"{small.url}/v1/images/generations", json={"prompt": "x"}, timeout=10)
    provider = httpx.get(f"{small.url}/v1/providers").json()["data"][0]
    assert provider["name"] == "slow"
    assert provider["breaker"]["state"] == "closed"
    assert provider["recent_latency_p50_s"] >= 0.5
