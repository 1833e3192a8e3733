"""The HTTP layer: every fault the kit can provoke comes out as one tree class and stage."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faults
import httpx
import pytest
import trustme
from faults import FaultServer, Reply, app, hold, respond, serve_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from imagegate.errors import (
    AuthError,
    ConnectError,
    InvalidRequest,
    ProtocolError,
    ProviderError,
    QuotaExceeded,
    RateLimited,
    Timeout,
    Unavailable,
    UpstreamError,
)
from imagegate.providers.base import Deadline, RemoteConfig
from imagegate.transport import (
    StageBudgets,
    Transport,
    expect_json,
    parse_retry_after,
    raise_for_status,
    redact,
)
from imagegate.transport.client import _map_exception, _Tracker
from imagegate.transport.trust import trust_context

# The fault kit's fixtures, made visible here. (Declaring pytest_plugins = ["faults"] in a
# test module fails once another module imported the kit first; tests/conftest.py may.)
ca, client_ssl, server_ssl, fault_server = (
    faults.ca, faults.client_ssl, faults.server_ssl, faults.fault_server
)  # fmt: skip
tls_stall, bad_cert, wrong_host_cert, tls_ok_server = (
    faults.tls_stall, faults.bad_cert, faults.wrong_host_cert, faults.tls_ok_server
)  # fmt: skip
refused, unresolvable, dns_stall, reset_mid_body, short_body = (
    faults.refused, faults.unresolvable, faults.dns_stall, faults.reset_mid_body,
    faults.short_body,
)  # fmt: skip
hang_after_request, slow_drip, truncated_json, wrong_content_type, http_status = (
    faults.hang_after_request, faults.slow_drip, faults.truncated_json,
    faults.wrong_content_type, faults.http_status,
)  # fmt: skip

BUDGETS = StageBudgets(dns_s=0.3, connect_s=0.3, tls_s=0.3, first_byte_s=0.4, read_s=0.3)
SLACK_S = 0.6  # scheduling and teardown noise on a busy machine, not a benchmark
FAST_S = 0.25  # "at once": below every stage budget


@pytest.fixture
async def transport(client_ssl: ssl.SSLContext) -> AsyncIterator[Transport]:
    """A transport with small budgets that trusts the kit's CA."""
    async with Transport("fake", BUDGETS, verify=client_ssl, trust_env=False) as t:
        yield t


async def fail(transport: Transport, url: str, deadline_s: float = 10) -> ProviderError:
    """The error one GET of ``url`` raises; fails the test when none is raised."""
    with pytest.raises(ProviderError) as info:
        await transport.request("GET", url, deadline=Deadline(deadline_s))
    return info.value


# (fixture, error class, stage, the budget it must run out, or None: it fails at once)
KIT = [
    ("tls_stall", Timeout, "tls", BUDGETS.tls_s),
    ("bad_cert", ConnectError, "tls", None),
    ("wrong_host_cert", ConnectError, "tls", None),
    ("refused", ConnectError, "connect", None),
    ("unresolvable", ConnectError, "dns", None),
    ("dns_stall", Timeout, "dns", BUDGETS.dns_s),
    ("reset_mid_body", ConnectError, "read", None),
    ("short_body", ProtocolError, "read", None),
    ("hang_after_request", Timeout, "first_byte", BUDGETS.first_byte_s),
    ("slow_drip", Timeout, "read", BUDGETS.read_s),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("fixture", "cls", "stage", "budget"), KIT, ids=[k[0] for k in KIT])
async def test_each_fault_maps_to_its_class_and_stage_within_its_budget(
    request: pytest.FixtureRequest,
    transport: Transport,
    fixture: str,
    cls: type[ProviderError],
    stage: str,
    budget: float | None,
) -> None:
    """Every network fault of the kit ends as its tree class, stage and bounded time."""
    url = request.getfixturevalue(fixture)
    started = time.monotonic()
    error = await fail(transport, url)
    wall = time.monotonic() - started
    assert type(error) is cls, str(error)
    assert error.stage == stage
    assert error.provider == "fake"
    assert error.elapsed_s is not None
    if budget is None:
        assert wall < FAST_S + (0.15 if fixture == "reset_mid_body" else 0)
    else:
        assert budget - 0.05 <= error.elapsed_s <= budget + SLACK_S
        assert wall <= budget + SLACK_S


