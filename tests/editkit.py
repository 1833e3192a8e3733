"""Input images for the edit tests: an init image, the internal mask, and pixel checks."""

from __future__ import annotations

import io

from fakekit import solid_png
from PIL import Image

from imagegate.request import ImageRequest, InputImage

__all__ = ["INIT", "MASK", "edit_request", "mask_png", "pixel"]

INIT_COLOUR = (20, 120, 200)


def mask_png(size: tuple[int, int] = (64, 64)) -> bytes:
    """An L mask, 255 = repaint: the middle half white, the border black."""
    width, height = size
    mask = Image.new("L", size, 0)
    mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


INIT = InputImage.from_bytes(solid_png(64, 64, INIT_COLOUR))
MASK = InputImage.from_bytes(mask_png())


def edit_request(*, mask: bool = False, **update: object) -> ImageRequest:
    """A 64x64 img2img (or inpaint) request at strength 0.5, seed 7, 2 steps."""
    fields: dict[str, object] = {
        "prompt": "a lighthouse",
        "steps": 2,
        "seed": 7,
        "images": (INIT,),
        "strength": 0.5,
        "mask": MASK if mask else None,
    }
    return ImageRequest.model_validate(fields | update)


def pixel(png: bytes, x: int, y: int) -> tuple[int, ...]:
    """The RGB(A) value at (x, y) of an encoded image."""
    with Image.open(io.BytesIO(png)) as img:
        value = img.convert("RGB").getpixel((x, y))
    assert isinstance(value, tuple)
    return value
