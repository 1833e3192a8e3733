"""Edits on the remote providers, against their loopback vendor fakes: what goes on the wire.

The conformance suite checks that each capable provider edits at all; these check the vendor
specifics: field names, the mask's polarity after conversion, defaults, sizes.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import fakekit
import pytest
from conformance import CANARY_ENV
from editkit import INIT, INIT_COLOUR, MASK, edit_request, pixel
from fakekit import solid_png
from faults import serve_app
from PIL import Image
from pydantic import ValidationError
from vendor_a1111 import A1111Fake, a1111_provider
from vendor_comfyui import ComfyUIFake
from vendor_gradio import gradio_app
from vendor_gradio import provider_for as gradio_provider
from vendor_hf_inference import I2I_MODEL, HFInferenceFake
from vendor_hf_inference import provider_for as hf_provider
from vendor_novita import NovitaFake
from vendor_openai import OpenAIFake
from vendor_stability import StabilityFake

from imagegate.errors import ConfigError, InvalidRequest
from imagegate.providers.comfyui import ComfyUIConfig, ComfyUIProvider
from imagegate.providers.novita import NovitaConfig, NovitaProvider
from imagegate.providers.openai import OpenAIConfig, OpenAIProvider
from imagegate.providers.stability import StabilityConfig, StabilityProvider
from imagegate.request import InputImage


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


# --------------------------------------------------------------------------- a1111


@pytest.fixture
def a1111() -> Iterator[tuple[A1111Fake, str]]:
    """The A1111 fake without auth, and its base URL."""
    state = A1111Fake()
    with serve_app(state.app()) as base:
        yield state, base


def test_a1111_img2img_sends_the_init_image_at_its_own_size(a1111: tuple[A1111Fake, str]) -> None:
    """img2img posts to /sdapi/v1/img2img with the init image, strength, and its size."""
    state, base = a1111
    provider = a1111_provider(base, auth_env=None)
    images = fakekit.generate(provider, edit_request())
    body = state.edits[0]
    assert base64.b64decode(body["init_images"][0]) == INIT.data
    assert body["denoising_strength"] == 0.5
    assert (body["width"], body["height"]) == (64, 64)
    assert "mask" not in body
    assert (images[0].width, images[0].height, images[0].seed) == (64, 64, 7)


def test_a1111_strength_defaults_to_a1111s_075(a1111: tuple[A1111Fake, str]) -> None:
    """Without a strength the body carries A1111's own default, 0.75."""
    state, base = a1111
    fakekit.generate(a1111_provider(base, auth_env=None), edit_request(strength=None))
    assert state.edits[0]["denoising_strength"] == 0.75


def test_a1111_inpaint_sends_the_mask_white_as_repaint(a1111: tuple[A1111Fake, str]) -> None:
    """The mask goes as an L image, white = repaint: only the middle is repainted."""
    state, base = a1111
    req = edit_request(mask=True, inpaint_fill="latent noise", mask_blur=6)
    images = fakekit.generate(a1111_provider(base, auth_env=None), req)
    body = state.edits[0]
    assert _image(body["mask"]).mode == "L"
    assert (body["inpainting_fill"], body["mask_blur"], body["inpaint_full_res"]) == (2, 6, False)
    assert pixel(images[0].png, 2, 2) == INIT_COLOUR
    assert pixel(images[0].png, 32, 32) != INIT_COLOUR


def test_a1111_missing_init_image_is_invalid_request(a1111: tuple[A1111Fake, str]) -> None:
    """A1111's 404 "Init image not found" is an InvalidRequest naming images."""
    state, base = a1111
    state.arm("init_image_not_found")
    error = fakekit.failure(a1111_provider(base, auth_env=None), edit_request())
    assert isinstance(error, InvalidRequest)
    assert error.field == "images"


# --------------------------------------------------------------------------- openai


@pytest.fixture
def openai() -> Iterator[tuple[OpenAIFake, str]]:
    """The OpenAI fake accepting any key, and its /v1 base URL."""
    state = OpenAIFake()
    with serve_app(state.app()) as base:
        yield state, f"{base}/v1"


