"""Images a request brings along (image to image, inpainting): checked once, at the edge.

:class:`InputImage` is an uploaded image decoded once with Pillow: a PNG, JPEG or WebP whole
image within :data:`MAX_INPUT_BYTES` and :data:`MAX_INPUT_PIXELS`, else an InvalidRequest
naming the field and the limit. Nothing is resized or cropped.

A mask has one internal form, whatever surface it came through: an 8-bit greyscale PNG the
size of the first image, where 255 (white) is the area to repaint and 0 is kept. Each surface
names its convention and :func:`normalize_mask` converts once:

- ``white``: white (bright) = repaint; an image with transparency is read as its brightness
  (Stability's, diffusers' and imagegate's native convention);
- ``alpha-transparent``: fully transparent pixels = repaint (OpenAI's ``mask``: a PNG with an
  alpha channel, the same size as the image);
- ``a1111``: AUTOMATIC1111's rule: an RGBA mask whose alpha is not fully opaque is read from
  its alpha (opaque, alpha > 128, = repaint), any other mask from its brightness (white =
  repaint); ``invert`` flips it (A1111's ``inpainting_mask_invert = 1``).

Each provider converts the internal form to its vendor's convention in its own module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from typing import Any, Literal

import pybase64
from pydantic import BaseModel, ConfigDict, Field, field_validator

from imagegate.errors import InvalidRequest

__all__ = [
    "MAX_INPUT_BYTES",
    "MAX_INPUT_IMAGES",
    "MAX_INPUT_PIXELS",
    "InputImage",
    "MaskConvention",
    "normalize_mask",
]

MAX_INPUT_BYTES = 20 * 1024 * 1024
"""The largest encoded input image (20 MiB, the size of OpenAI's limit for edits)."""
MAX_INPUT_PIXELS = 4096 * 4096
"""The most pixels an input image may have (16.7 megapixels)."""
MAX_INPUT_IMAGES = 16
"""The most input images one request may bring (OpenAI's GPT image edits take 16)."""

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}

MaskConvention = Literal["white", "alpha-transparent", "a1111"]


class InputImage(BaseModel):
    """One input image as uploaded (its bytes unchanged) and what it is."""

    model_config = ConfigDict(frozen=True)

    data: bytes = Field(repr=False, exclude=True)
    """The encoded image as uploaded; left out of dumps (a job keeps its ``sha256``)."""
    mime: Literal["image/png", "image/jpeg", "image/webp"]
    width: int
    height: int
    sha256: str

    @field_validator("data", mode="before")
    @classmethod
    def _from_base64(cls, value: Any) -> Any:
        return base64.b64decode(value) if isinstance(value, str) else value

    @classmethod
    def from_text(cls, text: str, *, field: str = "image") -> InputImage:
        """A base64 string or ``data:`` URI (the JSON surfaces' form) decoded and checked as
        :meth:`from_bytes` does; a URL is refused (a gateway fetching any URL is a request
        forgery risk), as is text that is not base64."""
        if text.startswith(("http://", "https://")):
            raise InvalidRequest(
                f"{field}: image URLs are not fetched (a gateway fetching any URL is a request "
                "forgery risk); send the image as base64 or a data: URI",
                field=field,
                limit="base64 or a data: URI",
            )
        raw = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
        try:
            data = pybase64.b64decode(raw, validate=False)
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                f"{field}: Invalid encoded image; send base64", field=field, limit="base64"
            ) from None
        return cls.from_bytes(data, field=field)

    @classmethod
    def from_bytes(cls, data: bytes, *, field: str = "image") -> InputImage:
        """``data`` decoded once: a whole PNG, JPEG or WebP within the limits; otherwise an
        InvalidRequest naming ``field`` and the limit."""
        if len(data) > MAX_INPUT_BYTES:
            raise _refused(
                field, f"at most {MAX_INPUT_BYTES} bytes", f"{len(data)} bytes", "a smaller image"
            )
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as img:
                kind = img.format or ""
                width, height = img.size
                if kind not in _MIME:
                    raise _refused(field, "a PNG, JPEG or WebP image", kind or "unknown", "one")
                if width * height > MAX_INPUT_PIXELS:
                    raise _refused(
                        field,
                        f"at most {MAX_INPUT_PIXELS} pixels",
                        f"{width}x{height}",
                        "a smaller image",
                    )
                img.load()
        except UnidentifiedImageError:
            raise _refused(field, "a PNG, JPEG or WebP image", "not an image", "one") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            raise _refused(
                field, "a whole image", "a truncated or corrupt file", "the whole file"
            ) from None
        return cls(
            data=data,
            mime=_MIME[kind],  # type: ignore[arg-type]
            width=width,
            height=height,
            sha256=hashlib.sha256(data).hexdigest(),
        )


def normalize_mask(
    mask: InputImage,
    image: InputImage,
    *,
    convention: MaskConvention,
    invert: bool = False,
    field: str = "mask",
) -> InputImage:
    """``mask`` in the internal form (greyscale PNG, 255 = repaint, the image's size)."""
    from PIL import Image, ImageChops, ImageOps

    if (mask.width, mask.height) != (image.width, image.height):
        raise _refused(
            field,
            f"the size of the image, {image.width}x{image.height}",
            f"{mask.width}x{mask.height}",
            "a mask of the image's size",
        )
    with Image.open(io.BytesIO(mask.data)) as raw:
        has_alpha = raw.mode in ("RGBA", "LA", "PA") or "transparency" in raw.info
        if convention == "alpha-transparent":
            if not has_alpha:
                raise _refused(
                    field,
                    "a PNG with an alpha channel, transparent where the image is edited",
                    f"a {raw.mode} image without transparency",
                    "such a mask",
                )
            grey = ImageOps.invert(raw.convert("RGBA").getchannel("A"))
        elif convention == "a1111" and has_alpha:
            alpha = raw.convert("RGBA").getchannel("A")
            lowest = alpha.getextrema()[0]
            # A1111 reads an RGBA mask by its alpha unless it is fully opaque
            if isinstance(lowest, int) and lowest < 255:
                grey = alpha.point(lambda a: 255 if a > 128 else 0)
            else:
                grey = raw.convert("L")
        else:
            grey = raw.convert("L")
    if invert:
        grey = ImageChops.invert(grey)
    if grey.getextrema()[1] in (0, 0.0):
        raise _refused(field, "some area to repaint", "a mask that marks none", "another mask")
    buf = io.BytesIO()
    grey.save(buf, format="PNG")
    return InputImage.from_bytes(buf.getvalue(), field=field)


def _refused(field: str, limit: str, got: str, fix: str) -> InvalidRequest:
    return InvalidRequest(
        f"{field}: must be {limit}; got {got}",
        field=field,
        limit=limit,
        fix=f"Send {fix} as {field} and try again.",
    )
