"""The comfyui provider against its loopback fake: what the shared conformance suite can't see."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakekit
import pytest
from fakekit import drive
from pydantic import ValidationError
from vendor_comfyui import ComfyUIFake

from imagegate.errors import AuthError, ConfigError, InvalidRequest, UpstreamError
from imagegate.providers.base import Deadline, Progress
from imagegate.providers.comfyui import ComfyUIConfig, ComfyUIProvider
from imagegate.request import GeneratedImage, ImageRequest

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
REQUEST = ImageRequest(prompt="a lighthouse", width=64, height=64, steps=4, seed=7)


@pytest.fixture(scope="module")
def started() -> Iterator[ComfyUIFake]:
    """One fake ComfyUI for the module."""
    with ComfyUIFake() as running:
        yield running


@pytest.fixture
def fake(started: ComfyUIFake) -> ComfyUIFake:
    """The module's fake, with its records cleared."""
    for records in (started.prompts, started.interrupts, started.deleted, started.ws_clients):
        records.clear()
    started.step_s = 0.01
    return started


def provider(url: str, **settings: Any) -> ComfyUIProvider:
    config = {"url": url, "checkpoint": CHECKPOINT, "poll_interval_s": 0.02, **settings}
    return ComfyUIProvider("comfy", ComfyUIConfig.model_validate(config))


def generate(
    prov: ComfyUIProvider, req: ImageRequest = REQUEST, seen: list[Progress] | None = None
) -> list[GeneratedImage]:
    return fakekit.generate(prov, req, seen)


def sampler_inputs(body: dict[str, Any]) -> dict[str, Any]:
    graph = body["prompt"]
    return next(n["inputs"] for n in graph.values() if n["class_type"] == "KSampler")


@pytest.mark.parametrize(
    ("a1111", "sampler_name", "scheduler"),
    [
        ("Euler a", "euler_ancestral", "normal"),
        ("Euler", "euler", "normal"),
        ("DPM++ 2M Karras", "dpmpp_2m", "karras"),
        ("DPM++ 2M", "dpmpp_2m", "karras"),
        ("DPM++ 2M SDE", "dpmpp_2m_sde", "exponential"),
        ("DPM++ 2M SDE Karras", "dpmpp_2m_sde", "karras"),
        ("DPM++ 3M SDE", "dpmpp_3m_sde", "exponential"),
        ("LMS Karras", "lms", "karras"),
        ("DDIM", "ddim", "ddim_uniform"),
        ("UniPC", "uni_pc", "normal"),
        ("LCM SGM Uniform", "lcm", "sgm_uniform"),
    ],
)
def test_a1111_sampler_names_map_to_sampler_and_scheduler(
    fake: ComfyUIFake, a1111: str, sampler_name: str, scheduler: str
) -> None:
    """Each A1111 name becomes KSampler's sampler_name and scheduler per the mapping table."""
    generate(provider(fake.url), REQUEST.model_copy(update={"sampler": a1111}))
    inputs = sampler_inputs(fake.prompts[0])
    assert (inputs["sampler_name"], inputs["scheduler"]) == (sampler_name, scheduler)


@pytest.mark.parametrize("name", ["PLMS", "Restart"])
def test_sampler_without_an_equivalent_is_refused_listing_names(
    fake: ComfyUIFake, name: str
) -> None:
    """A sampler KSampler can't run fails before queueing, naming the ones it can."""
    with pytest.raises(InvalidRequest, match="DPM\\+\\+ 2M SDE Heun") as info:
        generate(provider(fake.url), REQUEST.model_copy(update={"sampler": name}))
    assert info.value.field == "sampler"
    assert fake.prompts == []


@pytest.mark.parametrize(("sampler", "scheduler"), [("DPM++ 2M", "polyexponential"), ("LCM", None)])
def test_scheduler_without_an_equivalent_is_refused_listing_names(
    fake: ComfyUIFake, sampler: str, scheduler: str | None
) -> None:
    """A schedule KSampler can't run (or LCM without one) fails before queueing."""
    req = REQUEST.model_copy(update={"sampler": sampler, "scheduler": scheduler})
    with pytest.raises(InvalidRequest, match="karras") as info:
        generate(provider(fake.url), req)
    assert info.value.field == "scheduler"
    assert fake.prompts == []


