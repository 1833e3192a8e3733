"""The hf-inference provider against a loopback fake of the router and the Hub."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from conformance import CANARY, CANARY_ENV
from PIL import Image
from vendor_hf_inference import MODEL, HFInferenceFake, hf_fake, provider_for

from imagegate.config import parse_settings
from imagegate.errors import AuthError, InvalidRequest, ProtocolError, Unavailable
from imagegate.providers.base import Deadline, Progress
from imagegate.providers.hf_inference import HFInferenceConfig, HFInferenceProvider
from imagegate.request import GeneratedImage, ImageRequest

__all__ = ["hf_fake"]

T = TypeVar("T")
REQUEST = ImageRequest(
    prompt="a lighthouse", negative_prompt="fog", width=64, height=96, steps=2, guidance=3.5,
    seed=11,
)  # fmt: skip


@pytest.fixture(autouse=True)
def canary(monkeypatch: pytest.MonkeyPatch) -> None:
    """The token every provider here reads."""
    monkeypatch.setenv(CANARY_ENV, CANARY)


def run(target: HFInferenceProvider, body: Callable[[], Awaitable[T]]) -> T:
    """Run ``body`` on one loop, then close the provider on it."""

    async def main() -> T:
        try:
            return await body()
        finally:
            await target.aclose()

    return asyncio.run(main())


def generate(
    target: HFInferenceProvider,
    request: ImageRequest = REQUEST,
    progress: Callable[[Progress], None] | None = None,
) -> list[GeneratedImage]:
    return run(target, lambda: target.generate(request, Deadline(20), progress))


def test_body_and_headers_follow_the_task_spec(hf_fake: HFInferenceFake) -> None:
    """inputs + parameters with the task's names, Bearer token, Accept image/png."""
    [image] = generate(provider_for(hf_fake.url))
    headers, body = hf_fake.calls[0]
    assert body == {
        "inputs": "a lighthouse",
        "parameters": {
            "negative_prompt": "fog", "width": 64, "height": 96, "num_inference_steps": 2,
            "guidance_scale": 3.5, "seed": 11,
        },
    }  # fmt: skip
    assert headers["authorization"] == f"Bearer {CANARY}"
    assert headers["accept"] == "image/png"
    assert "x-wait-for-model" not in headers
    assert hf_fake.paths == [f"/models/{MODEL}"]
    assert (image.width, image.height, image.seed) == (64, 96, 11)


def test_unset_fields_are_left_to_the_model(hf_fake: HFInferenceFake) -> None:
    """Only the fields the request sets are sent, and always a seed."""
    generate(provider_for(hf_fake.url), ImageRequest(prompt="a lighthouse"))
    params = hf_fake.calls[0][1]["parameters"]
    assert list(params) == ["seed"]


def test_n_images_are_n_calls_with_counting_seeds(hf_fake: HFInferenceFake) -> None:
    """n = 3 makes three calls with seeds seed, seed+1, seed+2, reporting each."""
    seen: list[Progress] = []
    images = generate(provider_for(hf_fake.url), REQUEST.model_copy(update={"n": 3}), seen.append)
    assert [img.seed for img in images] == [11, 12, 13]
    assert [call[1]["parameters"]["seed"] for call in hf_fake.calls] == [11, 12, 13]
    assert seen == [Progress(1, 3), Progress(2, 3), Progress(3, 3)]


def test_loading_model_is_unavailable_for_its_estimated_time(hf_fake: HFInferenceFake) -> None:
    """503 "currently loading" is Unavailable with retry_after = estimated_time."""
    hf_fake.arm("model_loading")
    with pytest.raises(Unavailable) as info:
        generate(provider_for(hf_fake.url))
    assert info.value.retry_after == 12.5
    assert "loading" in str(info.value)


def test_wait_for_model_asks_the_server_to_hold(hf_fake: HFInferenceFake) -> None:
    """wait_for_model = true sends x-wait-for-model: true."""
    generate(provider_for(hf_fake.url, wait_for_model=True))
    assert hf_fake.calls[0][0]["x-wait-for-model"] == "true"


def test_jpeg_answer_comes_back_as_png(hf_fake: HFInferenceFake) -> None:
    """A JPEG image is re-encoded as PNG with its real size."""
    hf_fake.image_format = "JPEG"
    [image] = generate(provider_for(hf_fake.url))
    assert image.png.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(image.png)) as decoded:
        assert decoded.size == (64, 96)


