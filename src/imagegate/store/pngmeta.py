"""PNG text chunks: AUTOMATIC1111's ``parameters`` infotext and imagegate's JSON provenance.

``parameters`` follows A1111's ``create_infotext`` so that any "PNG Info" reader shows the
prompt, negative prompt, steps, sampler, CFG scale, seed, size and model::

    a lighthouse at dusk
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1234,
    Size: 512x512, Model hash: 0123456789, Model: m, Version: ...

(``Schedule type`` and ``Model hash`` only where known.) An edit adds A1111's img2img keys
before ``Version``: ``Denoising strength: 0.75``, and for an inpaint ``Mask blur: 4`` and
``Masked content`` (when not "original"). A backend that writes its own text (A1111) has it
kept as it wrote it.

``imagegate`` holds JSON provenance (provider, model, request, attempts, elapsed_s, version,
created_at). Both are built only from the request and the attempts, which hold no secret.
Text that latin-1 cannot encode goes into an iTXt chunk (UTF-8) instead of tEXt.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import re
import struct
import sys
import zlib
from datetime import datetime
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from imagegate.request import ImageRequest, ImageResult
from imagegate.sampling import AUTOMATIC, scheduler_label

PARAMETERS_KEY = "parameters"
PROVENANCE_KEY = "imagegate"

# A1111's modules/infotext_utils.py: a key, then a JSON-quoted value or anything up to a comma.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_NEGATIVE = "Negative prompt:"
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


def imagegate_version() -> str:
    """imagegate's version: ``imagegate.__version__`` if set, else the installed metadata."""
    package = sys.modules.get("imagegate")
    version = getattr(package, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version("imagegate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def quote(value: object) -> str:
    """A1111's ``quote``: JSON-quote a value holding ',', a newline or ':'; else as is."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    """A1111's ``unquote``: the inverse of :func:`quote`; malformed quoting is kept as is."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str) else text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def infotext(
    request: ImageRequest,
    *,
    seed: int,
    width: int,
    height: int,
    model: str,
    steps: int | None,
    sampler: str | None,
    guidance: float | None,
    scheduler: str | None = None,
    model_hash: str | None = None,
) -> str:
    """The A1111 ``parameters`` text for one image, keys in A1111's order, None ones left out;
    ``Schedule type`` is "Automatic" when a sampler ran without a named scheduler."""
    if scheduler is None and sampler is not None:
        scheduler = AUTOMATIC
    params: dict[str, object | None] = {
        "Steps": steps,
        "Sampler": sampler,
        "Schedule type": scheduler_label(scheduler),
        "CFG scale": None if guidance is None else _number(guidance),
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
        "Model": model,
        **_edit_params(request),
        "Version": f"imagegate {imagegate_version()}",
    }
    line = ", ".join(
        key if key == value else f"{key}: {quote(value)}"
        for key, value in params.items()
        if value is not None
    )
    negative = f"\n{_NEGATIVE} {request.negative_prompt}" if request.negative_prompt else ""
    return f"{request.prompt}{negative}\n{line}".strip()


def _edit_params(request: ImageRequest) -> dict[str, object | None]:
    """An edit's infotext keys as A1111's img2img writes them: ``Denoising strength`` (where
    the request names it), then for an inpaint ``Mask blur`` (when not 0) and ``Masked
    content`` (unless "original", A1111's default)."""
    if not request.images:
        return {}
    params: dict[str, object | None] = {
        "Denoising strength": None if request.strength is None else _number(request.strength)
    }
    if request.mask is not None:
        params["Mask blur"] = request.mask_blur or None
        if request.inpaint_fill != "original":
            params["Masked content"] = request.inpaint_fill
    return params


def parse_infotext(text: str) -> dict[str, str]:
    """Read A1111 ``parameters`` text back, as A1111's ``parse_generation_parameters`` does.

    Returns ``Prompt`` and ``Negative prompt`` (empty when absent) and each ``Key: value`` of
    the last line, unquoted, every value a string (``Size`` stays ``WxH``).
    """
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt = negative = ""
    done_with_prompt = False
    for raw in lines:
        line = raw.strip()
        if line.startswith(_NEGATIVE):
            done_with_prompt = True
            line = line.removeprefix(_NEGATIVE).strip()
        if done_with_prompt:
            negative += ("\n" if negative else "") + line
        else:
            prompt += ("\n" if prompt else "") + line
    result = {"Prompt": prompt, "Negative prompt": negative}
    for key, value in _PARAM.findall(last):
        result[key] = unquote(value)
    return result


def provenance(result: ImageResult, *, created_at: datetime) -> dict[str, Any]:
    """The ``imagegate`` chunk's JSON: how the image was made, never a secret."""
    return {
        "provider": result.provider,
        "model": result.model,
        "request": result.request.model_dump(mode="json"),
        "attempts": [attempt.model_dump(mode="json") for attempt in result.attempts],
        "elapsed_s": result.elapsed_s,
        "version": imagegate_version(),
        "created_at": created_at.isoformat(),
    }


def png_with_metadata(png: bytes, parameters: str, provenance: dict[str, Any]) -> bytes:
    """``png`` carrying exactly our two text chunks (ICC profile kept).

    Any text chunk already in the image is dropped. A well-formed PNG keeps its pixel data
    as is: the chunks are spliced in after IHDR without decoding the image (a 512x512 PNG
    would otherwise cost tens of milliseconds to re-encode). Anything else, or a PNG whose
    structure or checksums do not hold, is decoded and re-encoded by Pillow; input Pillow
    reads in another format is converted to PNG.
    """
    text = json.dumps(provenance, ensure_ascii=False, sort_keys=True)
    spliced = _splice_text(png, ((PARAMETERS_KEY, parameters), (PROVENANCE_KEY, text)))
    if spliced is not None:
        return spliced
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, parameters)
    info.add_text(PROVENANCE_KEY, text)
    out = io.BytesIO()
    with Image.open(io.BytesIO(png)) as source:
        image: Image.Image = source
        if image.mode not in _PNG_MODES:
            image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
        image.save(out, format="PNG", pnginfo=info, icc_profile=source.info.get("icc_profile"))
    return out.getvalue()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = frozenset({b"tEXt", b"iTXt", b"zTXt"})


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _text_chunk(key: str, value: str) -> bytes:
    """What Pillow's ``PngInfo.add_text`` writes: tEXt for latin-1 text, else UTF-8 iTXt."""
    try:
        return _chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        return _chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0" + value.encode("utf-8"))


