"""The openai provider against a loopback OpenAI images API (tests/vendor_openai.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import fakekit
import pytest
from conformance import CANARY_ENV
from fakekit import drive
from faults import serve_app
from PIL import Image
from vendor_openai import OpenAIFake, openai_provider

from imagegate.errors import (
    AuthError,
    ContentFiltered,
    InvalidRequest,
    ProtocolError,
    RateLimited,
)
from imagegate.providers.base import Deadline
from imagegate.providers.openai import OpenAIProvider
from imagegate.request import GeneratedImage, ImageRequest

KEY = "sk-test-0123456789abcdef"
REQUEST = ImageRequest(prompt="a lighthouse", width=96, height=64, seed=5)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[OpenAIFake, str]]:
    """The fake, wanting KEY, and its base URL; KEY is in the provider's variable."""
    monkeypatch.setenv(CANARY_ENV, KEY)
    state = OpenAIFake(key=KEY)
    with serve_app(state.app()) as base:
        yield state, base


def generate(provider: OpenAIProvider, req: ImageRequest = REQUEST) -> list[GeneratedImage]:
    return fakekit.generate(provider, req)


def failure(provider: OpenAIProvider, req: ImageRequest = REQUEST) -> Exception:
    return fakekit.failure(provider, req)


def test_body_carries_size_n_model_and_b64_format(fake: tuple[OpenAIFake, str]) -> None:
    """size goes as WxH, n and the configured model as given, response_format b64_json."""
    state, base = fake
    generate(openai_provider(f"{base}/v1", model="dall-e-2"), REQUEST.model_copy(update={"n": 2}))
    body = state.bodies[0]
    assert body == {
        "prompt": "a lighthouse",
        "n": 2,
        "model": "dall-e-2",
        "size": "96x64",
        "response_format": "b64_json",
    }


def test_key_goes_as_a_bearer_token(fake: tuple[OpenAIFake, str]) -> None:
    """The key from api_key_env is sent as Authorization: Bearer."""
    state, base = fake
    generate(openai_provider(f"{base}/v1"))
    assert state.headers[0]["authorization"] == f"Bearer {KEY}"


def test_images_come_back_as_png_with_their_size(fake: tuple[OpenAIFake, str]) -> None:
    """Each image is PNG bytes with the size the server made."""
    _, base = fake
    (image,) = generate(openai_provider(f"{base}/v1"))
    assert image.png.startswith(b"\x89PNG")
    assert (image.width, image.height) == (96, 64)


def test_jpeg_answers_are_re_encoded_to_png(fake: tuple[OpenAIFake, str]) -> None:
    """An image sent as JPEG (output_format = jpeg) comes back as PNG."""
    state, base = fake
    state.image_format = "JPEG"
    (image,) = generate(openai_provider(f"{base}/v1"))
    assert Image.open(io.BytesIO(image.png)).format == "PNG"


def test_url_answers_are_downloaded_without_the_key_elsewhere(
    fake: tuple[OpenAIFake, str],
) -> None:
    """response_format url: images are fetched from the storage host, which never sees the key."""
    state, base = fake
    storage = OpenAIFake()
    with serve_app(storage.app()) as storage_base:
        state.files_base, state.store = storage_base, storage.files
        images = generate(openai_provider(f"{base}/v1", response_format="url"))
    assert state.bodies[0]["response_format"] == "url"
    assert images[0].png.startswith(b"\x89PNG")
    assert len(storage.file_headers) == 1
    assert "authorization" not in storage.file_headers[0]


def test_gpt_image_models_are_not_sent_a_response_format(fake: tuple[OpenAIFake, str]) -> None:
    """GPT-image models refuse response_format (they always answer b64), so none is sent."""
    state, base = fake
    generate(openai_provider(f"{base}/v1", model="gpt-image-1"))
    assert "response_format" not in state.bodies[0]


def test_seed_is_not_sent_and_reported_as_asked_without_extensions(
    fake: tuple[OpenAIFake, str],
) -> None:
    """OpenAI has no seed: none is sent, the request's seed is reported, 0 when it had none."""
    state, base = fake
    provider = openai_provider(f"{base}/v1")
    assert [img.seed for img in generate(provider)] == [5]
    unseeded = REQUEST.model_copy(update={"seed": None, "n": 2})
    assert [img.seed for img in generate(provider, unseeded)] == [0, 0]
    assert all("seed" not in body for body in state.bodies)
    assert provider.describe()["seeds"] == "not honoured"


