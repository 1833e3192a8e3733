"""Image to image and inpainting on the embedded pipeline, from the one already loaded.

``AutoPipelineForImage2Image.from_pipe`` and ``AutoPipelineForInpainting.from_pipe`` build
the edit pipelines from the loaded text-to-image one: the same modules, no second load and no
second copy of the weights (diffusers ``pipelines/auto_pipeline.py``). They share its
scheduler, so they run on the provider's one worker thread like every other call.

What diffusers does with an edit, and what imagegate makes of it:

- ``strength`` (default 0.75, A1111's) is the share of the image re-noised; diffusers runs
  ``int(steps x strength)`` steps, and imagegate reports that count in the progress events.
  When it rounds to 0, the request is refused naming ``strength`` (diffusers' inpainting
  raises, its image to image would run no step at all).
- The output has the input's size; an input whose sides are not multiples of 8 is first
  resized down to the nearest multiples (at most 7 pixels less), as diffusers' image
  processor would do. Inpainting is given that size too (diffusers' default is the model's).
- Outside the mask the result is the input as it was (``apply_overlay``, as A1111 does),
  so only the masked area changes.
- The mask arrives in imagegate's internal form (white = repaint); ``mask_blur`` blurs it
  with the pipeline's own ``mask_processor.blur``. A text-to-image checkpoint's 4-channel
  U-Net takes diffusers' blending path (the area outside the mask is re-imposed after each
  step); an inpainting checkpoint uses its 9-channel path. ``inpaint_fill`` is A1111's and is
  not applied here (diffusers starts the masked area from the noised image, A1111's
  "original").
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

from imagegate.errors import InvalidRequest
from imagegate.request import GeneratedImage, ImageRequest

if TYPE_CHECKING:
    from imagegate.providers.local import DiffusersProvider, _Loaded, _Run

__all__ = ["DEFAULT_STRENGTH", "EDIT_TASKS", "edit_sync", "effective_steps"]

DEFAULT_STRENGTH = 0.75
"""The share of an input image re-noised when the request names none (A1111's default)."""
EDIT_TASKS = frozenset({"img2img", "inpaint"})


def effective_steps(steps: int, strength: float) -> int:
    """The steps diffusers runs for an edit: ``int(steps x strength)``."""
    return int(steps * min(strength, 1.0))


def edit_sync(
    provider: DiffusersProvider, loaded: _Loaded, request: ImageRequest, seed: int, run: _Run
) -> list[GeneratedImage]:
    """One image-to-image or inpainting call on the worker thread."""
    from PIL import Image

    from imagegate.providers.local import _to_image

    _, _, steps, guidance = provider.call_size(loaded, request)
    strength = request.strength if request.strength is not None else DEFAULT_STRENGTH
    if effective_steps(steps, strength) < 1:
        raise InvalidRequest(
            f"strength: {strength:g} x {steps} steps runs no step (diffusers runs "
            f"int(steps x strength)); raise strength or steps so their product is at least 1",
            field="strength",
            limit=f"at least {1 / steps:.3g} with {steps} steps",
            provider=provider.name,
        )
    pipe = _pipeline(loaded, request.task)
    pipe.scheduler = provider._scheduler(loaded, request.sampler, request.scheduler)
    source = request.images[0]
    width, height = source.width // 8 * 8, source.height // 8 * 8
    with Image.open(io.BytesIO(source.data)) as raw:
        init = _sized(raw.convert("RGB"), width, height)
    extra: dict[str, Any] = {}
    mask = None
    if request.task == "inpaint" and request.mask is not None:
        with Image.open(io.BytesIO(request.mask.data)) as raw_mask:
            mask = _sized(raw_mask.convert("L"), width, height)
        if request.mask_blur:
            mask = pipe.mask_processor.blur(mask, blur_factor=request.mask_blur)
        extra = {"mask_image": mask, "width": width, "height": height}
    made, seeds = provider.call_pipeline(
        pipe,
        request,
        seed,
        run,
        image=init,
        strength=strength,
        num_inference_steps=steps,
        guidance_scale=guidance,
        **extra,
    )
    if mask is not None:  # outside the mask, the input as it was (A1111 does the same)
        made = [pipe.image_processor.apply_overlay(mask, init, image) for image in made]
    return [_to_image(img, s) for img, s in zip(made, seeds, strict=True)]


def _sized(image: Any, width: int, height: int) -> Any:
    """``image`` at ``width`` x ``height`` (its size rounded down to a multiple of 8)."""
    return image if image.size == (width, height) else image.resize((width, height))


def _pipeline(loaded: _Loaded, task: str) -> Any:
    """The edit pipeline for ``task``, made once from the loaded one (same modules)."""
    if task not in loaded.edits:
        import diffusers

        lib: Any = diffusers
        auto = (
            lib.AutoPipelineForInpainting if task == "inpaint" else lib.AutoPipelineForImage2Image
        )
        edit = auto.from_pipe(loaded.pipe)
        edit.set_progress_bar_config(disable=True)
        loaded.edits[task] = edit
    return loaded.edits[task]
