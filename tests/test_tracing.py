"""OpenTelemetry traces: a span per request, job, attempt and upstream call, one trace from
the caller's traceparent to the upstream; nothing imported unless OTEL_* asks for it."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_backplane
import trustme
from conformance import CANARY_ENV
from fastapi import FastAPI, Request, Response
from faults import FaultServer, hold, serve_app
from serverkit import Fake, live
from test_backplane import Make
from vendor_openai import OpenAIFake, openai_provider

from imagegate import tracing
from imagegate.backplane.runner import JobRunner
from imagegate.config import GatewaySettings, ProviderConfig, Settings
from imagegate.gateway import Gateway
from imagegate.request import ImageRequest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

kind = test_backplane.kind
make = test_backplane.make
pg_url = test_backplane.pg_url

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(autouse=True)
def tracing_off_after() -> Iterator[None]:
    yield
    tracing.shutdown()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """Spans recorded in memory, one by one."""
    exporter = InMemorySpanExporter()
    tracing.enable(exporter, batch=False)
    return exporter


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def finished_job(base: str, job_id: str, within_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        job: dict[str, Any] = httpx.get(f"{base}/v1/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.02)


def by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return {str(key): value for key, value in (span.attributes or {}).items()}


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_a_failover_is_one_trace_of_request_job_and_two_attempts(
    spans: InMemorySpanExporter,
    fault_server: Callable[..., FaultServer],
    server_ssl: ssl.SSLContext,
    ca_file: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TLS stall then backup: job span under the caller's trace, attempts tls-failed then ok."""
    monkeypatch.setenv(CANARY_ENV, "sk-test-tracing-key")
    stalled = fault_server(hold(), tls=server_ssl)
    fake = OpenAIFake()
    with serve_app(fake.app()) as backup_url:
        providers = {
            "primary": openai_provider(
                f"{stalled.url}/v1", name="primary", ca_file=ca_file, tls_timeout_s=0.3
            ),
            "backup": openai_provider(f"{backup_url}/v1", name="backup"),
        }
        settings = Settings.model_validate(
            {"gateway": {"route": ["primary", "backup"], "hedge_connect_after_s": 0}}
        )
        with live(settings, providers) as server:
            answer = httpx.post(
                f"{server.url}/v1/jobs",
                json={"prompt": "a lighthouse", "width": 64, "height": 64},
                headers={"traceparent": TRACEPARENT},
            )
            job = finished_job(server.url, answer.json()["id"])
    assert job["status"] == "succeeded"
    done = list(spans.get_finished_spans())
    (request,) = by_name(done, "POST /v1/jobs")
    (job_span,) = by_name(done, "job")
    (first,) = by_name(done, "attempt primary")
    (second,) = by_name(done, "attempt backup")
    traced = [s for s in done if s.name != "GET /v1/jobs/{job_id}"]  # polls: traces of their own
    assert {format(s.context.trace_id, "032x") for s in traced} == {CALLER_TRACE}
    assert parent_of(job_span) == request.context.span_id
    assert [link.context.span_id for link in job_span.links] == [request.context.span_id]
    assert attrs(job_span)["imagegate.job.id"] == job["id"]
    assert parent_of(first) == parent_of(second) == job_span.context.span_id
    assert attrs(first)["imagegate.provider"] == "primary"
    assert attrs(first)["imagegate.outcome"] == "error"
    assert attrs(first)["imagegate.stage"] == "tls"
    assert attrs(first)["imagegate.tls_s"] >= 0.25
    assert attrs(second)["imagegate.outcome"] == "ok"
    assert "imagegate.first_byte_s" in attrs(second)
    clients = {parent_of(s): s for s in done if s.kind.name == "CLIENT"}
    assert attrs(clients[first.context.span_id])["imagegate.stage"] == "tls"
    upstream = clients[second.context.span_id]
    assert attrs(upstream)["http.response.status_code"] == 200
    sent = fake.headers[-1]["traceparent"]
    assert sent.split("-")[1:3] == [CALLER_TRACE, format(upstream.context.span_id, "016x")]


