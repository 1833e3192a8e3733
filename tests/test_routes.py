"""Named routes: ``[routes.NAME]`` chosen by the OpenAI model, the jobs' route, the A1111
checkpoint and the CLI's ``--route``, each with its own failover order and limits."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import webuiapi
from serverkit import Fake, Live, live
from test_cli import cli

from imagegate.config import (
    GatewaySettings,
    ProviderConfig,
    RouteSettings,
    Settings,
    parse_settings,
)
from imagegate.errors import ConfigError, Unavailable, UpstreamError

A1111 = {"type": "a1111", "url": "http://127.0.0.1:9"}

ROUTES = {
    "fast": {"route": ["quick"]},
    "quality": {"route": ["broken", "good", "quick"], "max_attempts": 2, "deadline_s": 20},
    "strict": {"route": ["flaky", "good"], "max_attempts": 1},
}


def _providers() -> dict[str, Fake]:
    return {
        "quick": Fake("quick"),
        "good": Fake("good"),
        "broken": Fake("broken", fail=lambda: Unavailable("down for the test", provider="broken")),
        "flaky": Fake("flaky", fail=lambda: UpstreamError("a 500 for the test", provider="flaky")),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A live server whose default route is ``good`` and which has three named routes."""
    with pytest.MonkeyPatch.context() as mp:
        for leaked in ("IMAGEGATE_ROUTE", "IMAGEGATE_CONFIG", "IMAGEGATE_API_KEYS"):
            mp.delenv(leaked, raising=False)
        mp.setenv("IMAGEGATE_DATA_DIR", str(tmp_path_factory.mktemp("routes-data")))
        settings = Settings(
            gateway=GatewaySettings(route=["good"], deadline_s=30),
            routes={name: RouteSettings.model_validate(r) for name, r in ROUTES.items()},
            providers={name: ProviderConfig(type="fake") for name in _providers()},
        )
        with live(settings, providers=_providers()) as running:
            yield running


@pytest.fixture
def oai(server: Live) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def _provider_of(oai: openai.OpenAI, model: str) -> str:
    raw = oai.images.with_raw_response.generate(prompt="a fox", model=model)
    return raw.headers["x-imagegate-provider"]


def test_the_openai_model_field_selects_a_named_route(oai: openai.OpenAI) -> None:
    """model='fast' runs on the fast route's provider; 'default' on the [gateway] route."""
    assert _provider_of(oai, "fast") == "quick"
    assert _provider_of(oai, "default") == "good"
    assert _provider_of(oai, "route") == "good"


def test_a_named_route_fails_over_in_its_own_order(oai: openai.OpenAI) -> None:
    """model='quality' tries broken, then good, and reports two attempts."""
    raw = oai.images.with_raw_response.generate(prompt="a fox", model="quality")
    assert raw.headers["x-imagegate-provider"] == "good"


def test_a_named_routes_max_attempts_applies(oai: openai.OpenAI) -> None:
    """The strict route allows one attempt: the flaky provider's failure ends the request."""
    with pytest.raises(openai.APIStatusError) as caught:
        oai.images.generate(prompt="a fox", model="strict")
    assert caught.value.status_code in (502, 503)


def test_v1_models_lists_routes_then_providers(oai: openai.OpenAI) -> None:
    """/v1/models: 'route', each named route (owned_by imagegate:route), each provider."""
    models = oai.models.list().data
    assert [m.id for m in models] == ["route", "fast", "quality", "strict", *_providers()]
    assert {m.id for m in models if m.owned_by == "imagegate:route"} == set(ROUTES)


def test_an_unknown_model_names_the_routes_it_could_be(oai: openai.OpenAI) -> None:
    """model='fastest' is a 400 with param 'model' naming the routes and providers."""
    with pytest.raises(openai.BadRequestError) as caught:
        oai.images.generate(prompt="a fox", model="fastest")
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "model"
    for name in ("default", "fast", "quality", "quick"):
        assert name in caught.value.message


