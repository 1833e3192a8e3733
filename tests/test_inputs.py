"""Input images and masks for edits: checked once at the edge, one internal mask form, and a
router that sends an edit only to providers that can do it."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image
from test_router import Scripted, make_router

from imagegate import inputs
from imagegate.errors import InvalidRequest
from imagegate.inputs import InputImage, normalize_mask
from imagegate.providers.base import Deadline
from imagegate.request import ImageRequest


def encoded(
    mode: str = "RGB", size: tuple[int, int] = (32, 32), fmt: str = "PNG", **px: object
) -> bytes:
    """A solid image in ``mode`` (colour ``px['colour']``), encoded as ``fmt``."""
    buf = io.BytesIO()
    Image.new(mode, size, px.get("colour", 0)).save(buf, format=fmt)  # type: ignore[arg-type]
    return buf.getvalue()


def grey_of(image: InputImage) -> tuple[int, int]:
    with Image.open(io.BytesIO(image.data)) as img:
        assert img.mode == "L"
        low, high = img.getextrema()
        assert isinstance(low, int)
        assert isinstance(high, int)
        return low, high


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                           ("WEBP", "image/webp")])  # fmt: skip
def test_png_jpeg_and_webp_inputs_are_taken_as_uploaded(fmt: str, mime: str) -> None:
    """The bytes are kept unchanged; the type, size and sha256 are read once."""
    data = encoded(fmt=fmt)
    image = InputImage.from_bytes(data)
    assert (image.data, image.mime, image.width, image.height) == (data, mime, 32, 32)


@pytest.mark.parametrize(
    ("data", "limit"),
    [
        (b"not an image at all", "a PNG, JPEG or WebP image"),
        (encoded()[:-20], "a whole image"),
        (encoded(fmt="GIF"), "a PNG, JPEG or WebP image"),
    ],
)
def test_bad_input_images_are_refused_naming_the_field(data: bytes, limit: str) -> None:
    """Not an image, a truncated PNG, a GIF: InvalidRequest naming the field and the limit."""
    with pytest.raises(InvalidRequest) as caught:
        InputImage.from_bytes(data, field="image[0]")
    assert (caught.value.field, caught.value.limit) == ("image[0]", limit)


def test_inputs_over_the_byte_or_pixel_limit_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_INPUT_BYTES or MAX_INPUT_PIXELS: refused before anything is decoded."""
    monkeypatch.setattr(inputs, "MAX_INPUT_PIXELS", 100)
    with pytest.raises(InvalidRequest, match="at most 100 pixels"):
        InputImage.from_bytes(encoded())
    monkeypatch.setattr(inputs, "MAX_INPUT_BYTES", 10)
    with pytest.raises(InvalidRequest, match="at most 10 bytes"):
        InputImage.from_bytes(encoded())


def test_each_surface_mask_convention_becomes_white_to_repaint() -> None:
    """White, OpenAI's transparent and A1111's opaque-alpha masks all end up 255 = repaint."""
    image = InputImage.from_bytes(encoded())
    white = InputImage.from_bytes(encoded("L", colour=255))
    transparent = InputImage.from_bytes(encoded("RGBA", colour=(0, 0, 0, 0)))
    opaque_alpha = InputImage.from_bytes(encoded("RGBA", colour=(0, 0, 0, 200)))
    assert grey_of(normalize_mask(white, image, convention="white")) == (255, 255)
    assert grey_of(normalize_mask(transparent, image, convention="alpha-transparent")) == (255, 255)
    assert grey_of(normalize_mask(opaque_alpha, image, convention="a1111")) == (255, 255)
    assert grey_of(normalize_mask(transparent, image, convention="a1111", invert=True)) == (
        255,
        255,
    )


@pytest.mark.parametrize(
    ("mask", "convention", "limit"),
    [
        (encoded(size=(16, 16), colour=255), "white", "the size of the image, 32x32"),
        (encoded("L", colour=0), "white", "some area to repaint"),
        (
            encoded("RGB", colour=(255, 255, 255)),
            "alpha-transparent",
            "a PNG with an alpha channel",
        ),
    ],
)
def test_bad_masks_are_refused_naming_mask(mask: bytes, convention: str, limit: str) -> None:
    """Another size, nothing to repaint, no alpha for OpenAI's convention: refused."""
    image = InputImage.from_bytes(encoded())
    with pytest.raises(InvalidRequest) as caught:
        normalize_mask(InputImage.from_bytes(mask), image, convention=convention)  # type: ignore[arg-type]
    assert caught.value.field == "mask"
    assert str(caught.value.limit).startswith(limit)


def test_the_task_follows_the_inputs() -> None:
    """No image: txt2img; an image: img2img; with a mask: inpaint; variation: variations."""
    image = InputImage.from_bytes(encoded())
    mask = normalize_mask(
        InputImage.from_bytes(encoded("L", colour=255)), image, convention="white"
    )
    assert ImageRequest(prompt="x").task == "txt2img"
    assert ImageRequest(prompt="x", images=(image,)).task == "img2img"
    assert ImageRequest(prompt="x", images=(image,), mask=mask).task == "inpaint"
    assert ImageRequest(prompt="x", images=(image,), variation=True).task == "variations"


def test_a_mask_without_an_image_is_refused_naming_mask() -> None:
    """A mask needs the image it applies to."""
    image = InputImage.from_bytes(encoded())
    with pytest.raises(InvalidRequest) as caught:
        ImageRequest.parse({"prompt": "x", "mask": image})
    assert caught.value.field == "mask"


class Editor(Scripted):
    capabilities = frozenset({"txt2img", "img2img", "inpaint"})


def test_an_edit_skips_providers_that_cannot_edit_and_says_why() -> None:
    """Route [painter, editor]: the text-only painter is skipped with the reason."""
    painter, editor = Scripted("painter"), Editor("editor")
    router = make_router(painter, editor)
    edit = ImageRequest(prompt="x", images=(InputImage.from_bytes(encoded()),))
    result = asyncio.run(router.run(edit, ["painter", "editor"], Deadline(5)))
    skipped, served = result.attempts
    assert (skipped.outcome, served.provider, served.outcome) == ("skipped", "editor", "ok")
    assert skipped.error is not None
    assert "painter cannot do img2img" in skipped.error.message
    assert painter.calls == 0


def test_a_route_with_no_provider_that_can_edit_is_a_400_naming_the_route() -> None:
    """Only text-to-image providers on the route: InvalidRequest(field='route')."""
    router = make_router(Scripted("painter"))
    edit = ImageRequest(prompt="x", images=(InputImage.from_bytes(encoded()),))
    with pytest.raises(InvalidRequest) as caught:
        asyncio.run(router.run(edit, ["painter"], Deadline(5)))
    assert caught.value.field == "route"
    assert "can do img2img" in str(caught.value)