def _oai(url: str, **cfg: object) -> OpenAIProvider:
    return OpenAIProvider(
        "oai", OpenAIConfig.model_validate({"url": url, "api_key_env": None} | cfg)
    )


def test_openai_one_image_is_an_image_part_typed_by_its_content(
    openai: tuple[OpenAIFake, str],
) -> None:
    """One input image goes as the multipart part ``image`` with a file name and image/png."""
    state, url = openai
    fakekit.generate(_oai(url, model="gpt-image-1"), edit_request())
    fields, parts = state.edit_forms[0]
    assert [(p[0], p[2]) for p in parts] == [("image", "image/png")]
    assert parts[0][1].endswith(".png")
    assert parts[0][3] == INIT.data
    assert (fields["prompt"], fields["model"]) == ("a lighthouse", "gpt-image-1")


def test_openai_several_images_are_image_brackets_parts(openai: tuple[OpenAIFake, str]) -> None:
    """Several input images go as one ``image[]`` part each, in order."""
    state, url = openai
    fakekit.generate(_oai(url, model="gpt-image-1"), edit_request(images=(INIT, INIT)))
    assert [p[0] for p in state.edit_forms[0][1]] == ["image[]", "image[]"]


def test_openai_mask_is_sent_transparent_where_to_edit(openai: tuple[OpenAIFake, str]) -> None:
    """The internal mask (white = edit) becomes alpha 0 there: only the middle is repainted."""
    state, url = openai
    images = fakekit.generate(_oai(url, model="gpt-image-1"), edit_request(mask=True))
    mask = next(p for p in state.edit_forms[0][1] if p[0] == "mask")
    with Image.open(io.BytesIO(mask[3])) as img:
        alpha = img.getchannel("A")
        assert (alpha.getpixel((32, 32)), alpha.getpixel((2, 2))) == (0, 255)
    assert pixel(images[0].png, 2, 2) == INIT_COLOUR
    assert pixel(images[0].png, 32, 32) != INIT_COLOUR


def test_openai_strength_rides_only_as_an_extension(openai: tuple[OpenAIFake, str]) -> None:
    """OpenAI has no strength: it is a form field only with extensions on."""
    state, url = openai
    fakekit.generate(_oai(url), edit_request())
    fakekit.generate(_oai(url, extensions=True), edit_request())
    assert "strength" not in state.edit_forms[0][0]
    assert state.edit_forms[1][0]["strength"] == "0.5"


def test_openai_capabilities_follow_the_model() -> None:
    """dall-e-3 edits nothing, dall-e-2 inpaints and varies, GPT image models edit."""
    url = "http://127.0.0.1:9/v1"
    assert _oai(url, model="dall-e-3").capabilities == {"txt2img"}
    assert _oai(url, model="dall-e-2").capabilities == {"txt2img", "inpaint", "variations"}
    assert _oai(url, model="gpt-image-1").capabilities == {"txt2img", "img2img", "inpaint"}


def test_openai_variation_is_a_png_without_prompt(openai: tuple[OpenAIFake, str]) -> None:
    """A variation posts one PNG ``image`` part to /images/variations, with no prompt."""
    state, url = openai
    jpeg = InputImage.from_bytes(solid_png(64, 64, INIT_COLOUR, "JPEG"))
    req = edit_request(images=(jpeg,), variation=True, strength=None)
    images = fakekit.generate(_oai(url, model="dall-e-2"), req)
    fields, parts = state.edit_forms[0]
    assert "prompt" not in fields
    assert [(p[0], p[2]) for p in parts] == [("image", "image/png")]
    assert parts[0][3].startswith(b"\x89PNG")
    assert len(images) == 1


# --------------------------------------------------------------------------- stability


@pytest.fixture
def stability(monkeypatch: pytest.MonkeyPatch) -> Iterator[StabilityFake]:
    """The Stability fake, with a key in the environment."""
    monkeypatch.setenv(CANARY_ENV, "sk-test")
    with StabilityFake() as fake:
        yield fake


