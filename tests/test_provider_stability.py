"""The stability provider against its loopback fake: what the shared conformance suite can't see."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakekit
import pytest
from fakekit import drive
from vendor_stability import StabilityFake

from imagegate.errors import ContentFiltered, InvalidRequest, QuotaExceeded, RateLimited
from imagegate.providers.base import Deadline, Progress
from imagegate.providers.stability import StabilityConfig, StabilityProvider
from imagegate.request import GeneratedImage, ImageRequest

KEY = "sk-stability-test-0123456789"
REQUEST = ImageRequest(prompt="a lighthouse", width=1024, height=576, seed=7)


@pytest.fixture(scope="module")
def started() -> Iterator[StabilityFake]:
    """One fake for the module, requiring KEY."""
    with StabilityFake(key=KEY) as running:
        yield running


@pytest.fixture
def fake(started: StabilityFake, monkeypatch: pytest.MonkeyPatch) -> StabilityFake:
    """The module's fake with nothing armed and no calls, KEY in the environment."""
    monkeypatch.setenv("STABILITY_API_KEY", KEY)
    started.calls.clear()
    started.content_types.clear()
    started.credits = 25.5
    return started


def provider(fake: StabilityFake, **settings: Any) -> StabilityProvider:
    return StabilityProvider("stability", StabilityConfig(url=fake.url, **settings))


def generate(
    prov: StabilityProvider, req: ImageRequest = REQUEST, seen: list[Progress] | None = None
) -> list[GeneratedImage]:
    return fakekit.generate(prov, req, seen)


@pytest.mark.parametrize(
    ("size", "ratio"),
    [((1024, 576), "16:9"), ((64, 64), "1:1"), ((832, 1248), "2:3"), ((1344, 576), "21:9")],
)
def test_width_and_height_become_the_exact_aspect_ratio(
    fake: StabilityFake, size: tuple[int, int], ratio: str
) -> None:
    """A size whose ratio reduces exactly to an allowed one is sent as that aspect_ratio."""
    width, height = size
    generate(provider(fake), REQUEST.model_copy(update={"width": width, "height": height}))
    assert fake.calls[0]["form"]["aspect_ratio"] == ratio


def test_no_size_sends_no_aspect_ratio(fake: StabilityFake) -> None:
    """Without width and height the API's own default (1:1) applies."""
    generate(provider(fake), REQUEST.model_copy(update={"width": None, "height": None}))
    assert "aspect_ratio" not in fake.calls[0]["form"]


def test_size_without_an_allowed_ratio_is_refused_listing_them(fake: StabilityFake) -> None:
    """1000x600 (5:3) is refused naming width and every allowed ratio; nothing is sent."""
    with pytest.raises(InvalidRequest, match="16:9, 1:1, 21:9, 2:3, 3:2, 4:5, 5:4") as info:
        generate(provider(fake), REQUEST.model_copy(update={"width": 1000, "height": 600}))
    assert info.value.field == "width"
    assert fake.calls == []


def test_only_one_side_is_refused_naming_the_other(fake: StabilityFake) -> None:
    """A width without a height can't be a ratio: InvalidRequest naming height."""
    with pytest.raises(InvalidRequest) as info:
        generate(provider(fake), REQUEST.model_copy(update={"height": None}))
    assert info.value.field == "height"


def test_text_only_request_is_multipart(fake: StabilityFake) -> None:
    """Even with no file, the body is multipart/form-data with the documented fields."""
    generate(provider(fake), REQUEST.model_copy(update={"negative_prompt": "fog"}))
    assert fake.content_types[0].startswith("multipart/form-data; boundary=")
    assert fake.calls[0]["form"] == {
        "prompt": "a lighthouse",
        "negative_prompt": "fog",
        "output_format": "png",
        "aspect_ratio": "16:9",
        "seed": "7",
    }


def test_image_answer_gives_png_and_seed_header(fake: StabilityFake) -> None:
    """Accept: image/* (the default) returns the PNG bytes, the seed from its header."""
    [image] = generate(provider(fake))
    assert fake.calls[0]["accept"] == "image/*"
    assert image.png.startswith(b"\x89PNG")
    assert (image.width, image.height, image.seed) == (512, 288, 7)


def test_json_answer_gives_png_and_seed(fake: StabilityFake) -> None:
    """accept = "json" asks for application/json and decodes the base64 image and seed."""
    [image] = generate(provider(fake, accept="json"))
    assert fake.calls[0]["accept"] == "application/json"
    assert (image.width, image.height, image.seed) == (512, 288, 7)


