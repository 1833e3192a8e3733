"""Content-addressed PNG files: ``images/<sha[:2]>/<sha>.png`` under the data dir."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path, PurePosixPath

IMAGES_DIR = "images"


def relative_path(sha256: str) -> str:
    """Where a file with this digest lives, relative to the data dir, with forward slashes."""
    return str(PurePosixPath(IMAGES_DIR, sha256[:2], f"{sha256}.png"))


def write_png(data_dir: Path, data: bytes) -> tuple[str, str]:
    """Store ``data`` under its sha256 and return ``(sha256, relative path)``.

    The file is written to a temporary name in the same folder, then renamed into place, so a
    reader never sees half a file. A file already there has the same bytes and is left alone.
    There is no fsync (it costs milliseconds per image): the file survives the process being
    killed, and only a power loss can lose it, as it can the database's last commits (WAL with
    ``synchronous=NORMAL``).
    """
    sha256 = hashlib.sha256(data).hexdigest()
    relative = relative_path(sha256)
    target = data_dir / relative
    if target.exists():
        return sha256, relative
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{sha256[:8]}-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        Path(temp).replace(target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(temp).unlink()
        raise
    return sha256, relative
