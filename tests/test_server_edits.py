"""POST /v1/images/edits and /v1/images/variations, driven by the official openai client."""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import webuiapi
from faults import serve_app
from PIL import Image
from serverkit import NUMPY_COPY_WARNING, Fake, Live, fake_settings, live, tiny_settings
from vendor_a1111 import A1111Fake
from vendor_openai import OpenAIFake

from imagegate.config import parse_settings

pytestmark = pytest.mark.filterwarnings(NUMPY_COPY_WARNING)


def png(
    size: tuple[int, int] = (64, 64), mode: str = "RGB", colour: object = (200, 80, 40)
) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")  # type: ignore[arg-type]
    return buf.getvalue()


def openai_mask(size: tuple[int, int] = (64, 64)) -> bytes:
    """OpenAI's convention: transparent where the image is edited (here the left half)."""
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, size[0] // 2, size[1]))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


def client(server: Live) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def local(tiny_model: Path) -> Iterator[Live]:
    """imagegate on the tiny local pipeline."""
    with live(tiny_settings(tiny_model)) as server:
        yield server


@contextlib.contextmanager
def upstream(model: str) -> Iterator[tuple[Live, OpenAIFake]]:
    """imagegate in front of the OpenAI fake, its provider set to ``model``."""
    fake = OpenAIFake()
    with serve_app(fake.app()) as url:
        settings = parse_settings(
            {
                "gateway": {"route": ["oai"]},
                "providers": {
                    "oai": {"type": "openai", "url": f"{url}/v1", "api_key_env": None,
                            "model": model}
                },
            }
        )  # fmt: skip
        with live(settings) as server:
            yield server, fake


def test_the_openai_client_edits_with_a_mask_on_the_local_pipeline(local: Live) -> None:
    """images.edit(image, mask, prompt): one image of the input's size, from the local model."""
    with client(local) as c:
        raw = c.images.with_raw_response.edit(
            image=("in.png", png(), "image/png"),
            mask=("mask.png", openai_mask(), "image/png"),
            prompt="a blue door",
            extra_body={"strength": "1.0"},
        )
    answer = raw.parse()
    assert raw.headers["x-imagegate-provider"] == "local"
    assert answer.data is not None
    assert answer.data[0].b64_json is not None
    made = Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json)))
    assert made.size == (64, 64)
    assert made.convert("RGB").getpixel((60, 10)) == (200, 80, 40)  # kept outside the mask


def test_the_openai_client_sends_a_list_of_images_through_to_an_openai_upstream() -> None:
    """images.edit(image=[a, b]) on gpt-image-1: both reach /images/edits as image[] parts."""
    with upstream("gpt-image-1") as (server, fake), client(server) as c:
        answer = c.images.edit(
            image=[("a.png", png(), "image/png"), ("b.png", png(colour=(1, 2, 3)), "image/png")],
            prompt="a collage",
        )
    assert answer.data
    _, parts = fake.edit_forms[-1]
    assert [name for name, *_ in parts] == ["image[]", "image[]"]


def test_the_openai_client_asks_for_variations() -> None:
    """images.create_variation(image) (deprecated by the client) on a dall-e-2 upstream: n
    variations come back."""
    with (
        upstream("dall-e-2") as (server, fake),
        client(server) as c,
        pytest.deprecated_call(),
    ):
        answer = c.images.create_variation(image=("in.png", png(), "image/png"), n=2)
    assert len(answer.data or []) == 2
    fields, _ = fake.edit_forms[-1]
    assert "prompt" not in fields


