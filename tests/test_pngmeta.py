"""PNG metadata: A1111's ``parameters`` infotext and imagegate's provenance chunk."""

from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from imagegate.request import Attempt, AttemptError, GeneratedImage, ImageRequest, ImageResult
from imagegate.store.pngmeta import (
    imagegate_version,
    infotext,
    parse_infotext,
    png_with_metadata,
    provenance,
    read_metadata,
)

VERSION = f"imagegate {imagegate_version()}"


def _png(size: tuple[int, int] = (64, 64), pnginfo: PngInfo | None = None) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format="PNG", pnginfo=pnginfo)
    return out.getvalue()


def _text_chunk_types(png: bytes) -> dict[str, str]:
    """Map each text chunk's keyword to its chunk type (tEXt, iTXt, zTXt)."""
    found: dict[str, str] = {}
    pos = 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind = png[pos + 4 : pos + 8].decode("ascii")
        body = png[pos + 8 : pos + 8 + length]
        if kind in ("tEXt", "iTXt", "zTXt"):
            found[body.split(b"\0", 1)[0].decode("latin-1")] = kind
        pos += 12 + length
    return found


def _infotext(request: ImageRequest, **overrides: Any) -> str:
    values: dict[str, Any] = {
        "seed": 7,
        "width": 64,
        "height": 64,
        "model": "tiny",
        "steps": 2,
        "sampler": None,
        "guidance": None,
    }
    values.update(overrides)
    return infotext(request, **values)


def test_parameters_chunk_reads_back_in_a1111_format() -> None:
    """Pillow reads back A1111's infotext: prompt, negative prompt line, then the settings."""
    request = ImageRequest(prompt="a ✔ lighthouse", negative_prompt="blurry", steps=2, seed=7)
    png = png_with_metadata(_png(), _infotext(request), {"provider": "local"})

    with Image.open(io.BytesIO(png)) as image:
        text = image.text  # type: ignore[attr-defined]

    assert text["parameters"] == (
        "a ✔ lighthouse\n"
        "Negative prompt: blurry\n"
        f"Steps: 2, Seed: 7, Size: 64x64, Model: tiny, Version: {VERSION}"
    )


def test_non_latin1_text_goes_into_an_itxt_chunk() -> None:
    """Text latin-1 cannot encode, such as a check mark, is written as UTF-8 iTXt."""
    request = ImageRequest(prompt="a ✔ lighthouse")
    png = png_with_metadata(_png(), _infotext(request), {"prompt": "✔"})

    assert _text_chunk_types(png) == {"parameters": "iTXt", "imagegate": "iTXt"}


def test_latin1_text_stays_in_a_text_chunk() -> None:
    """Plain text is written as tEXt, the chunk every PNG reader knows."""
    request = ImageRequest(prompt="a café at dusk")
    png = png_with_metadata(_png(), _infotext(request), {"provider": "local"})

    assert _text_chunk_types(png) == {"parameters": "tEXt", "imagegate": "tEXt"}


def test_negative_prompt_line_is_left_out_when_empty() -> None:
    """Without a negative prompt the settings line follows the prompt directly."""
    text = _infotext(ImageRequest(prompt="a lighthouse"))

    assert text == f"a lighthouse\nSteps: 2, Seed: 7, Size: 64x64, Model: tiny, Version: {VERSION}"


def test_settings_follow_a1111_key_order() -> None:
    """Steps, Sampler, Schedule type, CFG scale, Seed, Size, Model: A1111's order."""
    text = _infotext(ImageRequest(prompt="p"), sampler="Euler a", guidance=7.5, steps=20)

    assert text.splitlines()[1] == (
        "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 7, "
        f"Size: 64x64, Model: tiny, Version: {VERSION}"
    )


def test_unknown_settings_are_left_out() -> None:
    """Steps, sampler and CFG scale that are None are not written at all."""
    text = _infotext(ImageRequest(prompt="p"), steps=None)

    assert text.splitlines()[1] == f"Seed: 7, Size: 64x64, Model: tiny, Version: {VERSION}"


def test_whole_number_guidance_is_written_without_decimals() -> None:
    """A CFG scale of 7.0 is written as A1111's UI writes it: 7."""
    text = _infotext(ImageRequest(prompt="p"), guidance=7.0)

    assert "CFG scale: 7, " in text


def test_values_with_comma_colon_or_newline_are_json_quoted() -> None:
    """A value holding ',', ':' or a newline is JSON-quoted so the line still parses."""
    text = _infotext(ImageRequest(prompt="p"), sampler="DPM++ 2M, Karras", model="org/m:v2")

    assert 'Sampler: "DPM++ 2M, Karras"' in text
    assert 'Model: "org/m:v2"' in text


