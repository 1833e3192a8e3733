"""Image bytes as PNG: the one conversion every provider that receives encoded images uses."""

from __future__ import annotations

import io
import struct

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def to_png(data: bytes, *, decode_png: bool = True) -> tuple[bytes, int, int]:
    """PNG bytes, width and height of an image in any format Pillow reads.

    PNG bytes are kept as they are; other formats (jpeg, webp, ...) are re-encoded.
    ``decode_png``: decode a PNG in full, so a truncated one fails here; when false only
    its header is read. Raises what Pillow raises (``OSError`` and its subclass
    ``UnidentifiedImageError``, ``ValueError``): each caller maps it into the error tree.
    """
    if not decode_png:
        size = _png_size(data)
        if size is not None:
            return data, *size
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if decode_png:
            img.load()
        if img.format == "PNG":
            return data, img.width, img.height
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue(), img.width, img.height


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk (what Pillow reads first); None if not one."""
    if len(data) < 33 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return (width, height) if width and height else None