@pytest.mark.parametrize(
    ("files", "data", "param"),
    [
        ({"image": ("x.png", b"not a png", "image/png")}, {"prompt": "x"}, "image"),
        ({"image": ("x.png", png()), "mask": ("m.png", openai_mask((32, 32)))},
         {"prompt": "x"}, "mask"),
        ({"image": ("x.png", png()), "mask": ("m.png", png())}, {"prompt": "x"}, "mask"),
        ({"image": ("x.png", png())}, {"prompt": "x", "strength": "2"}, "strength"),
        ({"image": ("x.png", png())}, {"prompt": "x", "colour": "red"}, "colour"),
        ({}, {"prompt": "x"}, "image"),
    ],
)  # fmt: skip
def test_bad_edits_are_400s_naming_the_field(
    local: Live, files: dict[str, Any], data: dict[str, str], param: str
) -> None:
    """Not an image, a mask of another size or without alpha, strength 2, an unknown field,
    no image: 400 with the field as param, and no job recorded."""
    answer = httpx.post(f"{local.url}/v1/images/edits", files=files or {"x": ("", b"")},
                        data=data)  # fmt: skip
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
    assert httpx.get(f"{local.url}/v1/jobs").json()["data"] == []


def test_an_edit_on_a_route_that_cannot_edit_is_a_400_naming_the_route() -> None:
    """Only text-to-image providers on the route: 400, param route."""
    with live(fake_settings(["a"]), providers={"a": Fake("a")}) as server:
        answer = httpx.post(
            f"{server.url}/v1/images/edits", files={"image": ("x.png", png())}, data={"prompt": "x"}
        )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "route"


def test_edits_take_bodies_past_the_generation_limit(local: Live) -> None:
    """A 1.5 MB image is taken by /edits, while /generations refuses 1.5 MB with 413."""
    noise = Image.frombytes("RGB", (720, 720), bytes(range(256)) * (720 * 720 * 3 // 256 + 1))
    buf = io.BytesIO()
    noise.save(buf, format="PNG", compress_level=0)
    big = buf.getvalue()
    assert len(big) > 1_000_000
    edit = httpx.post(
        f"{local.url}/v1/images/edits",
        files={"image": ("big.png", big)},
        data={"prompt": "x", "strength": "0.1"},
    )
    assert edit.status_code != 413
    generation = httpx.post(
        f"{local.url}/v1/images/generations", content=b"{" + b" " * len(big) + b"}",
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert generation.status_code == 413


def test_the_openai_client_edits_with_a_mask_through_a_remote_provider() -> None:
    """images.edit(image, mask) on a GPT-image upstream: the mask reaches it with alpha."""
    with upstream("gpt-image-1") as (server, fake), client(server) as c:
        answer = c.images.edit(
            image=("in.png", png(), "image/png"),
            mask=("mask.png", openai_mask(), "image/png"),
            prompt="a blue door",
        )
    assert answer.data
    _, parts = fake.edit_forms[-1]
    mask = next(data for name, _, _, data in parts if name == "mask")
    assert "A" in Image.open(io.BytesIO(mask)).getbands()


@pytest.mark.parametrize("masked", [False, True])
def test_webuiapi_img2img_through_a_remote_a1111(masked: bool) -> None:
    """webuiapi.img2img against imagegate serve in front of the A1111 fake, with and without
    a mask: the fake receives the init image (and the mask) and the answer has its image."""
    fake = A1111Fake(step_s=0.0)
    with serve_app(fake.app()) as backend:
        settings = parse_settings(
            {"gateway": {"route": ["a1111"]},
             "providers": {"a1111": {"type": "a1111", "url": backend}}}
        )  # fmt: skip
        with live(settings) as server:
            host, port = server.url.removeprefix("http://").split(":")
            api = webuiapi.WebUIApi(host=host, port=int(port))
            mask = Image.new("L", (64, 64), 0)
            mask.paste(255, (0, 0, 32, 64))
            result = api.img2img(
                images=[Image.new("RGB", (64, 64), (200, 80, 40))],
                mask_image=mask if masked else None,
                prompt="a door", denoising_strength=0.6, width=64, height=64, steps=4,
            )  # fmt: skip
    assert result.image.size == (64, 64)
    sent = fake.edits[-1]
    assert sent["init_images"]
    assert bool(sent.get("mask")) is masked