def test_traces_are_exported_over_otlp_http_to_the_configured_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT alone turns traces on; they arrive as OTLP/HTTP protobuf."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    received: list[tuple[str, bytes]] = []
    collector = FastAPI()

    @collector.post("/v1/traces")
    async def traces(request: Request) -> Response:
        received.append((request.headers["content-type"], await request.body()))
        return Response(status_code=200)

    settings = Settings(
        gateway=GatewaySettings(route=["p"], deadline_s=30),
        providers={"p": ProviderConfig(type="fake")},
    )
    with serve_app(collector) as endpoint:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "imagegate-test")
        with live(settings, {"p": Fake("p")}) as server:
            job_id = httpx.post(f"{server.url}/v1/jobs", json={"prompt": "x"}).json()["id"]
            finished_job(server.url, job_id)
        tracing.flush()
    assert received, "no OTLP export arrived"
    names: set[str] = set()
    services: set[str] = set()
    for content_type, body in received:
        assert content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(body)
        for resource in export.resource_spans:
            services |= {
                a.value.string_value
                for a in resource.resource.attributes
                if a.key == "service.name"
            }
            for scope in resource.scope_spans:
                names |= {span.name for span in scope.spans}
    assert {"POST /v1/jobs", "job", "attempt p"} <= names
    assert services == {"imagegate-test"}


def test_nothing_imports_opentelemetry_unless_otel_variables_ask_for_it(tmp_path: Path) -> None:
    """`import imagegate` loads no opentelemetry; serving a job loads no SDK or exporter.

    (FastAPI itself depends on and imports the opentelemetry API; the SDK, the exporter and
    imagegate's spans stay out unless an OTEL_* variable configures an exporter.)
    """
    script = (
        "import sys, imagegate, imagegate.cli\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "from fastapi.testclient import TestClient\n"
        "from imagegate import tracing\n"
        "from imagegate.config import GatewaySettings, ProviderConfig, Settings\n"
        "from imagegate.server import create_app\n"
        "sys.path.insert(0, 'tests')\n"
        "from serverkit import Fake\n"
        "s = Settings(gateway=GatewaySettings(route=['p']),"
        " providers={'p': ProviderConfig(type='fake')})\n"
        "app = create_app(s, providers={'p': Fake('p')})\n"
        "with TestClient(app, base_url='http://127.0.0.1') as c:\n"
        "    c.post('/v1/images/generations', json={'prompt': 'x'}).raise_for_status()\n"
        "heavy = ('opentelemetry.sdk', 'opentelemetry.exporter', 'opentelemetry.proto')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(heavy))\n"
        "assert not loaded and not tracing.enabled(), loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["IMAGEGATE_DATA_DIR"] = str(tmp_path / "data")
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
    ],
)
def test_the_standard_otel_variables_turn_traces_on_and_off(
    environ: dict[str, str], on: bool
) -> None:
    """Traces are on when an exporter is configured, off when none is or the SDK is disabled."""
    assert tracing.configured(environ) is on


def test_a_worker_continues_the_submitters_trace_through_the_queue(
    spans: InMemorySpanExporter, make: Make
) -> None:
    """The job's traceparent is stored with it: its run is a child of, and links to, the
    submitting span, on the local backplane and through PostgreSQL's queue alike."""

    async def main() -> tuple[str, str]:
        store, backplane = await make()
        settings = Settings(
            gateway=GatewaySettings(route=["p"]), providers={"p": ProviderConfig(type="fake")}
        )
        gateway = Gateway(settings, store=store, providers={"p": Fake("p")})
        await gateway.open()
        runner = JobRunner(gateway, backplane)
        await runner.start()
        try:
            with tracing.span("submit") as submitting:
                submitted = await backplane.jobs.submit(
                    ImageRequest(prompt="x"), route=["p"], source="jobs", queue="p"
                )
            outcome = await asyncio.wait_for(backplane.jobs.wait(submitted.job_id), 10)
            assert outcome.status == "succeeded"
            record = await store.get_job(submitted.job_id)
        finally:
            await runner.stop()
            await gateway.aclose()
        assert record is not None
        assert record.traceparent is not None
        return format(submitting.context.span_id, "016x"), record.traceparent

    submit_id, stored = asyncio.run(main())
    (job_span,) = by_name(list(spans.get_finished_spans()), "job")
    assert stored.split("-")[2] == submit_id
    assert format(parent_of(job_span) or 0, "016x") == submit_id
    assert [format(link.context.span_id, "016x") for link in job_span.links] == [submit_id]