def test_scheduler_field_picks_the_comfyui_scheduler(fake: ComfyUIFake) -> None:
    """sampler 'Euler' with scheduler 'karras' runs KSampler euler / karras."""
    req = REQUEST.model_copy(update={"sampler": "Euler", "scheduler": "karras"})
    generate(provider(fake.url), req)
    inputs = sampler_inputs(fake.prompts[0])
    assert (inputs["sampler_name"], inputs["scheduler"]) == ("euler", "karras")


def test_builtin_workflow_carries_every_setting_typed(fake: ComfyUIFake) -> None:
    """Checkpoint, prompts, size, steps, cfg and seed land in their nodes with their types."""
    req = REQUEST.model_copy(update={"negative_prompt": "fog", "guidance": 6.5})
    generate(provider(fake.url), req)
    graph = fake.prompts[0]["prompt"]
    assert graph["4"]["inputs"]["ckpt_name"] == CHECKPOINT
    assert graph["6"]["inputs"]["text"] == "a lighthouse"
    assert graph["7"]["inputs"]["text"] == "fog"
    assert graph["5"]["inputs"] == {"width": 64, "height": 64, "batch_size": 1}
    inputs = graph["3"]["inputs"]
    assert (inputs["seed"], inputs["steps"], inputs["cfg"]) == (7, 4, 6.5)
    assert graph["9"]["inputs"]["filename_prefix"] == "imagegate"


def test_prompt_carries_our_client_id_and_a_uuid_prompt_id(fake: ComfyUIFake) -> None:
    """The POST names the socket's clientId and a prompt_id chosen here."""
    generate(provider(fake.url))
    body = fake.prompts[0]
    assert fake.ws_clients == [body["client_id"]]
    assert len(body["prompt_id"]) == 36


def test_websocket_progress_reports_every_step(fake: ComfyUIFake) -> None:
    """The socket's progress messages come through as steps out of the request's steps."""
    seen: list[Progress] = []
    generate(provider(fake.url), REQUEST.model_copy(update={"steps": 5}), seen)
    assert [p.step for p in seen] == [1, 2, 3, 4, 5]
    assert {p.steps for p in seen} == {5}


def test_polling_only_works_and_stays_silent(fake: ComfyUIFake) -> None:
    """websocket = false: no socket, the result comes from /history, no progress."""
    seen: list[Progress] = []
    [image] = generate(provider(fake.url, websocket=False), REQUEST, seen)
    assert fake.ws_clients == []
    assert seen == []
    assert (image.width, image.height, image.seed) == (64, 64, 7)


def test_server_without_websocket_falls_back_to_polling() -> None:
    """A socket that can't connect (a proxy without upgrades) only loses progress."""
    with ComfyUIFake(websocket=False) as plain:
        [image] = generate(provider(plain.url))
    assert image.seed == 7


def test_n_images_are_n_prompts_with_consecutive_seeds(fake: ComfyUIFake) -> None:
    """n = 3 queues three one-image prompts seeded 7, 8, 9, and progress spans all three."""
    seen: list[Progress] = []
    images = generate(provider(fake.url), REQUEST.model_copy(update={"n": 3}), seen)
    assert [sampler_inputs(body)["seed"] for body in fake.prompts] == [7, 8, 9]
    assert [image.seed for image in images] == [7, 8, 9]
    assert seen[-1] == Progress(12, 12)


def test_node_errors_name_the_node_input(fake: ComfyUIFake) -> None:
    """A 400 with node_errors is InvalidRequest naming the node input and our field."""
    fake.arm("node_errors")
    with pytest.raises(InvalidRequest, match="node 3 \\(KSampler\\) input sampler_name") as info:
        generate(provider(fake.url))
    assert info.value.field == "sampler"
    assert "value_not_in_list" in str(info.value)


def test_unknown_checkpoint_is_refused_naming_checkpoint(fake: ComfyUIFake) -> None:
    """A model ComfyUI doesn't have fails validation at node 4's ckpt_name."""
    with pytest.raises(InvalidRequest, match=r"ckpt_name: 'nope\.safetensors' not in") as info:
        generate(provider(fake.url), REQUEST.model_copy(update={"model": "nope.safetensors"}))
    assert info.value.field == "checkpoint"


