"""POST /sdapi/v1/img2img as A1111 answers it: webuiapi.img2img unchanged, with and without
a mask, on the tiny local pipeline."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import webuiapi
from PIL import Image, ImageDraw
from serverkit import NUMPY_COPY_WARNING, Live, live, tiny_settings

pytestmark = pytest.mark.filterwarnings(NUMPY_COPY_WARNING)


@pytest.fixture
def server(tiny_model: Path) -> Iterator[Live]:
    with live(tiny_settings(tiny_model)) as running:
        yield running


def api(server: Live) -> webuiapi.WebUIApi:
    host, port = server.url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port))


def picture() -> Image.Image:
    return Image.new("RGB", (64, 64), (200, 80, 40))


def test_webuiapi_img2img_answers_as_a1111(server: Live) -> None:
    """img2img(images=[...], denoising_strength=0.5): an image, A1111's info and parameters."""
    result = api(server).img2img(
        images=[picture()], prompt="a fox", denoising_strength=0.5, width=64, height=64,
        steps=2, seed=5,
    )  # fmt: skip
    assert result.image.size == (64, 64)
    assert result.info["denoising_strength"] == 0.5
    assert result.info["extra_generation_params"] == {"Denoising strength": 0.5}
    assert result.info["all_seeds"] == [5]
    assert result.parameters["init_images"] is None


def test_webuiapi_inpainting_keeps_what_the_mask_leaves(server: Live) -> None:
    """The README recipe: a black mask with a white area; outside it the image is kept."""
    mask = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill="white")
    result = api(server).img2img(
        images=[picture()], mask_image=mask, prompt="a door", inpainting_fill=1,
        denoising_strength=1.0, mask_blur=0, width=64, height=64, steps=2,
    )  # fmt: skip
    assert result.image.convert("RGB").getpixel((60, 10)) == (200, 80, 40)
    assert result.info["extra_generation_params"]["Inpaint area"] == "Only masked"
    assert "Masked content" not in result.info["extra_generation_params"]  # 1 = original


def test_a_target_size_resizes_the_init_image_as_a1111_does(server: Live) -> None:
    """width/height 96x64 on a 64x64 image: the image comes back 96x64."""
    result = api(server).img2img(
        images=[picture()], prompt="x", denoising_strength=0.5, width=96, height=64, steps=2
    )
    assert result.image.size == (96, 64)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x"}, "init_images"),
        ({"prompt": "x", "init_images": ["https://example.com/a.png"]}, "init_images"),
        ({"prompt": "x", "init_images": [base64.b64encode(b"not a png").decode()]},
         "init_images"),
        ({"prompt": "x", "init_images": ["<png>"], "denoising_strength": 1.5},
         "strength"),
    ],
)  # fmt: skip
def test_bad_img2img_bodies_are_4xx_naming_the_field(
    server: Live, body: dict[str, object], param: str
) -> None:
    """No init image, a URL, not an image, a strength past 1: refused, the field named."""
    buf = io.BytesIO()
    picture().save(buf, format="PNG")
    text = json.dumps(body).replace("<png>", base64.b64encode(buf.getvalue()).decode())
    answer = httpx.post(
        f"{server.url}/sdapi/v1/img2img", content=text, headers={"content-type": "application/json"}
    )
    assert 400 <= answer.status_code < 500, answer.text
    assert param in answer.text
