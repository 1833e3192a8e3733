"""`imagegate serve` in front of the A1111 fake rebuilt from a real A1111 1.10.1's answers:
it answers like A1111 (keys and JSON types of every recorded answer), and real clients
(webuiapi, the official openai client) work against it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import webuiapi
from faults import serve_app
from serverkit import free_port, stopped_at_exit, wait_until_up
from vendor_a1111 import RECORDED, A1111Fake

RECORDINGS = sorted(path.stem for path in RECORDED.glob("*.json"))
TXT2IMG = {
    "txt2img": {
        "prompt": "a red fox",
        "negative_prompt": "blurry",
        "steps": 1,
        "seed": 3,
        "width": 64,
        "height": 64,
        "sampler_name": "Euler a",
        "cfg_scale": 7,
    },
    "txt2img-run": {"prompt": "a red fox running", "steps": 10, "seed": 11, "width": 128,
                    "height": 128, "sampler_name": "Euler a"},
    "txt2img-int": {"prompt": "a red fox interrupted", "steps": 30, "seed": 12, "width": 128,
                    "height": 128, "sampler_name": "Euler a"},
}  # fmt: skip


@dataclass
class Served:
    """`imagegate serve` (url) in front of the fake A1111 (fake)."""

    url: str
    fake: A1111Fake

    def sdapi(self) -> str:
        return f"{self.url}/sdapi/v1"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The fake A1111 on loopback, and `imagegate serve` routing to it as provider 'a1111'."""
    home = tmp_path_factory.mktemp("fidelity")
    fake = A1111Fake(step_s=0.005)
    with serve_app(fake.app()) as backend:
        config = home / "imagegate.toml"
        config.write_text(
            '[gateway]\nroute = ["a1111"]\n\n[providers.a1111]\ntype = "a1111"\n'
            f'url = "{backend}"\nprogress_interval_s = 0.05\n'
        )
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("IMAGEGATE_CONFIG", "IMAGEGATE_ROUTE", "IMAGEGATE_API_KEYS")
        }
        env |= {"IMAGEGATE_DATA_DIR": str(home / "data"), "HF_HUB_OFFLINE": "1"}
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "imagegate", "serve", "--port", str(port), "--config",
             str(config)],
            cwd=home,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        with stopped_at_exit(proc):
            url = f"http://127.0.0.1:{port}"
            wait_until_up(f"{url}/healthz", proc, "imagegate serve did not start", every_s=0.1)
            yield Served(url, fake)


def json_type(value: Any) -> str:
    """The JSON type of a decoded value (int and float are both numbers)."""
    for kind, name in ((bool, "boolean"), (int | float, "number"), (str, "string")):
        if isinstance(value, kind):
            return name
    if isinstance(value, dict):
        return "object"
    return "array" if isinstance(value, list) else "null"


def differences(recorded: Any, ours: Any, path: str = "$") -> list[str]:
    """Where ``ours`` lacks a key of ``recorded`` or has another JSON type (a recorded null
    says nothing about the type; list items are compared with the recorded item at the same
    place, or the last one)."""
    if recorded is None:
        return []
    if json_type(recorded) != json_type(ours):
        return [f"{path}: {json_type(recorded)} recorded, {json_type(ours)} here"]
    if isinstance(recorded, dict):
        found = []
        for key, value in recorded.items():
            if key not in ours:
                found.append(f"{path}.{key}: missing")
            elif key == "info" and isinstance(value, str):
                found += differences(json.loads(value), json.loads(ours[key]), f"{path}.info")
            else:
                found += differences(value, ours[key], f"{path}.{key}")
        return found
    if isinstance(recorded, list) and recorded:
        last = len(recorded) - 1
        return [
            found
            for i, item in enumerate(ours)
            for found in differences(recorded[min(i, last)], item, f"{path}[{i}]")
        ]
    return []


def while_running(served: Served, steps: int, action: Callable[[], Any]) -> tuple[Any, Any]:
    """Run ``action`` while a ``steps``-step txt2img runs; (its result, txt2img's answer)."""
    served.fake.step_s = 0.05
    answer: dict[str, Any] = {}

    def run() -> None:
        body = {**TXT2IMG["txt2img-int"], "steps": steps}
        answer["value"] = httpx.post(f"{served.sdapi()}/txt2img", json=body, timeout=60)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        _wait_until_running(served)
        result = action()
    finally:
        if "value" not in answer:
            httpx.post(f"{served.sdapi()}/interrupt")
        worker.join(60)
        served.fake.step_s = 0.005
    return result, answer["value"]


def ours(served: Served, name: str) -> httpx.Response:
    """imagegate's answer to the request the recording ``name`` answered."""
    if name in ("txt2img", "txt2img-run"):
        return httpx.post(f"{served.sdapi()}/txt2img", json=TXT2IMG[name], timeout=30)
    if name == "txt2img-int":
        _, answer = while_running(served, 30, lambda: httpx.post(f"{served.sdapi()}/interrupt"))
        return answer  # type: ignore[no-any-return]
    if name in ("progress-run", "progress-run-skip"):
        answer, _ = while_running(served, 40, lambda: httpx.get(f"{served.sdapi()}/progress"))
        return answer  # type: ignore[no-any-return]
    return httpx.get(f"{served.sdapi()}/{name}")


