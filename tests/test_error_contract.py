"""One error, one answer: every error class answers the same on every surface and backplane.

A provider raises each class in turn; the synchronous OpenAI route, the A1111 route and
/v1/jobs/{id} must agree on the status, Retry-After, x-should-retry, error.type, error.param
and the attempts, on the local backplane and on PostgreSQL, where the job runs in a worker
and its error is rebuilt from the row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from faults import serve_app
from serverkit import Fake, close_gateway_at_shutdown
from test_backplane import _database

from imagegate.backplane.postgres import PostgresBackplane, shared_store
from imagegate.config import GatewaySettings, ProviderConfig, ScaleSettings, Settings
from imagegate.errors import (
    AllProvidersFailed,
    AuthError,
    ConnectError,
    ContentFiltered,
    ImagegateError,
    InvalidRequest,
    MissingDependency,
    ProtocolError,
    QueueFull,
    QuotaExceeded,
    RateLimited,
    Timeout,
    Unavailable,
    UpstreamError,
    error_from_dict,
)
from imagegate.gateway import Gateway
from imagegate.providers.base import Deadline, ProgressCallback
from imagegate.request import GeneratedImage, ImageRequest
from imagegate.server import create_app


@dataclass(frozen=True)
class Case:
    """An error a provider raises, and the status every surface must answer it with."""

    name: str
    raise_: Callable[[], ImagegateError]
    status: int


CASES = [
    Case(
        "invalid",
        lambda: InvalidRequest("steps: too many", field="steps", limit="<= 50", fix="lower steps"),
        400,
    ),
    Case("connect", lambda: ConnectError("refused", stage="connect", fix="start it"), 502),
    Case("timeout", lambda: Timeout("no first byte", stage="first_byte", fix="wait"), 504),
    Case("auth", lambda: AuthError("key refused", fix="set the key"), 502),
    Case("ratelimited", lambda: RateLimited("slow down", retry_after=7, fix="wait"), 503),
    Case("quota", lambda: QuotaExceeded("no credit", fix="top up"), 502),
    Case("filtered", lambda: ContentFiltered("refused by the filter", fix="reword"), 400),
    Case(
        "unavailable",
        lambda: Unavailable("sleeping", stage="runtime", retry_after=12, fix="wake it"),
        503,
    ),
    Case("upstream", lambda: UpstreamError("HTTP 500", fix="try later"), 502),
    Case("protocol", lambda: ProtocolError("truncated JSON", stage="read", fix="report it"), 502),
    Case("missing", lambda: MissingDependency("local", "diffusers"), 503),
]


class Raising(Fake):
    """A provider that raises one error of the tree, of any class."""

    def __init__(self, name: str, error: Callable[[], ImagegateError]) -> None:
        super().__init__(name)
        self.error = error

    async def generate(
        self, request: ImageRequest, deadline: Deadline, progress: ProgressCallback | None
    ) -> list[GeneratedImage]:
        raise self.error()


SURFACES = ("openai", "a1111", "job")
NAMES = [f"{case.name}-{surface}" for case in CASES for surface in SURFACES]
"""One provider per case and surface: a failure may open its breaker for the next request."""


def _settings(scale: ScaleSettings | None = None) -> Settings:
    names = NAMES
    return Settings(
        gateway=GatewaySettings(route=names[:1], deadline_s=30, max_attempts=1),
        providers={name: ProviderConfig(type="fake") for name in names},
        scale=scale or ScaleSettings(),
    )


def _providers() -> dict[str, Raising]:
    return {
        f"{case.name}-{surface}": Raising(f"{case.name}-{surface}", case.raise_)
        for case in CASES
        for surface in SURFACES
    }


@pytest.fixture(scope="module", params=["local", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A live server whose providers each raise one class; its jobs on ``param``'s backplane."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEGATE_DATA_DIR", str(tmp_path_factory.mktemp("contract-data")))
        if request.param == "local":
            with serve_app(create_app(_settings(), providers=_providers())) as url:
                yield url
            return
        for pg_url in _database():
            settings = _settings(ScaleSettings(backplane=pg_url))
            gateway = Gateway(settings, providers=_providers(), store=shared_store(settings))
            assert gateway.store is not None
            backplane = PostgresBackplane(  # a replica that is its own worker, every queue
                gateway.store, pg_url, worker_queues=NAMES
            )
            app = create_app(settings, gateway=gateway, backplane=backplane)
            close_gateway_at_shutdown(app, gateway)
            with serve_app(app) as url:
                yield url


@dataclass(frozen=True)
class Answer:
    """What one surface said about one failure."""

    status: int
    retry_after: str | None
    should_retry: str | None
    type: str
    param: str | None
    attempts: int
    fix: str | None = None  # A1111's error shape has no field for it


def _openai(url: str, case: Case) -> Answer:
    resp = httpx.post(
        f"{url}/v1/images/generations",
        json={"prompt": "x", "provider": f"{case.name}-openai"},
        timeout=30,
    )
    error = resp.json()["error"]
    return Answer(
        resp.status_code,
        resp.headers.get("retry-after"),
        resp.headers.get("x-should-retry"),
        error["type"],
        error["param"],
        len(error.get("attempts") or []),
        error.get("fix"),
    )


def _a1111(url: str, case: Case) -> Answer:
    resp = httpx.post(
        f"{url}/sdapi/v1/txt2img",
        json={"prompt": "x", "override_settings": {"sd_model_checkpoint": f"{case.name}-a1111"}},
        timeout=30,
    )
    body = resp.json()
    return Answer(
        resp.status_code,
        resp.headers.get("retry-after"),
        resp.headers.get("x-should-retry"),
        body["error"],
        None,
        int(resp.headers["x-imagegate-attempts"]),
    )


def _job(url: str, case: Case) -> Answer:
    job_id = httpx.post(f"{url}/v1/jobs", json={"prompt": "x", "provider": f"{case.name}-job"})
    job_id = job_id.json()["id"]
    job: dict[str, Any] = {}
    for _ in range(600):  # bounded: 30 s at most
        job = httpx.get(f"{url}/v1/jobs/{job_id}").json()
        if job["status"] in ("failed", "cancelled"):
            break
        time.sleep(0.05)
    error = job["error"]
    retry_after = error["retry_after"]
    return Answer(
        error["status"],
        None if retry_after is None else str(retry_after),
        None if error["should_retry"] is None else str(error["should_retry"]).lower(),
        error["type"],
        error["param"],
        len(job["attempts"]),
        error["fix"],
    )


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_surface_answers_an_error_alike(server: str, case: Case) -> None:
    """The OpenAI route, the A1111 route and /v1/jobs/{id} agree on one error, on each backplane."""
    openai, a1111, job = _openai(server, case), _a1111(server, case), _job(server, case)

    assert openai.status == case.status
    assert openai.fix
    assert a1111 == Answer(
        422 if case.status == 400 and openai.type == "InvalidRequest" else openai.status,
        openai.retry_after,
        openai.should_retry,
        openai.type,
        None,
        openai.attempts,
    )
    assert job == openai


def test_upstream_500_on_postgres_is_a_502_with_the_routes_answer() -> None:
    """The reported bug: a provider's 500 comes back from a row as 502, not a bare 500."""
    error = AllProvidersFailed(
        "every provider failed", [], last=UpstreamError("HTTP 500", fix="try later")
    )
    rebuilt = error_from_dict(error.to_dict())

    assert isinstance(rebuilt, AllProvidersFailed)
    assert isinstance(rebuilt.last, UpstreamError)


@pytest.mark.parametrize(
    "error",
    [
        *(case.raise_() for case in CASES),
        QueueFull(3, 2.5),
        AllProvidersFailed("all failed", [], last=RateLimited("slow", provider="a", retry_after=4)),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_recorded_error_is_rebuilt_as_the_same_class_with_the_same_fields(
    error: ImagegateError,
) -> None:
    """to_dict then error_from_dict gives back the class, the message and every field."""
    if isinstance(error, UpstreamError):
        error.provider, error.billed, error.retry_after = "a", True, 3.0
    rebuilt = error_from_dict(error.to_dict())

    assert type(rebuilt) is type(error)
    assert str(rebuilt) == str(error)
    assert rebuilt.to_dict() == error.to_dict()
