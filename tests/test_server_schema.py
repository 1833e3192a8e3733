"""The OpenAPI schema holds: schemathesis fuzzes every route and each answer is one the schema
declares, never a 5xx; and a client generated from the schema works against the server."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from serverkit import Fake, Live, fake_settings, live

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A live server on a fast fake provider."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEGATE_DATA_DIR", str(tmp_path_factory.mktemp("schema-data")))
        with live(fake_settings(["fast"]), {"fast": Fake("fast")}) as running:
            yield running


def test_every_route_answers_as_its_schema_says_and_never_a_server_error(server: Live) -> None:
    """Generated requests to every route (8 a route) get no 5xx, and every answer's status,
    content type and body are the ones the schema declares."""
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in api.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 20

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=8,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: schemathesis.Case[Any]) -> None:
            response = case.call(base_url=server.url, timeout=10)
            try:
                case.validate_response(response, checks=CHECKS)
            except Exception as exc:  # schemathesis raises one group per failing answer
                summary = " ".join(str(exc).split())[:300]
                failures.append(f"{case.method} {case.formatted_path}: {summary}")

        check()
    assert failures == []


def test_a_generated_client_makes_images_runs_jobs_and_reads_errors(
    server: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """openapi-python-client builds, from /openapi.json alone, a client that works unchanged."""
    schema = tmp_path / "openapi.json"
    schema.write_text(httpx.get(f"{server.url}/openapi.json").text)
    config = tmp_path / "generator.yaml"
    config.write_text("post_hooks: []\n")
    generator = Path(sys.executable).parent / "openapi-python-client"
    args = ["generate", "--path", str(schema), "--meta", "none", "--config", str(config)]
    args += ["--output-path", str(tmp_path / "imagegate_client")]
    run = subprocess.run(
        [str(generator), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    monkeypatch.syspath_prepend(str(tmp_path))

    def load(name: str) -> Any:
        return importlib.import_module(f"imagegate_client.{name}")

    models = load("models")
    with load("client").Client(base_url=server.url, raise_on_unexpected_status=True) as client:
        _use_generated_client(client, models, load)


def _use_generated_client(client: Any, models: Any, load: Callable[[str], Any]) -> None:
    """Images through the OpenAI route, a job submitted and read, two errors parsed."""
    images = load("api.openai.create_images").sync(
        client=client, body=models.ImageGenerationBody(prompt="a fox", n=2)
    )
    assert isinstance(images, models.ImagesResponse)
    assert len(images.data) == 2
    accepted = load("api.jobs.submit_job").sync(
        client=client, body=models.JobSubmit(prompt="a fox", seed=3)
    )
    assert isinstance(accepted, models.JobAccepted)
    job = load("api.jobs.get_job").sync(client=client, job_id=accepted.id)
    assert isinstance(job, models.JobView)
    assert job.id == accepted.id
    refused = load("api.openai.create_images").sync_detailed(
        client=client, body=models.ImageGenerationBody(prompt="a fox", n=99)
    )
    assert refused.status_code == 400
    assert isinstance(refused.parsed, models.ErrorBody)
    assert refused.parsed.error.param == "n"
    missing = load("api.jobs.get_job").sync_detailed(client=client, job_id="nope")
    assert missing.status_code == 404
    assert isinstance(missing.parsed, models.ErrorBody)