def test_extensions_send_seed_steps_and_negative_prompt(fake: tuple[OpenAIFake, str]) -> None:
    """extensions = true sends imagegate's fields, a random seed when none, reported per image."""
    state, base = fake
    req = REQUEST.model_copy(update={"seed": None, "n": 2, "steps": 3, "negative_prompt": "fog"})
    images = generate(openai_provider(f"{base}/v1", extensions=True), req)
    body = state.bodies[0]
    assert body["steps"] == 3
    assert body["negative_prompt"] == "fog"
    assert [img.seed for img in images] == [body["seed"], body["seed"] + 1]


def test_extra_body_fields_are_sent_as_they_are(fake: tuple[OpenAIFake, str]) -> None:
    """extra_body adds vendor fields such as quality without a code change."""
    state, base = fake
    generate(openai_provider(f"{base}/v1", extra_body={"quality": "hd", "style": "natural"}))
    assert state.bodies[0]["quality"] == "hd"
    assert state.bodies[0]["style"] == "natural"


def test_one_side_of_the_size_is_refused_before_sending(fake: tuple[OpenAIFake, str]) -> None:
    """A width without a height cannot be a WxH size: InvalidRequest, nothing sent."""
    state, base = fake
    error = failure(openai_provider(f"{base}/v1"), ImageRequest(prompt="x", width=64))
    assert isinstance(error, InvalidRequest)
    assert error.field == "height"
    assert state.bodies == []


def test_content_policy_refusal_is_content_filtered(fake: tuple[OpenAIFake, str]) -> None:
    """400 content_policy_violation is ContentFiltered, with the vendor's message and the fix."""
    state, base = fake
    state.arm("content_policy_violation")
    error = failure(openai_provider(f"{base}/v1"))
    assert isinstance(error, ContentFiltered)
    assert "safety system" in str(error)
    assert str(error).endswith("change the prompt")


def test_invalid_parameter_names_the_param(fake: tuple[OpenAIFake, str]) -> None:
    """Another 400 is InvalidRequest naming the vendor's ``param``."""
    state, base = fake
    state.arm("invalid_param")
    error = failure(openai_provider(f"{base}/v1"))
    assert isinstance(error, InvalidRequest)
    assert error.field == "size"


def test_rate_limit_carries_retry_after(fake: tuple[OpenAIFake, str]) -> None:
    """429 with Retry-After: 1 is RateLimited(retry_after=1.0)."""
    state, base = fake
    state.arm("rate_limited")
    error = failure(openai_provider(f"{base}/v1"))
    assert isinstance(error, RateLimited)
    assert error.retry_after == 1.0


def test_wrong_key_is_an_auth_error_without_the_key(fake: tuple[OpenAIFake, str]) -> None:
    """A refused key is AuthError; the message never holds the key."""
    state, base = fake
    state.key = "sk-another-key-0000000000"
    error = failure(openai_provider(f"{base}/v1"))
    assert isinstance(error, AuthError)
    assert KEY not in str(error)


def test_answer_without_images_is_a_protocol_error(fake: tuple[OpenAIFake, str]) -> None:
    """A 200 whose ``data`` is not a list of images is ProtocolError."""
    state, base = fake
    state.arm("malformed")
    assert isinstance(failure(openai_provider(f"{base}/v1")), ProtocolError)


def test_wrong_base_url_says_to_check_the_url(fake: tuple[OpenAIFake, str]) -> None:
    """A base URL without /v1 gets FastAPI's 404: InvalidRequest naming the url."""
    _, base = fake
    error = failure(openai_provider(base))
    assert isinstance(error, InvalidRequest)
    assert error.field == "url"


def test_probe_lists_models(fake: tuple[OpenAIFake, str]) -> None:
    """probe() reads GET /models: "3 models", and the fake counted the call."""
    state, base = fake
    provider = openai_provider(f"{base}/v1")
    assert drive(provider, lambda: provider.probe(Deadline(5))) == "3 models"
    assert state.model_calls == 1


def test_probe_with_a_refused_key_is_an_auth_error(fake: tuple[OpenAIFake, str]) -> None:
    """probe() checks the key too."""
    state, base = fake
    state.key = "sk-another-key-0000000000"
    provider = openai_provider(f"{base}/v1")
    with pytest.raises(AuthError):
        drive(provider, lambda: provider.probe(Deadline(5)))


def test_paid_by_default_and_describe_holds_no_secret(fake: tuple[OpenAIFake, str]) -> None:
    """An openai provider is paid unless configured otherwise; describe() shows no key."""
    _, base = fake
    provider = openai_provider(f"{base}/v1")
    info: dict[str, Any] = provider.describe()
    assert provider.paid is True
    assert KEY not in repr(info)
    assert info["url"] == f"{base}/v1"