def test_missing_node_type_names_the_workflow(fake: ComfyUIFake) -> None:
    """A graph-wide refusal (a custom node the server lacks) is InvalidRequest(workflow)."""
    fake.arm("missing_node_type")
    with pytest.raises(InvalidRequest, match="IPAdapterAdvanced does not exist") as info:
        generate(provider(fake.url))
    assert info.value.field == "workflow"


@pytest.mark.parametrize(
    ("armed", "said"),
    [("execution_error", "mat1 and mat2"), ("out_of_memory", "ran out of memory")],
)
def test_execution_error_is_an_upstream_error(fake: ComfyUIFake, armed: str, said: str) -> None:
    """A node raising while the prompt runs is UpstreamError quoting the exception."""
    fake.arm(armed)
    with pytest.raises(UpstreamError, match=said):
        generate(provider(fake.url))


def test_failure_removes_the_prompts_still_queued(fake: ComfyUIFake) -> None:
    """When the first of three prompts fails, the other two are deleted from the queue."""
    fake.arm("execution_error")
    with pytest.raises(UpstreamError):
        generate(provider(fake.url), REQUEST.model_copy(update={"n": 3}))
    ids = [body["prompt_id"] for body in fake.prompts]
    assert set(ids[1:]) <= set(fake.deleted)


def test_cancel_deletes_and_interrupts(fake: ComfyUIFake) -> None:
    """Cancelling deletes the queued prompt and interrupts the running one by its id."""
    prov = provider(fake.url)

    async def body() -> None:
        slow = REQUEST.model_copy(update={"steps": 200})
        task = asyncio.create_task(prov.generate(slow, Deadline(10), None))
        for _ in range(500):  # until the prompt is queued, 5 s at most
            if fake.prompts:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    drive(prov, body)
    prompt_id = fake.prompts[0]["prompt_id"]
    assert fake.deleted == [prompt_id]
    assert fake.interrupts == [{"prompt_id": prompt_id}]


def test_bearer_token_goes_to_the_reverse_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """api_key_env sends the token as Bearer on HTTP and the socket; without it, AuthError."""
    monkeypatch.setenv("COMFY_TOKEN", "proxy-token-0123456789")
    with ComfyUIFake(key="proxy-token-0123456789") as guarded:
        seen: list[Progress] = []
        generate(provider(guarded.url, api_key_env="COMFY_TOKEN"), REQUEST, seen)
        assert seen
        with pytest.raises(AuthError):
            generate(provider(guarded.url))


def write(tmp_path: Path, graph: Any) -> str:
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(graph), encoding="utf-8")
    return str(path)


CUSTOM: dict[str, Any] = {
    "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}},
    "11": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}, film grain",
                                                      "clip": ["10", 1]}},
    "12": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["10", 1]}},
    "13": {"class_type": "EmptyLatentImage", "inputs": {"width": "{{width}}", "height": 96,
                                                        "batch_size": 1}},
    "14": {"class_type": "KSampler", "inputs": {
        "seed": "{{seed}}", "steps": "{{steps}}", "cfg": 3.0, "sampler_name": "{{sampler_name}}",
        "scheduler": "{{scheduler}}", "denoise": 1.0, "model": ["10", 0], "positive": ["11", 0],
        "negative": ["12", 0], "latent_image": ["13", 0]}},
    "15": {"class_type": "VAEDecode", "inputs": {"samples": ["14", 0], "vae": ["10", 2]}},
    "16": {"class_type": "SaveImage", "inputs": {"filename_prefix": "mine-{{seed}}",
                                                 "images": ["15", 0]}},
}  # fmt: skip


def test_custom_workflow_placeholders_are_filled(fake: ComfyUIFake, tmp_path: Path) -> None:
    """Whole-string placeholders get typed values, embedded ones their text; the rest stays."""
    prov = ComfyUIProvider(
        "comfy", ComfyUIConfig(url=fake.url, workflow=write(tmp_path, CUSTOM), poll_interval_s=0.02)
    )
    [image] = generate(prov, REQUEST.model_copy(update={"sampler": "DPM++ 2M Karras"}))
    graph = fake.prompts[0]["prompt"]
    assert graph["11"]["inputs"]["text"] == "a lighthouse, film grain"
    assert graph["13"]["inputs"] == {"width": 64, "height": 96, "batch_size": 1}
    assert graph["14"]["inputs"]["seed"] == 7
    assert graph["14"]["inputs"]["steps"] == 4
    assert graph["14"]["inputs"]["sampler_name"] == "dpmpp_2m"
    assert graph["16"]["inputs"]["filename_prefix"] == "mine-7"
    assert (image.width, image.height) == (64, 96)
    assert prov.model == "workflow.json"