@pytest.mark.anyio
async def test_a_tls_stall_message_names_the_stage_the_host_and_the_fix(
    transport: Transport, tls_stall: str
) -> None:
    """The TLS stall message says TCP connected, names host:port and ends with the fix."""
    error = await fail(transport, tls_stall)
    port = tls_stall.rsplit(":", 1)[1]
    assert f"127.0.0.1:{port}" in error.message
    assert "although TCP connected in" in error.message
    assert error.message.endswith("or raise tls_timeout_s")


@pytest.mark.anyio
async def test_a_bad_certificate_is_reported_as_rejected_not_as_a_stall(
    transport: Transport, bad_cert: str
) -> None:
    """A rejected certificate says so, and is not confused with a handshake stall."""
    error = await fail(transport, bad_cert)
    assert "certificate" in error.message
    assert "not a stall" in error.message
    assert isinstance(error.__cause__, httpx.ConnectError)


@pytest.mark.anyio
async def test_a_deadline_shorter_than_the_stage_budget_times_out_as_total(
    transport: Transport, hang_after_request: str
) -> None:
    """When the caller's deadline ends before the stage budget, the stage is "total"."""
    error = await fail(transport, hang_after_request, deadline_s=0.15)
    assert isinstance(error, Timeout)
    assert error.stage == "total"
    assert error.elapsed_s is not None
    assert 0.1 <= error.elapsed_s <= 0.15 + SLACK_S
    assert "deadline" in error.message


@pytest.mark.anyio
async def test_the_attempt_cap_times_out_as_total(
    client_ssl: ssl.SSLContext, slow_drip: str
) -> None:
    """attempt_s caps one attempt even while every chunk arrives within read_s."""
    budgets = StageBudgets(0.3, 0.3, 0.3, 0.4, read_s=2.0, attempt_s=0.5)
    async with Transport("fake", budgets, trust_env=False) as transport:
        error = await fail(transport, slow_drip)
    assert isinstance(error, Timeout)
    assert error.stage == "total"
    assert "timeout_s" in error.message


STATUSES: list[tuple[int, dict[str, str], type[ProviderError], float | None]] = [
    (500, {}, UpstreamError, None),
    (503, {"retry-after": "7"}, Unavailable, 7.0),
    (429, {"retry-after": "2"}, RateLimited, 2.0),
    (401, {}, AuthError, None),
    (403, {}, AuthError, None),
    (402, {}, QuotaExceeded, None),
    (404, {}, InvalidRequest, None),
    (422, {}, InvalidRequest, None),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("code", "headers", "cls", "retry_after"), STATUSES, ids=[str(s[0]) for s in STATUSES]
)
async def test_each_status_maps_to_its_class_with_retry_after(
    transport: Transport,
    http_status: Callable[..., str],
    code: int,
    headers: dict[str, str],
    cls: type[ProviderError],
    retry_after: float | None,
) -> None:
    """raise_for_status turns each status into its class, carrying Retry-After."""
    resp = await transport.request("GET", http_status(code, headers), deadline=Deadline(5))
    assert resp.status == code
    with pytest.raises(cls) as info:
        raise_for_status(resp, "fake")
    assert type(info.value) is cls
    assert info.value.retry_after == retry_after
    assert info.value.provider == "fake"


@pytest.mark.anyio
async def test_a_408_is_a_first_byte_timeout(
    transport: Transport, http_status: Callable[..., str]
) -> None:
    """408 Request Timeout maps to Timeout(first_byte)."""
    resp = await transport.request("GET", http_status(408), deadline=Deadline(5))
    with pytest.raises(Timeout) as info:
        raise_for_status(resp)
    assert info.value.stage == "first_byte"