def _stability(url: str, **cfg: object) -> StabilityProvider:
    config = {"url": url, "api_key_env": CANARY_ENV} | cfg
    return StabilityProvider("stability", StabilityConfig.model_validate(config))


def test_stability_img2img_is_sd3_image_to_image(stability: StabilityFake) -> None:
    """img2img posts to generate/sd3 with mode image-to-image, the image part and strength."""
    images = fakekit.generate(_stability(stability.url, model="sd3.5-medium"), edit_request())
    call = stability.calls[0]
    assert call["model"] == "sd3"
    assert call["form"]["mode"] == "image-to-image"
    assert (call["form"]["strength"], call["form"]["model"]) == ("0.5", "sd3.5-medium")
    assert "aspect_ratio" not in call["form"]
    assert stability.uploads[0]["image"][2] == INIT.data
    assert images[0].seed == 7


def test_stability_ultra_takes_the_image_on_its_own_endpoint(stability: StabilityFake) -> None:
    """With model ultra, img2img goes to generate/ultra with image and strength, no mode."""
    fakekit.generate(_stability(stability.url, model="ultra"), edit_request())
    call = stability.calls[0]
    assert call["model"] == "ultra"
    assert "mode" not in call["form"]
    assert call["form"]["strength"] == "0.5"


def test_stability_inpaint_sends_the_mask_white_as_repaint(stability: StabilityFake) -> None:
    """Inpainting posts to edit/inpaint with the L mask: only the middle is repainted."""
    images = fakekit.generate(_stability(stability.url), edit_request(mask=True))
    assert stability.calls[0]["model"] == "inpaint"
    assert "strength" not in stability.calls[0]["form"]
    assert stability.uploads[0]["mask"][2] == MASK.data
    assert pixel(images[0].png, 2, 2) == INIT_COLOUR
    assert pixel(images[0].png, 32, 32) != INIT_COLOUR


# --------------------------------------------------------------------------- novita


@pytest.fixture
def novita(monkeypatch: pytest.MonkeyPatch) -> Iterator[NovitaFake]:
    """The Novita fake (API and image host), with a key in the environment."""
    monkeypatch.setenv(CANARY_ENV, "key")
    with NovitaFake() as fake:
        yield fake


def _novita(fake: NovitaFake, **cfg: object) -> NovitaProvider:
    config = {"url": fake.url, "api_key_env": CANARY_ENV, "poll_interval_s": 0.01} | cfg
    return NovitaProvider("novita", NovitaConfig.model_validate(config))


def test_novita_img2img_is_an_img2img_task_with_plain_base64(
    novita: NovitaFake,
) -> None:
    """img2img submits /v3/async/img2img with the image as plain base64 and the strength."""
    images = fakekit.generate(_novita(novita), edit_request(width=128, height=128))
    req = novita.edits[0]["request"]
    assert base64.b64decode(req["image_base64"], validate=True) == INIT.data
    assert (req["strength"], req["width"], req["seed"]) == (0.5, 128, 7)
    assert (images[0].width, images[0].seed) == (128, 7)


def test_novita_inpaint_runs_on_the_inpainting_checkpoint(
    novita: NovitaFake,
) -> None:
    """Inpainting submits /v3/async/inpainting on inpaint_model with the L mask, no size."""
    images = fakekit.generate(_novita(novita), edit_request(mask=True))
    req = novita.edits[0]["request"]
    assert req["model_name"] == novita.inpaint_models[0]
    assert base64.b64decode(req["mask_image_base64"]) == MASK.data
    assert "width" not in req
    assert pixel(images[0].png, 2, 2) == INIT_COLOUR
    assert pixel(images[0].png, 32, 32) != INIT_COLOUR


def test_novita_wrong_inpainting_model_is_invalid_request(
    novita: NovitaFake,
) -> None:
    """A checkpoint that is not an inpainting one is Novita's 400, an InvalidRequest."""
    provider = _novita(novita, inpaint_model="sd_xl_base_1.0.safetensors")
    error = fakekit.failure(provider, edit_request(mask=True))
    assert isinstance(error, InvalidRequest)
    assert "inpainting" in str(error)