def _splice_text(png: bytes, texts: tuple[tuple[str, str], ...]) -> bytes | None:
    """``png`` with its text chunks replaced by ``texts``, or None unless it is a sound PNG."""
    if not png.startswith(_PNG_SIGNATURE):
        return None
    view = memoryview(png)
    parts: list[bytes] = [_PNG_SIGNATURE]
    pos = len(_PNG_SIGNATURE)
    first = True
    while pos + 12 <= len(png):
        (length,) = struct.unpack_from(">I", png, pos)
        end = pos + 12 + length
        kind = png[pos + 4 : pos + 8]
        if end > len(png) or (first and kind != b"IHDR"):
            return None
        (crc,) = struct.unpack_from(">I", png, end - 4)
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            return None
        if kind not in _TEXT_CHUNKS:
            parts.append(png[pos:end])
        if first:
            parts.extend(_text_chunk(key, value) for key, value in texts)
            first = False
        pos = end
        if kind == b"IEND":
            return b"".join(parts) if pos == len(png) else None
    return None


def read_metadata(png: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """The ``parameters`` text and the ``imagegate`` provenance of a PNG; None when absent."""
    with Image.open(io.BytesIO(png)) as image:
        chunks = getattr(image, "text", None)
        text: dict[Any, Any] = dict(chunks if isinstance(chunks, dict) else image.info)
    parameters = text.get(PARAMETERS_KEY)
    raw = text.get(PROVENANCE_KEY)
    data: Any = None
    if isinstance(raw, str):
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
    return (
        str(parameters) if isinstance(parameters, str) else None,
        data if isinstance(data, dict) else None,
    )