def test_the_jobs_route_field_selects_a_named_route(server: Live) -> None:
    """POST /v1/jobs with route='fast' runs on quick, and the job keeps the route's name."""
    submitted = httpx.post(f"{server.url}/v1/jobs", json={"prompt": "a fox", "route": "fast"})
    assert submitted.status_code == 202
    job_id = submitted.json()["id"]
    deadline = time.monotonic() + 20
    while (job := httpx.get(f"{server.url}/v1/jobs/{job_id}").json())["status"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert job["status"] == "succeeded"
    assert job["provider"] == "quick"
    assert job["request"]["route"] == "fast"


def test_an_unknown_jobs_route_is_a_400_naming_the_allowed_routes(server: Live) -> None:
    """route='nope' is refused before anything is queued: param 'route', allowed names."""
    answer = httpx.post(f"{server.url}/v1/jobs", json={"prompt": "a fox", "route": "nope"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "route"
    assert "default, fast, quality, strict" in error["message"]


def test_a_route_and_a_pinned_provider_together_are_refused(server: Live) -> None:
    """route='fast' with provider='good' is a 400 naming provider: send one of them."""
    answer = httpx.post(
        f"{server.url}/v1/jobs", json={"prompt": "a fox", "route": "fast", "provider": "good"}
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "provider"


def test_a1111_checkpoints_are_the_routes_and_providers(server: Live) -> None:
    """webuiapi sees each named route and each provider as a checkpoint, and selecting the
    route 'fast' (options or override_settings) runs there."""
    host, port = server.url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port))
    titles = [m["title"] for m in api.get_sd_models()]
    assert titles == ["fast", "quality", "strict", *_providers()]
    api.set_options({"sd_model_checkpoint": "fast"})
    try:
        assert api.get_options()["sd_model_checkpoint"] == "fast"
        result = api.txt2img(prompt="a fox")
        assert result.info["provider"] == "quick"
        overridden = api.txt2img(
            prompt="a fox", override_settings={"sd_model_checkpoint": "default"}
        )
        assert overridden.info["provider"] == "good"
    finally:
        api.set_options({"sd_model_checkpoint": "route"})


def test_an_unknown_checkpoint_names_the_routes(server: Live) -> None:
    """POST /sdapi/v1/options with a checkpoint that is no route nor provider is refused."""
    answer = httpx.post(f"{server.url}/sdapi/v1/options", json={"sd_model_checkpoint": "sdxl-base"})
    assert answer.status_code == 422
    assert "fast" in answer.text


def test_a_route_naming_an_unconfigured_provider_is_a_config_error() -> None:
    """[routes.x] route = ["ghost"]: ConfigError at routes.x.route, allowed providers named."""
    with pytest.raises(ConfigError) as caught:
        parse_settings(
            {
                "gateway": {"route": ["a"]},
                "providers": {"a": A1111},
                "routes": {"x": {"route": ["ghost"]}},
            }
        )
    assert caught.value.key == "routes.x.route"
    assert caught.value.allowed == ["a"]


@pytest.mark.parametrize("name", ["a", "default", "route"])
def test_a_route_named_like_a_provider_or_the_default_is_a_config_error(name: str) -> None:
    """A route may not take a provider's name nor one that means the default route."""
    with pytest.raises(ConfigError) as caught:
        parse_settings(
            {
                "gateway": {"route": ["a"]},
                "providers": {"a": A1111},
                "routes": {name: {"route": ["a"]}},
            }
        )
    assert caught.value.key == f"routes.{name}"


def test_a_routes_limits_are_checked(tmp_path: Path) -> None:
    """max_attempts = 0 on a route is refused at routes.x.max_attempts."""
    with pytest.raises(ConfigError) as caught:
        parse_settings(
            {"providers": {"a": A1111}, "routes": {"x": {"route": ["a"], "max_attempts": 0}}}
        )
    assert caught.value.key == "routes.x.max_attempts"


def test_cli_route_selects_a_named_route(isolated_env: Path, tiny_model: Path) -> None:
    """`generate --route tiny` runs on the tiny route although the default route fails."""
    (isolated_env / "imagegate.toml").write_text(
        '[gateway]\nroute = ["ghost"]\n'
        f'[providers.tiny]\ntype = "diffusers"\nmodel = "{tiny_model}"\n'
        '[providers.ghost]\ntype = "diffusers"\nmodel = "nobody/not-cached"\n'
        '[routes.small]\nroute = ["tiny"]\n'
    )
    run = cli("generate", "a fox", "--size", "64x64", "--steps", "1", "--route", "small",
              "--json", cwd=isolated_env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["provider"] == "tiny"


def test_cli_unknown_route_exits_2_naming_the_routes(isolated_env: Path) -> None:
    """`generate --route nope`: exit 2, one line naming route and the allowed names."""
    (isolated_env / "imagegate.toml").write_text(
        '[providers.local]\ntype = "diffusers"\n[routes.small]\nroute = ["local"]\n'
    )
    run = cli("generate", "a fox", "--route", "nope", cwd=isolated_env)
    assert run.returncode == 2, run.stderr
    assert "route" in run.stderr
    assert "small" in run.stderr
    assert "Traceback" not in run.stderr