@pytest.mark.anyio
async def test_truncated_json_is_a_protocol_error(
    transport: Transport, truncated_json: str
) -> None:
    """JSON that stops halfway is a ProtocolError that says "truncated"."""
    resp = await transport.request("GET", truncated_json, deadline=Deadline(5))
    with pytest.raises(ProtocolError, match="truncated JSON"):
        expect_json(resp)


@pytest.mark.anyio
async def test_a_web_page_where_json_is_expected_is_a_protocol_error(
    transport: Transport, wrong_content_type: str
) -> None:
    """A 200 text/html answer fails expect_json with the content type in the message."""
    resp = await transport.request("GET", wrong_content_type, deadline=Deadline(5))
    with pytest.raises(ProtocolError, match="text/html"):
        expect_json(resp)


@pytest.mark.anyio
async def test_expect_checks_the_content_type_of_a_2xx_answer(
    transport: Transport, wrong_content_type: str
) -> None:
    """request(expect=...) raises ProtocolError when the answer has another type."""
    with pytest.raises(ProtocolError):
        await transport.request(
            "GET", wrong_content_type, deadline=Deadline(5), expect="application/json"
        )


@pytest.mark.anyio
async def test_a_healthy_tls_request_returns_the_body_and_each_stage_time(
    transport: Transport, tls_ok_server: FaultServer
) -> None:
    """A good https answer comes back whole, with connect, TLS and first-byte timings."""
    resp = await transport.request(
        "POST", tls_ok_server.url + "/v1/x", deadline=Deadline(5), json={"prompt": "p"}
    )
    assert resp.status == 200
    assert expect_json(resp) == {"ok": True}
    assert tls_ok_server.requests[0].body == b'{"prompt":"p"}'
    t = resp.timings
    assert t.connect_s is not None
    assert t.tls_s is not None
    assert t.first_byte_s is not None
    assert not t.reused


@pytest.mark.anyio
async def test_a_stalled_host_that_recovers_is_served_again(
    transport: Transport, tls_ok_server: FaultServer
) -> None:
    """A FaultServer switched from stalling to healthy answers the next attempt."""
    tls_ok_server.set(hold())
    assert (await fail(transport, tls_ok_server.url)).stage == "tls"
    tls_ok_server.set(respond(200, body={"ok": True}))
    resp = await transport.request("GET", tls_ok_server.url, deadline=Deadline(5))
    assert resp.json() == {"ok": True}


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"path": request.url.path})


ECHO = Starlette(routes=[Route("/{path:path}", _echo)])


@pytest.mark.anyio
async def test_a_pooled_connection_is_reused_without_connect_stages(
    transport: Transport,
) -> None:
    """The second request on a keep-alive connection reports reused and no connect time."""
    with serve_app(ECHO) as base:
        first = await transport.request("GET", base + "/a", deadline=Deadline(5))
        second = await transport.request("GET", base + "/b", deadline=Deadline(5))
    assert first.json() == {"path": "/a"}
    assert second.json() == {"path": "/b"}
    assert not first.timings.reused
    assert second.timings.reused
    assert second.timings.connect_s is None


@pytest.mark.anyio
async def test_serve_app_serves_an_asgi_app_over_tls(transport: Transport, ca: Any) -> None:
    """serve_app(app, cert=...) runs the app on https with a kit certificate."""
    with serve_app(ECHO, cert=ca.issue_cert("127.0.0.1")) as base:
        resp = await transport.request("GET", base + "/tls", deadline=Deadline(5))
    assert base.startswith("https://")
    assert resp.json() == {"path": "/tls"}


@pytest.mark.anyio
async def test_connect_only_times_tcp_and_tls_without_sending_a_request(
    transport: Transport, tls_ok_server: FaultServer
) -> None:
    """connect_only reports DNS, connect and TLS times, and the server sees no request."""
    timings = await transport.connect_only(tls_ok_server.url, Deadline(5))
    assert timings.dns_s is not None
    assert timings.connect_s is not None
    assert timings.tls_s is not None
    assert tls_ok_server.requests == []