def test_seed_zero_reports_the_seed_stability_chose(fake: StabilityFake) -> None:
    """Seed 0 means random at Stability; the seed it answers is the one reported."""
    [image] = generate(provider(fake), REQUEST.model_copy(update={"seed": 0}))
    assert image.seed != 0


@pytest.mark.parametrize("accept", ["image", "json"])
def test_finish_reason_content_filtered_is_content_filtered(
    fake: StabilityFake, accept: str
) -> None:
    """An image flagged after generation (CONTENT_FILTERED) is ContentFiltered, both forms."""
    fake.arm("content_filtered")
    with pytest.raises(ContentFiltered, match="CONTENT_FILTERED"):
        generate(provider(fake, accept=accept))


def test_moderation_403_is_content_filtered(fake: StabilityFake) -> None:
    """403 name=content_moderation (the prompt refused before generating) is ContentFiltered."""
    fake.arm("content_moderation")
    with pytest.raises(ContentFiltered, match="content_moderation"):
        generate(provider(fake))


def test_rate_limit_waits_out_the_60_second_lockout(fake: StabilityFake) -> None:
    """429 is RateLimited with retry_after 60, Stability's documented lockout."""
    fake.arm("rate_limit_exceeded")
    with pytest.raises(RateLimited) as info:
        generate(provider(fake))
    assert info.value.retry_after == 60.0


def test_bad_request_names_the_field_of_the_error_body(fake: StabilityFake) -> None:
    """A 400 whose first error is about aspect_ratio is InvalidRequest naming width."""
    fake.arm("bad_request")
    with pytest.raises(InvalidRequest, match="aspect_ratio: must be one of") as info:
        generate(provider(fake))
    assert info.value.field == "width"


def test_n_images_are_n_calls_with_consecutive_seeds(fake: StabilityFake) -> None:
    """n = 3 makes three calls seeded 7, 8, 9; progress counts finished images."""
    seen: list[Progress] = []
    images = generate(provider(fake), REQUEST.model_copy(update={"n": 3}), seen)
    assert sorted(call["form"]["seed"] for call in fake.calls) == ["7", "8", "9"]
    assert [image.seed for image in images] == [7, 8, 9]
    assert seen == [Progress(1, 3), Progress(2, 3), Progress(3, 3)]


def test_sd3_model_name_goes_to_the_sd3_endpoint_with_cfg_scale(fake: StabilityFake) -> None:
    """model = "sd3.5-medium" posts to /sd3 with model and guidance as cfg_scale."""
    generate(provider(fake, model="sd3.5-medium"), REQUEST.model_copy(update={"guidance": 5.0}))
    call = fake.calls[0]
    assert call["model"] == "sd3"
    assert (call["form"]["model"], call["form"]["cfg_scale"]) == ("sd3.5-medium", "5")


def test_sd3_guidance_outside_its_range_is_refused(fake: StabilityFake) -> None:
    """sd3's cfg_scale is 1-10: guidance 12 is InvalidRequest naming guidance."""
    with pytest.raises(InvalidRequest, match="between 1 and 10") as info:
        generate(provider(fake, model="sd3"), REQUEST.model_copy(update={"guidance": 12.0}))
    assert info.value.field == "guidance"


def test_core_reports_no_steps_sampler_or_guidance(fake: StabilityFake) -> None:
    """The API takes none of them, so the record says none were used."""
    req = REQUEST.model_copy(update={"steps": 30, "sampler": "Euler a", "guidance": 7.0})
    params = provider(fake).effective_params(req)
    assert params == {"steps": None, "sampler": None, "guidance": None}


def test_unknown_model_is_refused_listing_the_models(fake: StabilityFake) -> None:
    """A request model Stability doesn't have here is InvalidRequest naming model."""
    with pytest.raises(InvalidRequest, match="core, ultra, sd3") as info:
        generate(provider(fake), REQUEST.model_copy(update={"model": "dall-e-3"}))
    assert info.value.field == "model"


def test_probe_reports_the_credit_balance(fake: StabilityFake) -> None:
    """probe() reads GET /v1/user/balance."""
    prov = provider(fake)
    assert drive(prov, lambda: prov.probe(Deadline(5))) == "25.5 credits"


def test_probe_with_no_credits_is_quota_exceeded(fake: StabilityFake) -> None:
    """An empty balance fails the probe as QuotaExceeded."""
    fake.credits = 0
    prov = provider(fake)
    with pytest.raises(QuotaExceeded):
        drive(prov, lambda: prov.probe(Deadline(5)))