# --------------------------------------------------------------------------- hf-inference


def test_hf_img2img_posts_the_image_as_base64_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """image-to-image posts to img2img_model with the image as inputs and prompt in parameters."""
    monkeypatch.setenv(CANARY_ENV, "hf_token")
    with HFInferenceFake() as fake:
        provider = hf_provider(fake.url, img2img_model=I2I_MODEL)
        images = fakekit.generate(provider, edit_request(width=96, height=64))
    _, body = fake.calls[0]
    assert fake.paths[0] == f"/models/{I2I_MODEL}"
    assert base64.b64decode(body["inputs"]) == INIT.data
    params = body["parameters"]
    assert (params["prompt"], params["strength"], params["seed"]) == ("a lighthouse", 0.5, 7)
    assert params["target_size"] == {"width": 96, "height": 64}
    assert (images[0].width, images[0].height) == (96, 64)


# --------------------------------------------------------------------------- comfyui


@pytest.fixture
def comfyui() -> Iterator[ComfyUIFake]:
    """The ComfyUI fake without a proxy in front."""
    with ComfyUIFake() as fake:
        yield fake


def _comfyui(fake: ComfyUIFake, **cfg: object) -> ComfyUIProvider:
    config = {"url": fake.url, "checkpoint": fake.checkpoints[0], "poll_interval_s": 0.02}
    return ComfyUIProvider("comfyui", ComfyUIConfig.model_validate(config | cfg))


def test_comfyui_img2img_uploads_the_image_then_loads_it(comfyui: ComfyUIFake) -> None:
    """The image goes to /upload/image (subfolder imagegate); LoadImage names what came back."""
    images = fakekit.generate(_comfyui(comfyui), edit_request())
    graph = comfyui.prompts[0]["prompt"]
    loaded = next(n for n in graph.values() if n["class_type"] == "LoadImage")
    assert loaded["inputs"]["image"].startswith("imagegate/")
    assert comfyui.uploads[loaded["inputs"]["image"]] == INIT.data
    assert graph["3"]["inputs"]["denoise"] == 0.5
    assert (images[0].width, images[0].height, images[0].seed) == (64, 64, 7)


def test_comfyui_inpaint_masks_with_the_blurred_l_mask(comfyui: ComfyUIFake) -> None:
    """The inpaint graph loads the mask's red channel (white = repaint), blurred by mask_blur."""
    images = fakekit.generate(_comfyui(comfyui), edit_request(mask=True, mask_blur=2))
    graph = comfyui.prompts[0]["prompt"]
    mask = next(n for n in graph.values() if n["class_type"] == "LoadImageMask")
    assert mask["inputs"]["channel"] == "red"
    assert comfyui.uploads[mask["inputs"]["image"]] != MASK.data  # blurred
    assert pixel(images[0].png, 2, 2) == INIT_COLOUR
    assert pixel(images[0].png, 32, 32) != INIT_COLOUR


def test_comfyui_edit_workflow_without_image_placeholder_is_refused(
    comfyui: ComfyUIFake, tmp_path: Path
) -> None:
    """A custom img2img workflow that lacks {{image}} is a ConfigError naming its key."""
    path = tmp_path / "i2i.json"
    path.write_text(
        json.dumps(
            {"1": {"class_type": "KSampler", "inputs": {"seed": "{{seed}}", "text": "{{prompt}}"}}}
        )
    )
    with pytest.raises(ConfigError) as info:
        _comfyui(comfyui, img2img_workflow=str(path))
    assert "img2img_workflow" in str(info.value.key)


