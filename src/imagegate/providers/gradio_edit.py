"""The gradio provider's edits: which endpoint parameters take images, and their upload.

What it relies on (providers.md section 13.8, read from gradio ``routes.py`` (``POST
/upload``), ``route_utils.py``, ``processing_utils.py``, ``data_classes.py`` (``FileData``)
and gradio_client's ``utils.handle_file`` / ``Client._upload_file``):

* ``POST {prefix}/upload`` (``/gradio_api/upload`` since Gradio 5), multipart with one part
  named ``files`` per file (the file name is kept), answers a JSON list of server paths, in
  order; over the app's ``max_file_size`` it answers 413. It runs on the same transport,
  with the same per-stage budgets and headers as the call.
* Each path is then passed at its parameter's position as ``{"path", "orig_name", "meta":
  {"_type": "gradio.FileData"}}``; without ``meta`` FileData-based components refuse it, so it
  is always sent. Gateway-local paths or URLs are never sent (the Space would fetch them).

Which parameter takes the image is the app's choice, so edits are declared only when
``image_param`` names it (img2img), and inpainting only when ``mask_param`` names a second
image parameter too; the mask is uploaded as the internal L PNG (white = repaint), the
convention of Spaces that take a plain mask image (an app that reads transparency wants a
workflow of its own). ``strength`` goes to a parameter named strength, denoising_strength or
denoise (or the one ``params.strength`` names); a request whose strength has nowhere to go
is refused, as every unmapped field is. One input image per request; more is refused
(InvalidRequest naming images).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, Field, model_validator

from imagegate.errors import ProtocolError, ProviderError
from imagegate.providers.base import Deadline
from imagegate.providers.edits import filename, init_image, mask_png
from imagegate.request import ImageRequest
from imagegate.transport import Response, Transport, expect_json

__all__ = ["GradioEditSettings", "capabilities", "edit_params", "upload_inputs"]


class GradioEditSettings(BaseModel):
    """The gradio provider's edit settings (mixed into its config)."""

    image_param: str | None = Field(
        default=None,
        min_length=1,
        description="The endpoint's parameter that takes the input image (a gr.Image); "
        "none = the provider makes no edits.",
    )
    mask_param: str | None = Field(
        default=None,
        min_length=1,
        description="The endpoint's parameter that takes the mask image (white = repaint); "
        "none = no inpainting. Needs image_param.",
    )

    @model_validator(mode="after")
    def _mask_needs_image(self) -> GradioEditSettings:
        if self.mask_param and not self.image_param:
            raise ValueError(
                "mask_param needs image_param: name the parameter that takes the image too"
            )
        return self


def capabilities(settings: GradioEditSettings) -> frozenset[str]:
    """txt2img, plus img2img with an image parameter, plus inpaint with a mask one too."""
    tasks = {"txt2img"}
    if settings.image_param:
        tasks.add("img2img")
        if settings.mask_param:
            tasks.add("inpaint")
    return frozenset(tasks)


def edit_params(settings: GradioEditSettings) -> dict[str, str]:
    """Request field ("image", "mask") -> the endpoint parameter configured for it."""
    found = {"image": settings.image_param, "mask": settings.mask_param}
    return {field: name for field, name in found.items() if name}


async def upload_inputs(
    http: Transport,
    base: str,
    request: ImageRequest,
    headers: Mapping[str, str],
    deadline: Deadline,
    error: Callable[[Response], ProviderError],
) -> dict[str, Any]:
    """Upload the init image (and the mask) to ``{base}/upload``; field -> FileData."""
    image = init_image(request)
    names = {"image": filename(image)}
    files = [("files", (names["image"], image.data, image.mime))]
    if request.mask is not None:
        names["mask"] = f"mask-{request.mask.sha256[:16]}.png"
        files.append(("files", (names["mask"], mask_png(request), "image/png")))
    resp = await http.request(
        "POST", f"{base}/upload", deadline=deadline, files=files, headers=headers
    )
    if not resp.ok:
        raise error(resp)
    paths = expect_json(resp)
    if not isinstance(paths, list) or len(paths) != len(files):
        raise ProtocolError(
            f"{resp.timings.host}:{resp.timings.port} answered /upload without a path per "
            "file; check that url/space is a Gradio 4+ app",
            provider=resp.provider,
            stage="read",
        )
    return {
        field: {"path": str(path), "orig_name": names[field], "meta": {"_type": "gradio.FileData"}}
        for field, path in zip(names, paths, strict=True)
    }
