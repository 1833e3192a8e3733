"""The OpenAPI schema holds: schemathesis fuzzes every route and never gets a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from serverkit import Fake, Live, fake_settings, live

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A live server on a fast fake provider."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEGATE_DATA_DIR", str(tmp_path_factory.mktemp("schema-data")))
        with live(fake_settings(["fast"]), {"fast": Fake("fast")}) as running:
            yield running


def test_no_route_answers_a_server_error(server: Live) -> None:
    """Generated requests to every route in the schema get no 5xx (8 examples a route)."""
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
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code}")

        check()
    assert failures == []
