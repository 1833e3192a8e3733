"""What the remote providers share for edits: the input images in each vendor's form.

The request holds its input images as they came (PNG, JPEG or WebP, checked at the edge) and
its mask in one internal form: an 8-bit L PNG of the first image's size, 255 = repaint. Each
vendor wants something else, and the conversion happens here, once per form:

* ``mask_png(request)``: the internal L mask as it is (white = edit: A1111, Novita,
  Stability, ComfyUI's ``LoadImageMask`` with ``channel = red``, diffusers);
* ``alpha_mask_png(mask)``: an RGBA PNG whose alpha is ``255 - L`` (transparent = edit:
  OpenAI, ComfyUI's ``LoadImage`` MASK output);
* ``as_png(image)``: an input image as PNG, for a vendor that takes PNG only (dall-e-2);
* ``b64(data)``: plain base64, without a ``data:`` prefix;
* ``require(provider, capabilities, request)``: refuse a task the provider did not declare
  (the router skips such a provider before calling it; this guards direct calls), and more
  input images than the provider takes (one, unless it says otherwise);
* ``default_strength(request, default)``: the request's strength, else the provider's.
"""

from __future__ import annotations

import io

import pybase64

from imagegate.errors import InvalidRequest
from imagegate.request import ImageRequest, InputImage

__all__ = [
    "EDIT_TASKS",
    "alpha_mask_png",
    "as_png",
    "b64",
    "default_strength",
    "filename",
    "init_image",
    "mask_png",
    "require",
]

EDIT_TASKS = frozenset({"img2img", "inpaint", "variations"})
"""The tasks that take input images (``txt2img`` takes none)."""


def require(
    provider: str, capabilities: frozenset[str], request: ImageRequest, *, max_images: int = 1
) -> str:
    """The request's task, or InvalidRequest when ``capabilities`` lack it or the request
    brings more than ``max_images`` input images (none is dropped silently; the router
    then tries the next provider)."""
    task = request.task
    if len(request.images) > max_images:
        raise InvalidRequest(
            f"images: provider {provider} takes at most {max_images} input image"
            f"{'s' if max_images > 1 else ''} for {task}; got {len(request.images)}. Send "
            "fewer, or route to a provider that takes more (OpenAI's GPT image models take 16)",
            field="images",
            limit=f"at most {max_images}",
            provider=provider,
        )
    if task not in capabilities:
        can = ", ".join(sorted(capabilities))
        raise InvalidRequest(
            f"provider {provider} cannot do {task} (it can: {can}); route the request to a "
            "provider that can",
            field="images" if task != "txt2img" else "prompt",
            limit=f"one of: {can}",
            provider=provider,
        )
    return task


def init_image(request: ImageRequest) -> InputImage:
    """The image an edit starts from: the first one."""
    return request.images[0]


def default_strength(request: ImageRequest, default: float) -> float:
    """The share of the image that is re-noised: the request's, else ``default``."""
    return request.strength if request.strength is not None else default


def b64(data: bytes) -> str:
    """Plain base64 (no ``data:`` prefix), as A1111 and Novita take images."""
    return pybase64.b64encode(data).decode("ascii")


def mask_png(request: ImageRequest) -> bytes:
    """The internal mask as it is: an L PNG, white (255) = repaint."""
    if request.mask is None:
        raise ValueError("the request has no mask")
    return request.mask.data


def alpha_mask_png(mask: InputImage) -> bytes:
    """The mask as an RGBA PNG, transparent = repaint (alpha = 255 - L), black elsewhere."""
    from PIL import Image, ImageChops

    with Image.open(io.BytesIO(mask.data)) as img:
        grey = img.convert("L")
    rgba = Image.new("RGBA", grey.size, (0, 0, 0, 255))
    rgba.putalpha(ImageChops.invert(grey))
    out = io.BytesIO()
    rgba.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def as_png(image: InputImage) -> bytes:
    """The image as PNG bytes: kept when it already is one, re-encoded otherwise."""
    if image.mime == "image/png":
        return image.data
    from PIL import Image

    with Image.open(io.BytesIO(image.data)) as img:
        out = io.BytesIO()
        img.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def filename(image: InputImage, stem: str = "image") -> str:
    """A file name for a multipart upload: the content hash and the type's extension."""
    ext = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}.get(image.mime, "png")
    return f"{stem}-{image.sha256[:16]}.{ext}"
