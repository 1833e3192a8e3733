"""Browsers kept out unless invited: DNS rebinding (a foreign Host), cross-site writes and
form posts refused; security headers on every answer."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from serverkit import Fake, Live, fake_settings, live

from imagegate.server.browsers import is_loopback_host

HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
}


@pytest.fixture
def server() -> Iterator[Live]:
    """No keys (the default); `images.example` is an allowed host."""
    settings = fake_settings(["a"], allowed_hosts=["images.example"])
    with live(settings, providers={"a": Fake("a")}) as running:
        yield running


def _port(server: Live) -> str:
    return server.url.rsplit(":", 1)[1]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.9.9.9", "[::1]", "a.localhost"])
def test_loopback_names_are_loopback(host: str) -> None:
    """localhost, *.localhost, 127.0.0.0/8 and ::1 name this machine."""
    assert is_loopback_host(host)


def test_a_rebound_name_cannot_read_the_history_without_keys(server: Live) -> None:
    """Host: rebound.example (a page's own name pointed at 127.0.0.1): 403, nothing read."""
    answer = httpx.get(
        f"{server.url}/v1/jobs", headers={"host": f"rebound.example:{_port(server)}"}
    )
    assert answer.status_code == 403
    assert "server.allowed_hosts" in answer.json()["error"]["message"]


def test_an_allowed_host_and_localhost_are_answered(server: Live) -> None:
    """server.allowed_hosts and loopback names pass the Host check."""
    for host in ("images.example", f"localhost:{_port(server)}"):
        assert httpx.get(f"{server.url}/v1/jobs", headers={"host": host}).status_code == 200


def test_with_keys_the_key_decides_whatever_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys on: a foreign Host with a valid key is answered."""
    monkeypatch.setenv("IMAGEGATE_API_KEYS", "sk-test-key")
    with live(fake_settings(["a"]), providers={"a": Fake("a")}) as running:
        answer = httpx.get(
            f"{running.url}/v1/jobs",
            headers={"host": "api.example", "authorization": "Bearer sk-test-key"},
        )
    assert answer.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "http://evil.example"},
        {"sec-fetch-site": "cross-site"},
        {"origin": "null"},
    ],
)
def test_a_cross_site_page_cannot_interrupt_or_queue(server: Live, headers: dict[str, str]) -> None:
    """POST /sdapi/v1/interrupt and /v1/jobs from another site's page: 403."""
    for path, body in (("/sdapi/v1/interrupt", None), ("/v1/jobs", {"prompt": "x"})):
        answer = httpx.post(f"{server.url}{path}", json=body, headers=headers)
        assert answer.status_code == 403, (path, answer.text)


@pytest.mark.parametrize("kind", ["application/x-www-form-urlencoded", "text/plain"])
def test_form_and_plain_text_bodies_are_refused(server: Live, kind: str) -> None:
    """A body a web form could send anywhere (even JSON labelled text/plain): 403."""
    answer = httpx.post(
        f"{server.url}/v1/jobs",
        content=json.dumps({"prompt": "x"}),
        headers={"content-type": kind},
    )
    assert answer.status_code == 403
    assert httpx.get(f"{server.url}/v1/jobs").json()["data"] == []


def test_a_same_origin_page_writes(server: Live) -> None:
    """The server's own web page (Origin = this Host, same-origin) may submit."""
    answer = httpx.post(
        f"{server.url}/v1/jobs",
        json={"prompt": "x"},
        headers={"origin": server.url, "sec-fetch-site": "same-origin"},
    )
    assert answer.status_code in (200, 201, 202), answer.text


def test_every_answer_carries_the_security_headers(server: Live) -> None:
    """200, 404, 403 and the web page all say nosniff, DENY and frame-ancestors 'none'."""
    answers = [
        httpx.get(f"{server.url}/v1/jobs"),
        httpx.get(f"{server.url}/v1/jobs/nope"),
        httpx.get(f"{server.url}/", follow_redirects=True),
        httpx.get(f"{server.url}/v1/jobs", headers={"host": "evil.example"}),
    ]
    for answer in answers:
        for name, value in HEADERS.items():
            assert value in answer.headers.get(name, ""), (answer.request.url, name)
