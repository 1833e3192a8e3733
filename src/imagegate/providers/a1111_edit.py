"""The a1111 provider's edits: the ``POST /sdapi/v1/img2img`` body (kept apart from the
text-to-image code in ``a1111``).

What it relies on (providers.md section 13.2, read from A1111 v1.10.1 ``modules/api/models.py``
``StableDiffusionImg2ImgProcessingAPI``, ``modules/api/api.py img2imgapi`` and
``modules/processing.py``):

* ``init_images`` is a list of base64 strings (no ``data:`` prefix needed); missing, the
  server answers 404 ``Init image not found``; undecodable, 500 ``Invalid encoded image``.
  One input image (A1111 repeats one init image ``batch_size`` times); more is refused.
* ``mask`` is one base64 image. An L mask reads white = inpaint (an RGBA one would be read
  from its alpha, opaque = inpaint, so the internal L mask is sent as it is, never RGBA).
* ``denoising_strength`` (0-1, A1111's API default 0.75, used here when the request has no
  strength); A1111 runs ``int(strength * steps)`` sampler steps.
* ``inpainting_fill``: 0 fill, 1 original, 2 latent noise, 3 latent nothing; ``mask_blur``
  in pixels; ``inpaint_full_res = false`` ("Whole picture"): the API's default "Only masked"
  would sample the mask's box alone and silently fall back to img2img on a blank mask.
* ``width`` x ``height`` is the output size and the init image is resized to it (default
  512x512), so they default to the init image's size rounded down to a multiple of 8.
"""

from __future__ import annotations

from typing import Any

from imagegate.providers.edits import b64, default_strength, init_image, mask_png
from imagegate.request import MIN_SIDE, ImageRequest

__all__ = ["DEFAULT_STRENGTH", "FILLS", "img2img_body"]

DEFAULT_STRENGTH = 0.75
"""A1111's own ``denoising_strength`` default."""

FILLS = {"fill": 0, "original": 1, "latent noise": 2, "latent nothing": 3}
"""The request's ``inpaint_fill`` -> A1111's ``inpainting_fill``."""


def img2img_body(request: ImageRequest, txt2img: dict[str, Any]) -> dict[str, Any]:
    """The img2img body: the txt2img fields plus the init image, strength and mask."""
    image = init_image(request)
    body = {
        **txt2img,
        "init_images": [b64(image.data)],
        "denoising_strength": default_strength(request, DEFAULT_STRENGTH),
        "resize_mode": 0,
        "width": request.width or max(MIN_SIDE, image.width // 8 * 8),
        "height": request.height or max(MIN_SIDE, image.height // 8 * 8),
        "include_init_images": False,
    }
    if request.mask is not None:
        body.update(
            mask=b64(mask_png(request)),
            mask_blur=request.mask_blur,
            inpainting_fill=FILLS[request.inpaint_fill],
            inpaint_full_res=False,
            inpainting_mask_invert=0,
        )
    return body
