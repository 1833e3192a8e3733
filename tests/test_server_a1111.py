"""The AUTOMATIC1111 API, driven by `webuiapi` with HTTP Basic credentials."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import webuiapi
from serverkit import NUMPY_COPY_WARNING, Fake, Live, live, tiny_settings

pytestmark = pytest.mark.filterwarnings(NUMPY_COPY_WARNING)

KEY = "sk-a1111-test"


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A live server with API keys on: the tiny pipeline as 'local' plus a fake 'remote'."""
    with pytest.MonkeyPatch.context() as mp:
        for leaked in ("IMAGEGATE_ROUTE", "IMAGEGATE_CONFIG"):  # a .env another test loaded
            mp.delenv(leaked, raising=False)
        mp.setenv("IMAGEGATE_DATA_DIR", str(tmp_path_factory.mktemp("a1111-data")))
        mp.setenv("IMAGEGATE_API_KEYS", f"other-key,{KEY}")
        settings = tiny_settings(tiny_model)
        from imagegate.gateway import build_providers

        providers = {**build_providers(settings), "remote": Fake("remote")}
        with live(settings, providers) as running:
            yield running


@pytest.fixture
def api(server: Live) -> webuiapi.WebUIApi:
    """webuiapi with Basic credentials, the key as password (its constructor calls /scripts)."""
    url = urlsplit(server.url)
    return webuiapi.WebUIApi(host=url.hostname, port=url.port, username="me", password=KEY)


def test_txt2img_returns_images_and_a1111_info(api: webuiapi.WebUIApi) -> None:
    """txt2img answers images, and info with seed, all_seeds and one infotext per image."""
    result = api.txt2img(prompt="a lighthouse", width=64, height=64, steps=2, seed=5, batch_size=2)
    assert len(result.images) == 2
    assert result.images[0].size == (64, 64)
    assert result.info["seed"] == 5
    assert result.info["all_seeds"] == [5, 6]
    assert result.info["infotexts"][1].startswith("a lighthouse")
    assert "Seed: 6" in result.info["infotexts"][1]
    assert result.images[0].info["parameters"].startswith("a lighthouse")


def test_sd_models_list_the_providers(api: webuiapi.WebUIApi) -> None:
    """Each provider is a checkpoint; samplers carry A1111's names."""
    assert {m["title"] for m in api.get_sd_models()} == {"local", "remote"}
    assert "Euler a" in [s["name"] for s in api.get_samplers()]


def test_setting_the_checkpoint_pins_a_provider(api: webuiapi.WebUIApi) -> None:
    """util_set_model picks the provider the next txt2img runs on; 'route' restores."""
    api.util_set_model("remote")
    assert api.util_get_current_model() == "remote"
    result = api.txt2img(prompt="a fox", width=64, height=64)
    assert result.info["provider"] == "remote"
    api.set_options({"sd_model_checkpoint": "route"})
    assert api.txt2img(prompt="a fox", width=64, height=64).info["provider"] == "local"


def test_progress_when_idle_reports_nothing_running(api: webuiapi.WebUIApi) -> None:
    """/progress answers A1111's shape: progress 0, no jobs, no current image."""
    progress = api.get_progress()
    assert progress["progress"] == 0
    assert progress["state"]["job_count"] == 0
    assert progress["current_image"] is None
    assert api.interrupt() == {}


def test_wrong_password_is_401_with_a_basic_challenge(server: Live) -> None:
    """A1111 clients with a wrong password get 401 and WWW-Authenticate: Basic."""
    answer = httpx.get(f"{server.url}/sdapi/v1/sd-models", auth=("me", "wrong"))
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic")


def test_validation_errors_use_a1111s_422(server: Live) -> None:
    """A bad field on /sdapi is 422 with A1111's detail list, never a 500."""
    answer = httpx.post(
        f"{server.url}/sdapi/v1/txt2img", json={"prompt": "x", "steps": "many"}, auth=("", KEY)
    )
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"][-1] == "steps"


def test_samplers_and_schedulers_are_what_the_route_runs(api: webuiapi.WebUIApi) -> None:
    """The diffusers route lists its samplers and schedulers only; a pinned provider that
    takes no sampler lists A1111's whole list."""
    samplers = [s["name"] for s in api.get_samplers()]
    assert "Euler a" in samplers
    assert "DPM fast" not in samplers
    assert [s["name"] for s in api.get_schedulers()] == ["automatic", "karras"]
    api.set_options({"sd_model_checkpoint": "remote"})
    try:
        assert len(api.get_samplers()) == 20
    finally:
        api.set_options({"sd_model_checkpoint": "route"})


def test_a_sampler_the_route_cannot_run_is_refused_naming_those_it_can(server: Live) -> None:
    """sampler_name "DPM fast" on the diffusers route: 422 naming the route's samplers."""
    answer = httpx.post(
        f"{server.url}/sdapi/v1/txt2img",
        json={"prompt": "x", "sampler_name": "DPM fast"},
        auth=("", KEY),
    )
    assert answer.status_code == 422
    assert "DPM++ 2M SDE" in answer.text


def test_scheduler_karras_runs_and_is_in_the_infotext(api: webuiapi.WebUIApi) -> None:
    """webuiapi's scheduler reaches diffusers (Karras sigmas) and the PNG says so."""
    result = api.txt2img(
        prompt="a fox", width=64, height=64, steps=2, sampler_name="Euler", scheduler="Karras"
    )
    assert "Sampler: Euler, Schedule type: Karras" in result.image.info["parameters"]
    assert "Schedule type: Karras" in result.info["infotexts"][0]


def test_interrupt_returns_the_partial_image_of_the_diffusers_run(
    api: webuiapi.WebUIApi, server: Live
) -> None:
    """/interrupt mid-run: diffusers stops sampling and txt2img answers 200 with the image."""
    import threading
    import time

    done: dict[str, webuiapi.WebUIApiResult] = {}
    worker = threading.Thread(
        target=lambda: done.setdefault(
            "result", api.txt2img(prompt="a fox", width=64, height=64, steps=150, seed=1)
        )
    )
    worker.start()
    deadline = time.monotonic() + 60
    while api.get_progress()["state"]["sampling_step"] < 1:
        assert time.monotonic() < deadline, "the run never made a step"
        time.sleep(0.02)
    assert api.interrupt() == {}
    worker.join(60)
    result = done["result"]
    assert result.image.size == (64, 64)
    job = httpx.get(f"{server.url}/v1/jobs/{result.info['job_id']}", auth=("", KEY)).json()
    assert job["status"] == "succeeded"
    assert job["step"] < 150


def test_interrupt_of_a_provider_that_cannot_stop_early_answers_200_without_images(
    api: webuiapi.WebUIApi, server: Live
) -> None:
    """A provider without partial results is cancelled: txt2img still answers 200, with no
    image and info.interrupted, so an A1111 client does not fail."""
    import threading
    import time

    remote = server.gateway.providers["remote"]
    assert isinstance(remote, Fake)
    remote.delay_s = 10.0
    done: dict[str, webuiapi.WebUIApiResult] = {}
    override = {"sd_model_checkpoint": "remote"}
    worker = threading.Thread(
        target=lambda: done.setdefault(
            "result", api.txt2img(prompt="a fox", width=64, height=64, override_settings=override)
        )
    )
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while not api.get_progress()["state"]["job"]:
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.02)
        assert api.interrupt() == {}
        worker.join(20)
    finally:
        remote.delay_s = 0.0
    result = done["result"]
    assert result.images == []
    assert result.info["interrupted"] is True
