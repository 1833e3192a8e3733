"""POST /sdapi/v1/img2img as A1111 1.10 answers it, so ``webuiapi.img2img`` works unchanged.

The body is A1111's ``StableDiffusionImg2ImgProcessingAPI`` with its API defaults
(``denoising_strength`` 0.75, ``inpainting_fill`` 0 "fill", ``inpaint_full_res`` true,
``mask_blur`` 4). ``init_images`` and ``mask`` are base64 strings or ``data:`` URIs; unlike
A1111, an ``http(s)`` URL is refused (a gateway that fetched any URL a caller names would be a
server-side request forgery). When the body names a ``width`` and ``height`` other than the
first image's, the image (and the mask) are resized to them first, as A1111's "Just resize"
does; the mask follows A1111's rule (an RGBA mask that is not fully opaque is read by its
alpha, opaque = repaint; any other by its brightness, white = repaint), inverted with
``inpainting_mask_invert = 1``. The answer is txt2img's shape, with img2img's
``denoising_strength`` and ``extra_generation_params`` in ``info``; ``parameters`` echoes
``init_images`` and ``mask`` as null unless ``include_init_images``.
"""

from __future__ import annotations

import io
import json
from typing import Any

from imagegate.errors import InvalidRequest
from imagegate.inputs import InputImage, normalize_mask
from imagegate.server.a1111.generate import generate
from imagegate.server.a1111.models import Txt2ImgBody, Txt2ImgResponse, to_request
from imagegate.server.deps import ServerContext
from imagegate.server.tenants import Caller

__all__ = ["Img2ImgBody", "img2img"]

FILLS = ("fill", "original", "latent noise", "latent nothing")
"""A1111's ``inpainting_fill`` values 0-3, by name."""


class Img2ImgBody(Txt2ImgBody):
    """A1111's img2img request: txt2img's fields and the edit's, with A1111's API defaults."""

    init_images: list[str] | None = None
    mask: str | None = None
    denoising_strength: float | None = 0.75
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask_blur: int | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False


async def img2img(ctx: ServerContext, body: Img2ImgBody, caller: Caller | None) -> Txt2ImgResponse:
    """Decode the images, run the edit as an A1111 job, answer as A1111 does."""
    if not body.init_images:
        raise InvalidRequest(
            "init_images: Init image not found; send at least one base64 image",
            field="init_images",
            limit="at least 1 image",
        )
    size = (body.width, body.height) if body.width and body.height else None
    images = tuple(
        _decode(text, "init_images", size) for text in body.init_images[: body.batch_size]
    )
    fields: dict[str, Any] = {"images": images, "strength": body.denoising_strength}
    if body.mask:
        given = _decode(body.mask, "mask", (images[0].width, images[0].height))
        fields["mask"] = normalize_mask(
            given, images[0], convention="a1111", invert=body.inpainting_mask_invert == 1
        )
        fields["mask_blur"] = body.mask_blur if body.mask_blur is not None else body.mask_blur_x
        fields["inpaint_fill"] = (
            FILLS[body.inpainting_fill] if 0 <= body.inpainting_fill < 4 else ("original")
        )
    request = to_request(ctx, body, **fields)
    answer = await generate(ctx, body, request, caller)
    info = json.loads(answer.info)
    info["denoising_strength"] = request.strength
    info["extra_generation_params"] = _extra(body, request.strength, masked=bool(body.mask))
    parameters = answer.parameters
    if not body.include_init_images:
        parameters.update(init_images=None, mask=None)
    return Txt2ImgResponse(images=answer.images, parameters=parameters, info=json.dumps(info))


def _decode(text: str, field: str, size: tuple[int, int] | None) -> InputImage:
    """A base64 string or ``data:`` URI as an input image, resized to ``size`` when given."""
    image = InputImage.from_text(text, field=field)
    if size is None or size == (image.width, image.height):
        return image
    from PIL import Image

    with Image.open(io.BytesIO(image.data)) as opened:
        resized = opened.resize(size)
        buf = io.BytesIO()
        resized.save(buf, format="PNG")
    return InputImage.from_bytes(buf.getvalue(), field=field)


def _extra(body: Img2ImgBody, strength: float | None, *, masked: bool) -> dict[str, Any]:
    """A1111's ``extra_generation_params`` of an img2img (its infotext keys, in its order)."""
    extra: dict[str, Any] = {"Denoising strength": strength}
    if not masked:
        return extra
    if body.inpainting_mask_invert == 1:
        extra["Mask mode"] = "Inpaint not masked"
    blur = body.mask_blur if body.mask_blur is not None else body.mask_blur_x
    if blur:
        extra["Mask blur"] = blur
    if body.inpaint_full_res:
        extra["Inpaint area"] = "Only masked"
        extra["Masked area padding"] = body.inpaint_full_res_padding
    if body.inpainting_fill != 1 and 0 <= body.inpainting_fill < 4:
        extra["Masked content"] = FILLS[body.inpainting_fill]
    return extra
