"""Image to image and inpainting on the embedded pipeline, made from the loaded one."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from test_inputs import encoded
from test_local_provider import generate, make, provider, small

from imagegate.errors import InvalidRequest
from imagegate.inputs import InputImage, normalize_mask
from imagegate.providers.base import Progress
from imagegate.providers.local import DiffusersProvider

__all__ = ["provider"]  # the shared warm provider fixture


def source(size: tuple[int, int] = (64, 64)) -> InputImage:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 80, 40)).save(buf, format="PNG")
    return InputImage.from_bytes(buf.getvalue())


def test_img2img_reuses_the_loaded_modules_and_keeps_the_input_size(
    provider: DiffusersProvider,
) -> None:
    """The edit pipeline is built from the loaded one (same U-Net), the output 64x40."""
    images = generate(provider, small(images=(source((64, 40)),), strength=0.5, seed=3))
    assert (images[0].width, images[0].height, images[0].seed) == (64, 40, 3)
    assert provider._loaded is not None
    assert provider._loaded.edits["img2img"].unet is provider.pipeline.unet


def test_progress_counts_the_steps_strength_leaves(provider: DiffusersProvider) -> None:
    """4 steps at strength 0.5 run, and report, 2 steps."""
    seen: list[Progress] = []
    generate(provider, small(images=(source(),), steps=4, strength=0.5), progress=seen.append)
    assert seen == [Progress(1, 2), Progress(2, 2)]


def test_inpainting_repaints_only_inside_the_mask(provider: DiffusersProvider) -> None:
    """A mask of the left half: the right half is the input as it was."""
    image = source()
    half = Image.new("L", (64, 64), 0)
    half.paste(255, (0, 0, 32, 64))
    buf = io.BytesIO()
    half.save(buf, format="PNG")
    mask = normalize_mask(InputImage.from_bytes(buf.getvalue()), image, convention="white")
    request = small(images=(image,), mask=mask, strength=1.0, mask_blur=0, seed=1)
    out = generate(provider, request)
    with Image.open(io.BytesIO(out[0].png)) as made:
        right = made.convert("RGB").crop((40, 0, 64, 64)).getextrema()
    assert right == ((200, 200), (80, 80), (40, 40))
    assert provider._loaded is not None
    assert "inpaint" in provider._loaded.edits


def test_a_strength_that_runs_no_step_is_refused_naming_strength(
    provider: DiffusersProvider,
) -> None:
    """2 steps at strength 0.2 would run 0 steps: InvalidRequest(field='strength')."""
    with pytest.raises(InvalidRequest) as caught:
        generate(provider, small(images=(source(),), strength=0.2))
    assert caught.value.field == "strength"


def test_edits_do_not_load_a_second_pipeline(tiny_model: Path) -> None:
    """img2img and inpaint on a fresh provider: one load, the same VAE object everywhere."""
    fresh = make(tiny_model)
    image = source()
    mask = normalize_mask(InputImage.from_bytes(encoded("L", (64, 64), colour=255)), image,
                          convention="white")  # fmt: skip
    generate(fresh, small(images=(image,), strength=0.5))
    generate(fresh, small(images=(image,), mask=mask, strength=0.5))
    assert fresh._loaded is not None
    assert {id(p.vae) for p in fresh._loaded.edits.values()} == {id(fresh.pipeline.vae)}