def test_json_where_an_image_belongs_is_a_protocol_error(hf_fake: HFInferenceFake) -> None:
    """A 200 answer that is JSON, not an image, is a ProtocolError."""
    hf_fake.json_instead = True
    with pytest.raises(ProtocolError, match="not an image"):
        generate(provider_for(hf_fake.url))


def test_sampler_goes_as_its_diffusers_scheduler(hf_fake: HFInferenceFake) -> None:
    """An A1111 sampler name is sent as the diffusers scheduler class."""
    generate(provider_for(hf_fake.url), REQUEST.model_copy(update={"sampler": "Euler a"}))
    assert hf_fake.calls[0][1]["parameters"]["scheduler"] == "EulerAncestralDiscreteScheduler"


def test_sampler_variant_the_api_cannot_take_is_refused(hf_fake: HFInferenceFake) -> None:
    """A Karras variant (scheduler options) is an InvalidRequest naming sampler, not dropped."""
    with pytest.raises(InvalidRequest) as info:
        generate(
            provider_for(hf_fake.url), REQUEST.model_copy(update={"sampler": "DPM++ 2M Karras"})
        )
    assert info.value.field == "sampler"
    assert hf_fake.calls == []


def test_request_model_overrides_the_configured_one(hf_fake: HFInferenceFake) -> None:
    """A model named in the request is the one posted to."""
    generate(provider_for(hf_fake.url), REQUEST.model_copy(update={"model": "other/model"}))
    assert hf_fake.paths == ["/models/other/model"]


def test_endpoint_url_model_is_posted_to_directly(hf_fake: HFInferenceFake) -> None:
    """A model given as an http(s) URL (an Inference Endpoint) is the URL posted to."""
    target = provider_for("http://127.0.0.1:9", model=f"{hf_fake.url}/models/at-endpoint")
    generate(target)
    assert hf_fake.paths == ["/models/at-endpoint"]


def test_probe_reads_the_model_status_with_the_token(hf_fake: HFInferenceFake) -> None:
    """probe() asks the Hub for the model's inference status, with the token."""
    target = provider_for(hf_fake.url)
    assert run(target, lambda: target.probe(Deadline(10))) == f"{MODEL}: warm"
    headers, expand = hf_fake.status_requests[0]
    assert headers["authorization"] == f"Bearer {CANARY}"
    assert expand == ["inference", "inferenceProviderMapping"]


def test_probe_of_a_model_hf_inference_does_not_serve(hf_fake: HFInferenceFake) -> None:
    """A model mapped only to other providers is Unavailable on hf-inference, naming them."""
    hf_fake.mapping = {"fal-ai": {"status": "live"}}
    target = provider_for(hf_fake.url)
    with pytest.raises(Unavailable, match="fal-ai"):
        run(target, lambda: target.probe(Deadline(10)))


def test_missing_token_is_an_auth_error_before_any_call(
    hf_fake: HFInferenceFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unset token variable fails at the config stage and sends nothing."""
    monkeypatch.delenv(CANARY_ENV)
    with pytest.raises(AuthError) as info:
        generate(provider_for(hf_fake.url))
    assert info.value.stage == "config"
    assert hf_fake.calls == []


def test_config_defaults_to_the_router_paid_and_hf_token() -> None:
    """hf-inference is paid, reads HF_TOKEN and posts to the HF router unless told."""
    raw: dict[str, Any] = {
        "gateway": {"route": ["hf"]},
        "providers": {"hf": {"type": "hf-inference", "model": "owner/m"}},
    }
    config = parse_settings(raw).providers["hf"]
    assert isinstance(config, HFInferenceConfig)
    assert (config.paid, config.token_env) == (True, "HF_TOKEN")
    target = HFInferenceProvider("hf", config)
    assert target.endpoint() == "https://router.huggingface.co/hf-inference/models/owner/m"


def test_describe_never_shows_the_token(hf_fake: HFInferenceFake) -> None:
    """describe() names model and url, never the token."""
    info = provider_for(hf_fake.url).describe()
    assert info["model"] == MODEL
    assert CANARY not in repr(info)