@pytest.mark.anyio
async def test_connect_only_names_a_tls_stall(transport: Transport, tls_stall: str) -> None:
    """connect_only raises Timeout(tls) within the TLS budget on a stalled handshake."""
    with pytest.raises(Timeout) as info:
        await transport.connect_only(tls_stall, Deadline(5))
    assert info.value.stage == "tls"
    assert info.value.elapsed_s is not None
    assert info.value.elapsed_s <= BUDGETS.tls_s + SLACK_S


@pytest.mark.anyio
async def test_connect_only_names_a_refused_port(transport: Transport, refused: str) -> None:
    """connect_only raises ConnectError(connect) on a port nothing listens on."""
    with pytest.raises(ConnectError) as info:
        await transport.connect_only(refused, Deadline(5))
    assert info.value.stage == "connect"


@pytest.mark.anyio
async def test_stream_yields_lines_as_they_come(
    transport: Transport, fault_server: Callable[..., FaultServer]
) -> None:
    """stream() yields the body line by line, splitting chunks on line endings."""
    body = b"event: progress\ndata: 1\r\n\ndata: 2"
    server = fault_server(app(lambda _r: Reply(200, {"content-type": "text/event-stream"}, body)))
    async with transport.stream("GET", server.url, deadline=Deadline(5)) as resp:
        lines = [line async for line in resp.aiter_lines()]
    assert resp.status == 200
    assert lines == ["event: progress", "data: 1", "", "data: 2"]


@pytest.mark.anyio
async def test_messages_never_echo_the_key(
    client_ssl: ssl.SSLContext, http_status: Callable[..., str]
) -> None:
    """A 401 body that quotes the key is redacted in the error message."""
    key = "sk-live-0123456789abcdef"
    url = http_status(401, {}, {"error": f"Incorrect API key provided: {key}"})
    async with Transport("fake", BUDGETS, secrets=[key], trust_env=False) as transport:
        resp = await transport.request(
            "GET", url, deadline=Deadline(5), headers={"Authorization": f"Bearer {key}"}
        )
    with pytest.raises(AuthError) as info:
        raise_for_status(resp)
    assert key not in str(info.value)
    assert "***" in str(info.value)


def test_redact_hides_bearer_tokens_and_key_parameters() -> None:
    """redact() masks bearer tokens, key=value pairs and URL credentials."""
    text = redact("Bearer abcdef123456 api_key=xyz789 https://u:p@h/ token: t0k3n")
    assert "abcdef123456" not in text
    assert "xyz789" not in text
    assert "u:p@" not in text
    assert "t0k3n" not in text


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """Retry-After as delta-seconds or as an HTTP date gives seconds to wait."""
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("12", now) == 12.0
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_budgets_come_from_the_remote_config() -> None:
    """from_config takes each stage's budget; DNS shares the connect budget."""
    cfg = RemoteConfig(type="x", connect_timeout_s=1.5, tls_timeout_s=2.5, timeout_s=9)
    budgets = StageBudgets.from_config(cfg)
    assert (budgets.dns_s, budgets.connect_s, budgets.tls_s) == (1.5, 1.5, 2.5)
    assert (budgets.first_byte_s, budgets.read_s, budgets.attempt_s) == (120.0, 30.0, 9)


def test_a_zero_budget_is_refused() -> None:
    """A budget of 0 seconds is refused with a message naming the field."""
    with pytest.raises(ValueError, match="tls_s"):
        StageBudgets(dns_s=1, connect_s=1, tls_s=0, first_byte_s=1, read_s=1)


