"""`imagegate doctor` against a fault matrix: the failing stage, and a cause and fix for each.

One doctor run checks every row of the matrix at once (providers run concurrently), so the
module fixture runs it once and each test reads one row. Every remote provider reads its key
from the conformance canary, which must appear nowhere in the report.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from conformance import CANARY, CANARY_ENV
from fastapi import FastAPI
from faults import FaultServer, hold, intercept, respond, serve_app
from serverkit import live
from vendor_openai import OpenAIFake

from imagegate.config import parse_settings
from imagegate.doctor import (
    DoctorReport,
    ProviderReport,
    check_provider,
    format_text,
    run_doctor,
)
from imagegate.doctor.environment import environment, safe_proxy
from imagegate.errors import ConfigError
from imagegate.providers.base import Deadline, ProgressCallback, Provider, RemoteConfig
from imagegate.request import GeneratedImage, ImageRequest

BUDGET_S = 0.5
"""The connect and TLS budgets of every row."""
PROBE_BUDGET_S = 1.0
"""The attempt's timeout_s, which bounds the probe: the largest stage budget in the matrix."""
UNSET_ENV = "IMAGEGATE_TEST_DOCTOR_UNSET_KEY"
"""The gradio provider is written in parallel; its row is xfail until it lands."""


@dataclass
class Matrix:
    """The doctor's report on every row, how long it took, and each row's host:port."""

    report: DoctorReport
    elapsed_s: float
    where: dict[str, str]

    def row(self, name: str) -> ProviderReport:
        return next(p for p in self.report.providers if p.name == name)


def _tls_server(stack: ExitStack, ctx_ca: trustme.CA, *names: str, behaviour: Any) -> str:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx_ca.issue_cert(*names).configure_cert(ctx)
    return stack.enter_context(FaultServer(behaviour, tls=ctx)).url