def test_comfyui_without_checkpoint_declares_no_edits(comfyui: ComfyUIFake, tmp_path: Path) -> None:
    """A text-to-image workflow of one's own and no checkpoint: the built-in edits cannot run."""
    path = tmp_path / "t2i.json"
    path.write_text(
        json.dumps(
            {"1": {"class_type": "KSampler", "inputs": {"seed": "{{seed}}", "text": "{{prompt}}"}}}
        )
    )
    provider = _comfyui(comfyui, checkpoint=None, workflow=str(path))
    assert provider.capabilities == {"txt2img"}


# --------------------------------------------------------------------------- gradio


def test_gradio_declares_edits_only_when_the_image_parameter_is_named() -> None:
    """Which input takes the image is the app's choice: no image_param, no edits."""
    url = "http://127.0.0.1:9"
    assert gradio_provider(url).capabilities == {"txt2img"}
    assert gradio_provider(url, image_param="image").capabilities == {"txt2img", "img2img"}
    both = gradio_provider(url, image_param="image", mask_param="mask")
    assert both.capabilities == {"txt2img", "img2img", "inpaint"}


def test_gradio_inpaint_uploads_image_and_mask_then_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both files go to /gradio_api/upload, then the call paints only the mask's white."""
    monkeypatch.setenv(CANARY_ENV, "hf_token")
    app = gradio_app()
    provider = gradio_provider(app.url, api_name="inpaint", image_param="image", mask_param="mask")
    images = fakekit.generate(provider, edit_request(mask=True, strength=None, steps=None))
    assert len(app.state.paths("POST", "/gradio_api/upload")) == 1
    assert pixel(images[0].png, 2, 2) == INIT_COLOUR
    assert pixel(images[0].png, 32, 32) != INIT_COLOUR
    assert images[0].seed == 7


def test_gradio_strength_without_a_parameter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inpaint endpoint has no strength: a request with one is refused, not dropped."""
    monkeypatch.setenv(CANARY_ENV, "hf_token")
    app = gradio_app()
    provider = gradio_provider(app.url, api_name="inpaint", image_param="image", mask_param="mask")
    error = fakekit.failure(provider, edit_request(mask=True, steps=None))
    assert isinstance(error, InvalidRequest)
    assert error.field == "strength"


# --------------------------------------------------------------------------- limits


def test_more_images_than_the_provider_takes_is_refused_before_sending(
    a1111: tuple[A1111Fake, str],
) -> None:
    """Two input images to a provider that takes one: InvalidRequest naming images, not sent."""
    state, base = a1111
    error = fakekit.failure(a1111_provider(base, auth_env=None), edit_request(images=(INIT, INIT)))
    assert isinstance(error, InvalidRequest)
    assert (error.field, error.limit) == ("images", "at most 1")
    assert state.edits == []


def test_dall_e_2_takes_one_image_gpt_image_sixteen(openai: tuple[OpenAIFake, str]) -> None:
    """dall-e-2 refuses a second input image; a GPT image model takes it."""
    _, url = openai
    two = edit_request(images=(INIT, INIT), mask=True)
    error = fakekit.failure(_oai(url, model="dall-e-2"), two)
    assert isinstance(error, InvalidRequest)
    assert error.field == "images"
    assert len(fakekit.generate(_oai(url, model="gpt-image-1"), two)) == 1


class _Forgetful(dict[str, bytes]):
    """An input folder that keeps nothing (ComfyUI restarted with a fresh one, say)."""

    def __setitem__(self, key: str, value: bytes) -> None:
        pass


def test_comfyui_an_image_it_lost_is_invalid_request_naming_images(
    comfyui: ComfyUIFake,
) -> None:
    """LoadImage naming a file ComfyUI no longer has fails validation: InvalidRequest(images)."""
    comfyui.uploads = _Forgetful()
    error = fakekit.failure(_comfyui(comfyui), edit_request())
    assert isinstance(error, InvalidRequest)
    assert error.field == "images"
    assert "Invalid image file" in str(error)


def test_gradio_mask_param_without_image_param_is_a_config_error() -> None:
    """A mask parameter alone cannot inpaint: the config is refused, naming image_param."""
    with pytest.raises(ValidationError, match="image_param"):
        gradio_provider("http://127.0.0.1:9", mask_param="mask")