def _httpx_errors() -> list[type[Exception]]:
    found: list[type[Exception]] = [httpx.InvalidURL]
    todo: list[type[Exception]] = [httpx.RequestError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("exc_type", _httpx_errors(), ids=lambda c: c.__name__)
def test_every_httpx_request_error_is_mapped(exc_type: type[Exception]) -> None:
    """No httpx request error falls through to the catch-all "unexpected" branch."""
    tracker = _Tracker("fake", BUDGETS, Deadline(5), httpx.URL("https://h:1"))
    tracker.phase = "read"
    tracker.body_started = time.monotonic()
    error = _map_exception(exc_type("boom"), tracker)
    assert isinstance(error, ProviderError)
    assert "unexpectedly" not in error.message


@pytest.fixture
def proxied(
    monkeypatch: pytest.MonkeyPatch, client_ssl: ssl.SSLContext
) -> Callable[[FaultServer], Transport]:
    """A transport made after HTTPS_PROXY names ``proxy`` (nothing exempt), trusting the kit."""

    def make(proxy: FaultServer) -> Transport:
        for name in ("NO_PROXY", "no_proxy", "https_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        return Transport("fake", BUDGETS, verify=client_ssl)

    return make


@pytest.mark.anyio
async def test_https_goes_through_the_proxy_tunnel_and_names_it(
    proxied: Callable[[FaultServer], Transport],
    fault_server: Callable[..., FaultServer],
    tls_ok_server: FaultServer,
) -> None:
    """With HTTPS_PROXY set, the request reaches the server through a CONNECT tunnel."""
    proxy = fault_server(faults.tunnel())
    async with proxied(proxy) as transport:
        resp = await transport.request("GET", tls_ok_server.url + "/v1/x", deadline=Deadline(5))
    assert resp.json() == {"ok": True}
    assert [(r.method, r.path) for r in proxy.requests] == [
        ("CONNECT", f"127.0.0.1:{tls_ok_server.port}")
    ]
    assert resp.timings.proxy == proxy.url
    assert resp.timings.tls_s is not None


@pytest.mark.anyio
async def test_a_tls_stall_behind_a_proxy_is_still_a_tls_timeout(
    proxied: Callable[[FaultServer], Transport],
    fault_server: Callable[..., FaultServer],
    tls_stall: str,
) -> None:
    """The tunnel opens, the handshake through it never ends: Timeout at stage tls."""
    async with proxied(fault_server(faults.tunnel())) as transport:
        error = await fail(transport, tls_stall)
    assert type(error) is Timeout
    assert error.stage == "tls"


@pytest.mark.anyio
async def test_an_intercepting_proxy_is_a_rejected_certificate(
    proxied: Callable[[FaultServer], Transport],
    fault_server: Callable[..., FaultServer],
    tls_ok_server: FaultServer,
) -> None:
    """A proxy that ends TLS with its own (untrusted) CA: ConnectError(tls), rejected."""
    inspector = fault_server(faults.intercept(trustme.CA()))
    async with proxied(inspector) as transport:
        error = await fail(transport, tls_ok_server.url)
    assert type(error) is ConnectError
    assert error.stage == "tls"
    assert "rejected" in str(error)
    assert tls_ok_server.requests == []


@pytest.mark.anyio
async def test_a_proxy_that_refuses_the_tunnel_is_named_with_the_fix(
    proxied: Callable[[FaultServer], Transport],
    fault_server: Callable[..., FaultServer],
    tls_ok_server: FaultServer,
) -> None:
    """A proxy answering CONNECT with 403: ConnectError(connect) naming HTTPS_PROXY."""
    refusing = fault_server(respond(403))
    async with proxied(refusing) as transport:
        error = await fail(transport, tls_ok_server.url)
    assert type(error) is ConnectError
    assert error.stage == "connect"
    assert refusing.url in str(error)
    assert "HTTPS_PROXY" in str(error)


def test_one_trust_context_per_ca_file_for_every_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ca_file gives the transport, the doctor and the ComfyUI WebSocket the same context;
    SSL_CERT_FILE is honoured when no ca_file is set."""
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    transport = Transport("p", BUDGETS, verify=str(bundle))
    assert transport._ssl is trust_context(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    from_env = trust_context(None)
    assert from_env is not trust_context(None, trust_env=False)
    assert (
        from_env.get_ca_certs()[0]["subject"]
        == trust_context(str(bundle)).get_ca_certs()[0]["subject"]
    )