def _remote(kind: str, url: str, ca_file: Path | None = None, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "type": kind,
        "url": url,
        "connect_timeout_s": BUDGET_S,
        "tls_timeout_s": BUDGET_S,
        "timeout_s": PROBE_BUDGET_S,
        **extra,
    }
    if kind == "openai":
        cfg.setdefault("api_key_env", CANARY_ENV)
    if ca_file is not None:
        cfg["ca_file"] = str(ca_file)
    return cfg


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    """Start every faulty server, configure one provider per fault, run the doctor once."""
    ca = trustme.CA()
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with ExitStack() as stack, pytest.MonkeyPatch.context() as mp:
        mp.setenv(CANARY_ENV, CANARY)
        mp.delenv(UNSET_ENV, raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("IMAGEGATE_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        mp.delenv("IMAGEGATE_ROUTE", raising=False)  # module scope: isolated_env is not on yet
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
            mp.delenv(name, raising=False)
        real = socket.getaddrinfo

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if str(host).endswith(".invalid"):
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return real(host, *args, **kwargs)

        mp.setattr(socket, "getaddrinfo", getaddrinfo)

        stall = _tls_server(stack, ca, "127.0.0.1", behaviour=hold())
        bad = _tls_server(stack, trustme.CA(), "127.0.0.1", behaviour=respond(200, body={}))
        other = _tls_server(stack, ca, "other.example", behaviour=respond(200, body={}))
        inspector = trustme.CA(organization_name="Inspecting Proxy")
        intercepted = _tls_server(stack, inspector, "inspected.example", behaviour=respond(200))
        refused_sock = stack.enter_context(socket.socket())
        refused_sock.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{refused_sock.getsockname()[1]}"
        unauthorized = stack.enter_context(
            FaultServer(
                respond(
                    401,
                    body={
                        "error": {
                            "message": f"Incorrect API key provided: {CANARY}.",
                            "type": "invalid_request_error",
                            "code": "invalid_api_key",
                        }
                    },
                )
            )
        ).url
        failing = stack.enter_context(
            FaultServer(respond(500, body={"error": {"message": "the server had an error"}}))
        ).url
        no_api = stack.enter_context(serve_app(FastAPI()))  # no routes: 404 on /sdapi
        healthy = stack.enter_context(
            serve_app(OpenAIFake(key=CANARY).app(), cert=ca.issue_cert("127.0.0.1"))
        )
        providers: dict[str, Any] = {
            "tls_stall": _remote("openai", f"{stall}/v1", ca_file),
            "bad_cert": _remote("openai", f"{bad}/v1", ca_file),
            "wrong_host": _remote("openai", f"{other}/v1", ca_file),
            "intercepted": _remote("openai", f"{intercepted}/v1", ca_file),
            "refused": _remote("openai", f"{refused}/v1"),
            "unknown_host": _remote("openai", "http://imagegate-doctor.invalid:8080/v1"),
            "unauthorized": _remote("openai", f"{unauthorized}/v1"),
            "server_error": _remote("openai", f"{failing}/v1"),
            "a1111_no_api": _remote("a1111", no_api),
            "missing_key": _remote("openai", f"{healthy}/v1", ca_file, api_key_env=UNSET_ENV),
            "healthy": _remote("openai", f"{healthy}/v1", ca_file),
            "local": {"type": "diffusers", "model": "nobody/missing"},
        }
        providers["sleeping_space"] = _sleeping_space(stack)
        settings = parse_settings({"gateway": {"route": ["healthy"]}, "providers": providers})
        started = time.monotonic()
        report = asyncio.run(run_doctor(settings))
        elapsed = time.monotonic() - started
        where = {
            name: re.sub(r"^https?://([^/]+).*$", r"\1", str(cfg.get("url", "")))
            for name, cfg in providers.items()
        }
        yield Matrix(report, elapsed, where)


def _sleeping_space(stack: ExitStack) -> dict[str, Any]:
    """A gradio provider for a Space the (fake) Hub reports as SLEEPING; wake is off."""
    hub = FastAPI()

    @hub.get("/api/spaces/{owner}/{name}")
    async def space(owner: str, name: str) -> dict[str, Any]:
        return {"id": f"{owner}/{name}", "runtime": {"stage": "SLEEPING"}}

    base = stack.enter_context(serve_app(hub))
    return _remote("gradio", base, space="owner/sleepy", hub_url=base, wake=False)


def _numbers(text: str | None) -> bool:
    return text is not None and re.search(r"\d", text) is not None


def assert_explained(row: ProviderReport, stage: str, *words: str) -> None:
    """The row failed at ``stage``, with a cause and a fix, the cause naming ``words``."""
    assert not row.ok
    assert row.failed_stage == stage, (row.failed_stage, row.cause)
    assert row.cause, row
    assert row.fix, row
    assert _numbers(row.cause), row.cause
    for word in words:
        assert word in row.cause, (word, row.cause)
    assert [s.name for s in row.stages][-1] == stage


def test_tls_stall_is_named_a_stall_with_budget_and_connect_time(matrix: Matrix) -> None:
    """TCP connects, the handshake never ends: tls, naming host:port, 0.5 s and the TCP time."""
    row = matrix.row("tls_stall")
    assert_explained(row, "tls", matrix.where["tls_stall"], "0.5 s", "TCP connected in")
    assert "did not finish" in (row.cause or "")
    assert re.search(r"TCP connected in \d+ ms", row.cause or "")
    assert "tls_timeout_s" in (row.fix or "")


def test_untrusted_certificate_is_a_bad_certificate_not_a_stall(matrix: Matrix) -> None:
    """A certificate from an unknown CA fails tls as rejected and untrusted, with the fix."""
    row = matrix.row("bad_cert")
    assert_explained(row, "tls", matrix.where["bad_cert"], "not trust", "not a stall")
    assert "ca_file" in (row.fix or "")


def test_certificate_for_another_host_is_a_name_mismatch(matrix: Matrix) -> None:
    """A trusted certificate for other.example fails tls, naming the name it is for."""
    row = matrix.row("wrong_host")
    assert_explained(row, "tls", matrix.where["wrong_host"], "other.example", "not for 127.0.0.1")


def test_foreign_certificate_from_an_unknown_issuer_is_named_an_interception(
    matrix: Matrix,
) -> None:
    """A certificate for another name from an untrusted CA: tls, TLS is intercepted on the path."""
    row = matrix.row("intercepted")
    assert_explained(row, "tls", matrix.where["intercepted"], "intercepts TLS", "not a stall")
    assert "Inspecting Proxy" in (row.cause or "")
    assert "NO_PROXY" in (row.fix or "")


def test_refused_connection_fails_at_connect(matrix: Matrix) -> None:
    """Nothing listening: connect fails with 'refused', naming host and port."""
    row = matrix.row("refused")
    assert_explained(row, "connect", matrix.where["refused"], "refused")
    assert [s.name for s in row.stages] == ["config", "dns", "connect"]


def test_unknown_host_fails_at_dns(matrix: Matrix) -> None:
    """A name that does not resolve fails dns, before any connection."""
    row = matrix.row("unknown_host")
    assert_explained(row, "dns", "imagegate-doctor.invalid", "did not resolve")
    assert "imagegate-doctor.invalid:8080" in (row.cause or "")


def test_refused_key_fails_at_auth_naming_the_variable(matrix: Matrix) -> None:
    """A 401 on the model list fails auth, naming the variable (never its value)."""
    row = matrix.row("unauthorized")
    assert_explained(row, "auth", matrix.where["unauthorized"], CANARY_ENV, "401")
    assert [(s.name, s.ok) for s in row.stages][-2:] == [("http", True), ("auth", False)]


def test_server_error_fails_at_http_with_the_status(matrix: Matrix) -> None:
    """A 500 on the info endpoint fails http, naming the status."""
    row = matrix.row("server_error")
    assert_explained(row, "http", matrix.where["server_error"], "500")


def test_a1111_without_api_fails_at_api_saying_restart_with_api(matrix: Matrix) -> None:
    """AUTOMATIC1111 answering 404 on /sdapi fails api, and the fix is --api."""
    row = matrix.row("a1111_no_api")
    assert_explained(row, "api", matrix.where["a1111_no_api"], "404")
    assert "--api" in (row.fix or "")


def test_sleeping_space_fails_at_runtime(matrix: Matrix) -> None:
    """A Space whose hub runtime says SLEEPING fails runtime, with when to retry."""
    row = matrix.row("sleeping_space")
    assert_explained(row, "runtime", "SLEEPING")


def test_unset_key_variable_fails_at_config_before_any_connection(matrix: Matrix) -> None:
    """api_key_env naming an unset variable fails config, naming the variable and the host."""
    row = matrix.row("missing_key")
    assert_explained(row, "config", UNSET_ENV, matrix.where["missing_key"])
    assert [s.name for s in row.stages] == ["config"]
    assert f"export {UNSET_ENV}" in (row.fix or "")


def test_local_model_missing_from_the_cache_fails_at_model(matrix: Matrix) -> None:
    """model = nobody/missing with HF_HUB_OFFLINE=1 fails model, with the pull command."""
    row = matrix.row("local")
    assert row.failed_stage == "model"
    assert "nobody/missing" in (row.cause or "")
    assert "HF_HUB_OFFLINE" in (row.cause or "")
    assert _numbers(row.cause)
    assert "imagegate models pull nobody/missing" in (row.fix or "")


def test_healthy_provider_passes_every_stage_with_its_certificate(matrix: Matrix) -> None:
    """A working https provider passes config..api; tls shows protocol and certificate."""
    row = matrix.row("healthy")
    assert row.ok
    assert (row.cause, row.fix) == (None, None)
    assert [s.name for s in row.stages] == [
        "config",
        "dns",
        "connect",
        "tls",
        "http",
        "auth",
        "api",
    ]
    tls = next(s for s in row.stages if s.name == "tls")
    assert "TLSv1" in tls.detail
    assert "certificate for 127.0.0.1" in tls.detail
    assert next(s for s in row.stages if s.name == "api").detail == "3 models"
    assert all(s.elapsed_s is not None for s in row.stages)


def test_no_secret_appears_anywhere_in_the_report(matrix: Matrix) -> None:
    """The canary key (even echoed back by a 401) is in neither the JSON nor the text."""
    document = json.dumps(matrix.report.to_json())
    text = "\n".join(format_text(matrix.report))
    assert CANARY not in document
    assert CANARY not in text
    assert CANARY_ENV in document  # the variable's name is shown, its value never


def test_providers_are_checked_concurrently(matrix: Matrix) -> None:
    """The whole matrix takes less than twice the largest stage budget, not the sum."""
    assert matrix.elapsed_s < 2 * PROBE_BUDGET_S, matrix.elapsed_s


def test_report_is_the_documented_json_shape(matrix: Matrix) -> None:
    """{"ok", "environment", "providers": [{"name", "type", "ok", "stages", "cause", "fix"}]}."""
    document = matrix.report.to_json()
    assert document["ok"] is False
    assert set(document) == {"ok", "environment", "providers"}
    for row in document["providers"]:
        assert set(row) == {"name", "type", "ok", "stages", "cause", "fix"}
        for stage in row["stages"]:
            assert set(stage) == {"name", "ok", "elapsed_s", "detail"}


def test_text_report_is_plain_ascii(matrix: Matrix) -> None:
    """The human report uses ASCII markers only, so any console can show it."""
    text = "\n".join(format_text(matrix.report))
    assert "tls_stall (openai): FAIL at tls" in text
    assert "  ok   config" in text
    assert text.isascii()


def test_generate_stage_makes_one_tiny_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--generate adds a passing generate stage: one 64x64 image from the provider."""
    monkeypatch.setenv(CANARY_ENV, CANARY)
    with serve_app(OpenAIFake(key=CANARY).app()) as base:
        settings = parse_settings(
            {"gateway": {"route": ["oai"]}, "providers": {"oai": _remote("openai", f"{base}/v1")}}
        )
        report = asyncio.run(run_doctor(settings, ["oai"], generate=True))
    row = report.providers[0]
    assert row.ok, row
    assert row.stages[-1].name == "generate"
    assert "64x64" in row.stages[-1].detail


def test_unknown_provider_name_is_a_config_error() -> None:
    """Naming a provider that is not configured is refused, listing the configured ones."""
    settings = parse_settings({})
    with pytest.raises(ConfigError, match="'nope' is not a configured provider"):
        asyncio.run(run_doctor(settings, ["nope"]))


def test_environment_hides_proxy_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTPS_PROXY with a user and password shows as ***@host; NO_PROXY as it is."""
    monkeypatch.setenv("HTTPS_PROXY", "http://alice:hunter2@proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    env = environment(parse_settings({}), stdout_encoding="cp1252")
    assert env["proxy"]["HTTPS_PROXY"] == "http://***@proxy.example:3128"
    assert env["proxy"]["NO_PROXY"] == "localhost,127.0.0.1"
    assert env["console"]["stdout_encoding"] == "cp1252"
    assert "hunter2" not in json.dumps(env)


def test_proxy_without_scheme_hides_credentials() -> None:
    """A proxy written as user:pass@host:port is redacted too."""
    assert safe_proxy("bob:pw@10.0.0.1:8080") == "***@10.0.0.1:8080"


def test_server_reports_doctor_stages_on_request(
    refused: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /v1/providers?doctor=true adds each provider's stages, cause and fix; not by default."""
    monkeypatch.setenv(CANARY_ENV, CANARY)
    settings = parse_settings(
        {"gateway": {"route": ["oai"]}, "providers": {"oai": _remote("openai", f"{refused}/v1")}}
    )
    with live(settings) as server:
        plain = httpx.get(f"{server.url}/v1/providers", timeout=10).json()["data"][0]
        checked = httpx.get(f"{server.url}/v1/providers?doctor=true", timeout=10).json()
    assert plain["doctor"] is None
    row = checked["data"][0]["doctor"]
    assert row["ok"] is False
    assert row["stages"][-1]["name"] == "connect"
    assert "refused" in row["cause"]
    assert checked["data"][0]["breaker"]["state"] == "closed"


def test_local_model_passes_with_its_size_device_and_a_test_image(tiny_model: Path) -> None:
    """A local model on disk passes model (size, device, dtype) and a 64x64 generation."""
    settings = parse_settings(
        {"providers": {"local": {"type": "diffusers", "model": str(tiny_model), "vae": "full"}}}
    )
    report = asyncio.run(run_doctor(settings, ["local"], generate=True))
    (row,) = report.providers
    assert row.ok, row
    assert [s.name for s in row.stages] == ["config", "model", "generate"]
    model = row.stages[1].detail
    assert " MB" in model
    assert "device " in model
    assert "64x64" in row.stages[2].detail


class _NoProbe(Provider):
    """A remote provider that keeps the base class's no-op probe."""

    type = "noprobe"
    Config = RemoteConfig

    async def generate(
        self, request: ImageRequest, deadline: Deadline, progress: ProgressCallback | None
    ) -> list[GeneratedImage]:
        raise AssertionError("not called without --generate")


def test_provider_without_a_probe_is_not_reported_as_checked(
    http_status: Callable[..., str],
) -> None:
    """No info endpoint: the network stages run, and api says it was not checked."""
    url = http_status(200, body={})
    provider = _NoProbe("plain", RemoteConfig(type="noprobe", url=url))
    row = asyncio.run(check_provider("plain", provider))
    assert row.ok
    assert [s.name for s in row.stages] == ["config", "dns", "connect", "api"]
    assert row.stages[-1].detail.startswith("not checked")


def test_an_intercepting_proxy_is_named_as_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY ends TLS with its own CA: tls fails, the cause names the proxy, the fix
    says NO_PROXY or trust its CA, and no request reached the provider."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv(CANARY_ENV, CANARY)
    for name in ("NO_PROXY", "no_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    with (
        FaultServer(respond(200, body={"data": []}), tls=tls) as provider,
        FaultServer(intercept(trustme.CA())) as proxy,
    ):
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        providers = {"behind": _remote("openai", f"{provider.url}/v1", ca_file)}
        settings = parse_settings({"gateway": {"route": ["behind"]}, "providers": providers})
        report = asyncio.run(run_doctor(settings))
    row = report.providers[0]
    assert_explained(row, "tls", "intercepts TLS", f"the proxy {proxy.url} is set for it")
    assert "NO_PROXY" in (row.fix or "")
    assert {r.method for r in proxy.requests} == {"CONNECT"}
    assert provider.requests == []