@pytest.mark.parametrize("name", RECORDINGS)
def test_every_recorded_answer_has_a1111s_keys_and_json_types(served: Served, name: str) -> None:
    """For each recorded A1111 answer, imagegate's answer to the same request has every key,
    with the same JSON type."""
    recorded = json.loads((RECORDED / f"{name}.json").read_text())
    answer = ours(served, name)
    assert answer.status_code == (404 if name == "sd-modules" else 200), answer.text
    assert differences(recorded, answer.json()) == []


def test_txt2img_defaults_are_a1111s(served: Served) -> None:
    """CFG 7, sampler_index "Euler", override_settings null, a random subseed, a model hash."""
    answer = httpx.post(f"{served.sdapi()}/txt2img", json={"prompt": "a fox", "steps": 1}).json()
    info = json.loads(answer["info"])
    assert answer["parameters"]["cfg_scale"] == 7.0
    assert answer["parameters"]["sampler_index"] == "Euler"
    assert answer["parameters"]["override_settings"] is None
    assert info["cfg_scale"] == 7.0
    assert isinstance(info["subseed"], int)
    assert info["subseed"] >= 0
    assert info["sd_model_hash"] == "cd5a484377"
    assert info["sd_model_name"] == "sd15-random-b"


@pytest.fixture
def api(served: Served) -> webuiapi.WebUIApi:
    host, port = served.url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port))


def test_webuiapi_txt2img_with_a_scheduler_runs_it(api: webuiapi.WebUIApi, served: Served) -> None:
    """webuiapi's scheduler reaches A1111, and the infotext says the schedule that ran."""
    result = api.txt2img(
        prompt="a fox", width=64, height=64, steps=2, sampler_name="DPM++ 2M", scheduler="Karras"
    )
    assert result.image.size == (64, 64)
    assert served.fake.bodies[-1]["scheduler"] == "karras"
    assert "Schedule type: Karras" in result.info["infotexts"][0]
    assert "Model hash: cd5a484377" in result.image.info["parameters"]


def test_webuiapi_lists_schedulers_and_samplers(api: webuiapi.WebUIApi) -> None:
    """get_schedulers and get_samplers answer A1111's lists."""
    assert "karras" in [s["name"] for s in api.get_schedulers()]
    samplers = {s["name"]: s for s in api.get_samplers()}
    assert samplers["Euler a"]["aliases"] == ["k_euler_a", "k_euler_ancestral"]
    assert len(samplers) == 20


def test_webuiapi_interrupt_mid_run_returns_the_partial_image(
    api: webuiapi.WebUIApi, served: Served
) -> None:
    """interrupt() while txt2img runs: the txt2img answers 200 with the image made so far."""
    served.fake.step_s = 0.05
    result: dict[str, Any] = {}

    def run() -> None:
        result["value"] = api.txt2img(prompt="a fox", width=64, height=64, steps=150)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        _wait_until_running(served)
        assert api.interrupt() == {}
        worker.join(30)
    finally:
        served.fake.step_s = 0.005
    assert not worker.is_alive()
    assert result["value"].image.size == (64, 64)
    assert served.fake.step < 150


def test_an_unknown_sampler_is_refused_naming_the_allowed_ones(served: Served) -> None:
    """A sampler no provider of the route runs is refused before any job, naming the list."""
    answer = httpx.post(
        f"{served.sdapi()}/txt2img", json={"prompt": "a fox", "sampler_name": "Foo"}
    )
    assert answer.status_code == 422
    assert "DPM++ 2M SDE Heun" in answer.text


def test_options_keep_only_what_imagegate_understands(served: Served) -> None:
    """POST /options acknowledges unknown and ignored options; only the checkpoint is kept."""
    answer = httpx.post(
        f"{served.sdapi()}/options",
        json={"sd_model_checkpoint": "a1111", "made_up": "x" * 1000, "samples_format": "jpg"},
    )
    assert answer.status_code == 200
    options = httpx.get(f"{served.sdapi()}/options").json()
    assert options["sd_model_checkpoint"] == "a1111"
    assert "made_up" not in options
    assert options["samples_format"] == "png"
    httpx.post(f"{served.sdapi()}/options", json={"sd_model_checkpoint": "route"})


def test_an_overlong_checkpoint_is_refused_naming_the_field(served: Served) -> None:
    """sd_model_checkpoint past 256 characters is a 422 naming it; nothing is stored."""
    answer = httpx.post(f"{served.sdapi()}/options", json={"sd_model_checkpoint": "x" * 300})
    assert answer.status_code == 422
    assert "sd_model_checkpoint" in answer.text
    assert len(answer.text) < 2000
    assert httpx.get(f"{served.sdapi()}/options").json()["sd_model_checkpoint"] == "route"


def test_openai_client_works_against_serve(served: Served) -> None:
    """The official openai client gets a PNG from the A1111 backend through imagegate."""
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
    result = client.images.generate(prompt="a fox", size="64x64", response_format="b64_json")
    assert result.data is not None
    assert result.data[0].b64_json is not None
    assert base64.b64decode(result.data[0].b64_json).startswith(b"\x89PNG")


def _wait_until_running(served: Served) -> None:
    """Until the fake runs its second step and a progress poll of imagegate's has landed."""
    deadline = time.monotonic() + 20
    while served.fake.step < 2:
        assert time.monotonic() < deadline, "the txt2img never started"
        time.sleep(0.02)
    time.sleep(0.2)
