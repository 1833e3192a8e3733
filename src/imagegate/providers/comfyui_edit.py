"""The comfyui provider's edits: the workflow templates and the uploads they need.

What it relies on (providers.md section 13.3, read from ComfyUI's ``server.py``, ``nodes.py``,
``folder_paths.py``, ``comfy/samplers.py`` and ComfyUI_examples ``img2img`` / ``inpaint``):

* ``POST /upload/image`` (multipart: the file part ``image`` with a file name, and the fields
  ``type`` = input, ``subfolder``, ``overwrite``) answers ``{"name", "subfolder", "type"}``;
  ``LoadImage.image`` then takes ``"<subfolder>/<name>"``. Files go to the subfolder
  ``imagegate`` named by their content hash with ``overwrite = true``, so a retry re-uploads
  the same name and names never collide; the returned name is used all the same. ComfyUI
  has no delete route: uploads stay in its input folder.
* The built-in img2img graph is ComfyUI_examples' (LoadImage -> ImageScale -> VAEEncode ->
  KSampler with ``denoise`` = the strength); the built-in inpaint graph adds LoadImageMask
  (``channel = red``: white = repaint, so the internal mask is uploaded as it is) and
  SetLatentNoiseMask, which keeps the encoded original and works with any checkpoint at a
  strength below 1 (close to A1111's "original" fill; ``inpaint_fill`` has no equivalent
  there). ComfyUI has no mask blur on that path: the mask is blurred here, a Gaussian of
  ``mask_blur`` pixels as A1111 does, before it is uploaded.
* KSampler runs all ``steps`` whatever ``denoise`` is (A1111 and diffusers run fewer).
* The output size is ``{{width}}`` x ``{{height}}`` (ImageScale): the request's, else the
  input's rounded down to a multiple of 8.

A workflow of your own (``img2img_workflow``, ``inpaint_workflow``, exported with "Export
(API)") uses the text-to-image placeholders plus ``{{image}}`` (required), ``{{mask}}``
(required for inpainting) and ``{{denoise}}``. Without a checkpoint the built-in templates
cannot run, and the provider then declares no edits. One input image per request; more is
refused (InvalidRequest naming images).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from imagegate.errors import ProtocolError, ProviderError
from imagegate.providers.base import Deadline
from imagegate.providers.edits import default_strength, filename, init_image
from imagegate.request import ImageRequest
from imagegate.transport import Response, Transport

__all__ = [
    "DEFAULT_STRENGTH",
    "TEMPLATES",
    "UPLOAD_SUBFOLDER",
    "ComfyUIEditSettings",
    "Template",
    "edit_values",
]

DEFAULT_STRENGTH = 0.75
"""KSampler's ``denoise`` when the request has no strength (A1111's default strength)."""

UPLOAD_SUBFOLDER = "imagegate"
"""The subfolder of ComfyUI's input folder the uploads go to."""


class ComfyUIEditSettings(BaseModel):
    """The comfyui provider's edit settings (mixed into its config)."""

    img2img_workflow: str | None = Field(
        default=None,
        description="An API-format img2img workflow file with {{placeholders}} ({{image}} "
        "required); none = the built-in one (needs checkpoint).",
    )
    inpaint_workflow: str | None = Field(
        default=None,
        description="An API-format inpainting workflow file ({{image}} and {{mask}} "
        "required); none = the built-in one (needs checkpoint).",
    )


@dataclass(frozen=True)
class Template:
    """Where a task's workflow comes from and what it must hold."""

    setting: str  # the config key naming a workflow file
    builtin: str  # the packaged file used when the setting is None
    placeholders: tuple[str, ...]  # allowed besides the text-to-image ones
    required: tuple[str, ...]  # required besides prompt and seed


TEMPLATES = {
    "txt2img": Template("workflow", "comfyui_workflow.json", (), ()),
    "img2img": Template(
        "img2img_workflow", "comfyui_img2img.json", ("image", "denoise"), ("image",)
    ),
    "inpaint": Template(
        "inpaint_workflow", "comfyui_inpaint.json", ("image", "mask", "denoise"), ("image", "mask")
    ),
}


async def edit_values(
    http: Transport,
    request: ImageRequest,
    headers: dict[str, str],
    deadline: Deadline,
    error: Callable[[Response], ProviderError],
) -> dict[str, Any]:
    """Upload the init image (and the mask); the placeholders' values for an edit."""
    image = init_image(request)
    values: dict[str, Any] = {
        "image": await _upload(http, image.data, filename(image, "in"), headers, deadline, error),
        "denoise": default_strength(request, DEFAULT_STRENGTH),
        "width": request.width or max(16, image.width // 8 * 8),
        "height": request.height or max(16, image.height // 8 * 8),
    }
    if request.mask is not None:
        mask = _blurred(request.mask.data, request.mask_blur)
        name = f"mask-{hashlib.sha256(mask).hexdigest()[:16]}.png"
        values["mask"] = await _upload(http, mask, name, headers, deadline, error)
    return values


def _blurred(mask: bytes, radius: int) -> bytes:
    """The L mask blurred by a Gaussian of ``radius`` pixels (as it is when 0)."""
    if radius <= 0:
        return mask
    from PIL import Image, ImageFilter

    with Image.open(io.BytesIO(mask)) as img:
        soft = img.convert("L").filter(ImageFilter.GaussianBlur(radius))
    out = io.BytesIO()
    soft.save(out, format="PNG", compress_level=1)
    return out.getvalue()


async def _upload(
    http: Transport,
    data: bytes,
    name: str,
    headers: dict[str, str],
    deadline: Deadline,
    error: Callable[[Response], ProviderError],
) -> str:
    """``POST /upload/image`` into the imagegate subfolder; the name LoadImage takes."""
    resp = await http.request(
        "POST",
        "/upload/image",
        deadline=deadline,
        data={"type": "input", "subfolder": UPLOAD_SUBFOLDER, "overwrite": "true"},
        files={"image": (name, data)},
        headers=headers,
    )
    if not resp.ok:
        raise error(resp)
    body = resp.json()
    stored = body.get("name") if isinstance(body, dict) else None
    if not isinstance(stored, str) or not stored:
        raise ProtocolError(
            f"{resp.timings.host}:{resp.timings.port} answered /upload/image without a name; "
            "check that the url is a ComfyUI server",
            provider=resp.provider,
            stage="read",
        )
    subfolder = body.get("subfolder")
    return f"{subfolder}/{stored}" if isinstance(subfolder, str) and subfolder else stored