NO_SEED = {
    "14": {**CUSTOM["14"], "inputs": {**CUSTOM["14"]["inputs"], "seed": 1}},
    "16": {**CUSTOM["16"], "inputs": {**CUSTOM["16"]["inputs"], "filename_prefix": "mine"}},
}


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (NO_SEED, re.escape("lacks {{seed}}")),
        ({"12": {**CUSTOM["12"], "inputs": {"text": "{{negatve}}"}}}, "unknown placeholders"),
    ],
)
def test_custom_workflow_without_seed_or_with_a_typo_is_refused(
    tmp_path: Path, change: dict[str, Any], said: str
) -> None:
    """A workflow lacking {{seed}} or naming an unknown placeholder is a ConfigError."""
    config = ComfyUIConfig(workflow=write(tmp_path, {**CUSTOM, **change}))
    with pytest.raises(ConfigError, match=said) as info:
        ComfyUIProvider("comfy", config)
    assert info.value.key == "providers.comfy.workflow"


def test_ui_format_workflow_is_refused_with_the_export_hint(tmp_path: Path) -> None:
    """A UI-format file (nodes, links) asks for 'Export (API)'."""
    config = ComfyUIConfig(workflow=write(tmp_path, {"nodes": [], "links": [], "version": 0.4}))
    with pytest.raises(ConfigError, match="Export \\(API\\)"):
        ComfyUIProvider("comfy", config)


def test_builtin_workflow_needs_a_checkpoint() -> None:
    """Without checkpoint or workflow the config is refused, saying what to set."""
    with pytest.raises(ValidationError, match="needs a checkpoint"):
        ComfyUIConfig()


def test_probe_reports_the_version_and_checkpoint(fake: ComfyUIFake) -> None:
    """probe() reads /system_stats and finds the checkpoint in /object_info."""
    prov = provider(fake.url)
    detail = drive(prov, lambda: prov.probe(Deadline(5)))
    assert detail == f"ComfyUI 0.3.99, checkpoint {CHECKPOINT} present"


def test_probe_refuses_a_missing_checkpoint_listing_those_present(fake: ComfyUIFake) -> None:
    """probe() with a checkpoint ComfyUI lacks is InvalidRequest naming checkpoint."""
    prov = provider(fake.url, checkpoint="gone.safetensors")
    with pytest.raises(InvalidRequest, match=r"sdxl\.safetensors") as info:
        drive(prov, lambda: prov.probe(Deadline(5)))
    assert info.value.field == "checkpoint"


def test_describe_is_unpaid_and_names_the_workflow(fake: ComfyUIFake) -> None:
    """describe() shows the checkpoint as model, the built-in workflow and paid = False."""
    info = provider(fake.url).describe()
    assert (info["model"], info["workflow"], info["paid"]) == (CHECKPOINT, "built-in", False)


def test_probe_names_the_checkpoint_comfyui_means(fake: ComfyUIFake) -> None:
    """A checkpoint named without its extension is refused, naming ComfyUI's exact name."""
    prov = provider(fake.url, checkpoint="sdxl")
    with pytest.raises(InvalidRequest, match=r"ComfyUI names it 'sdxl\.safetensors'"):
        drive(prov, lambda: prov.probe(Deadline(5)))


def test_provenance_is_what_the_history_says_ran(fake: ComfyUIFake) -> None:
    """The record is the history graph's checkpoint, sampler, scheduler, steps and cfg."""
    req = REQUEST.model_copy(update={"sampler": "DPM++ 2M", "scheduler": "exponential"})
    [image] = generate(provider(fake.url), req)
    reported = image.reported
    assert reported is not None
    assert (reported.model, reported.sampler, reported.scheduler) == (
        CHECKPOINT,
        "DPM++ 2M",
        "exponential",
    )
    assert reported.steps == req.steps