def test_parse_infotext_inverts_infotext() -> None:
    """Reading our infotext gives back the prompts and every setting, unquoted."""
    request = ImageRequest(
        prompt="a ✔ lighthouse,\nat dusk", negative_prompt="blurry: very\nnoisy", steps=2
    )
    text = _infotext(request, sampler="DPM++ 2M, Karras", guidance=3.5, model="org/m:v2")

    assert parse_infotext(text) == {
        "Prompt": "a ✔ lighthouse,\nat dusk",
        "Negative prompt": "blurry: very\nnoisy",
        "Steps": "2",
        "Sampler": "DPM++ 2M, Karras",
        "Schedule type": "Automatic",
        "CFG scale": "3.5",
        "Seed": "7",
        "Size": "64x64",
        "Model": "org/m:v2",
        "Version": VERSION,
    }


def test_parse_infotext_reads_an_a1111_infotext() -> None:
    """An infotext written by AUTOMATIC1111 itself parses, keys A1111 adds included."""
    text = (
        "a lighthouse\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1234, "
        "Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
    )

    parsed = parse_infotext(text)

    assert parsed["Prompt"] == "a lighthouse"
    assert parsed["Negative prompt"] == "blurry"
    assert parsed["Schedule type"] == "Automatic"
    assert parsed["Model hash"] == "6ce0161689"
    assert parsed["Size"] == "512x512"


def test_parse_infotext_of_a_bare_prompt_has_no_settings() -> None:
    """Text without a settings line is all prompt."""
    assert parse_infotext("a lighthouse\nat dusk") == {
        "Prompt": "a lighthouse\nat dusk",
        "Negative prompt": "",
    }


def test_read_metadata_returns_parameters_and_provenance() -> None:
    """Both chunks come back: the infotext as text, the provenance as a dict."""
    png = png_with_metadata(_png(), "p\nSteps: 2, Seed: 7, Size: 64x64", {"provider": "x"})

    assert read_metadata(png) == ("p\nSteps: 2, Seed: 7, Size: 64x64", {"provider": "x"})


def test_read_metadata_of_a_plain_png_is_empty() -> None:
    """A PNG without our chunks reads as (None, None)."""
    assert read_metadata(_png()) == (None, None)


def test_existing_text_chunks_are_replaced_not_duplicated() -> None:
    """A provider's own ``parameters`` chunk gives way to ours; other text is dropped."""
    theirs = PngInfo()
    theirs.add_text("parameters", "their infotext")
    theirs.add_text("comment", "from the provider")
    png = png_with_metadata(_png(pnginfo=theirs), "ours", {})

    assert read_metadata(png)[0] == "ours"
    assert set(_text_chunk_types(png)) == {"parameters", "imagegate"}


def test_pixels_survive_the_metadata() -> None:
    """Adding the chunks leaves the image itself unchanged."""
    original = _png((72, 64))
    png = png_with_metadata(original, "p", {})

    with Image.open(io.BytesIO(original)) as before, Image.open(io.BytesIO(png)) as after:
        assert after.size == (72, 64)
        assert after.tobytes() == before.tobytes()


def test_provenance_records_how_the_image_was_made() -> None:
    """Provenance names provider, model, request, attempts, elapsed time, version and time."""
    request = ImageRequest(prompt="p", seed=7)
    result = ImageResult(
        images=[GeneratedImage(png=_png(), width=64, height=64, seed=7)],
        provider="local",
        model="tiny",
        attempts=[
            Attempt(
                provider="space",
                outcome="error",
                error=AttemptError(type="Timeout", stage="connect", message="m"),
                elapsed_s=2.0,
            ),
            Attempt(provider="local", outcome="ok", elapsed_s=1.0),
        ],
        elapsed_s=3.0,
        request=request,
    )
    created = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

    data = provenance(result, created_at=created)

    assert json.loads(json.dumps(data)) == {
        "provider": "local",
        "model": "tiny",
        "request": request.model_dump(mode="json"),
        "attempts": [attempt.model_dump(mode="json") for attempt in result.attempts],
        "elapsed_s": 3.0,
        "version": imagegate_version(),
        "created_at": "2025-01-02T03:04:05+00:00",
    }


def test_an_img2img_infotext_carries_the_denoising_strength() -> None:
    """An edit writes A1111's ``Denoising strength`` after Model, before Version."""
    from editkit import edit_request

    text = _infotext(edit_request(strength=0.75))

    assert text.splitlines()[1] == (
        f"Steps: 2, Seed: 7, Size: 64x64, Model: tiny, Denoising strength: 0.75, Version: {VERSION}"
    )


def test_an_inpaint_infotext_carries_mask_blur_and_masked_content() -> None:
    """An inpaint adds ``Mask blur`` and a fill other than "original" as ``Masked content``."""
    from editkit import edit_request

    text = _infotext(edit_request(mask=True, inpaint_fill="latent noise"))

    assert parse_infotext(text) | {"Version": ""} == {
        "Prompt": "a lighthouse",
        "Negative prompt": "",
        "Steps": "2",
        "Seed": "7",
        "Size": "64x64",
        "Model": "tiny",
        "Denoising strength": "0.5",
        "Mask blur": "4",
        "Masked content": "latent noise",
        "Version": "",
    }
