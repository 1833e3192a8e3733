"""Image bytes as PNG: the one conversion every provider that receives encoded images uses."""

from __future__ import annotations

import io


def to_png(data: bytes, *, decode_png: bool = True) -> tuple[bytes, int, int]:
    """PNG bytes, width and height of an image in any format Pillow reads.

    PNG bytes are kept as they are; other formats (jpeg, webp, ...) are re-encoded.
    ``decode_png``: decode a PNG in full, so a truncated one fails here; when false only
    its header is read. Raises what Pillow raises (``OSError`` and its subclass
    ``UnidentifiedImageError``, ``ValueError``): each caller maps it into the error tree.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if decode_png:
            img.load()
        if img.format == "PNG":
            return data, img.width, img.height
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue(), img.width, img.height
