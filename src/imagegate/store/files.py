"""Content-addressed PNG files: ``images/<sha[:2]>/<sha>.png`` under the data dir."""

# Plain ``os`` calls on string paths: this runs once per stored image, on the job's path,
# where pathlib cost more than the system calls around it.
# ruff: noqa: PTH103, PTH105, PTH108, PTH110, PTH118

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from pathlib import Path

IMAGES_DIR = "images"

_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_TEMP_TRIES = 100
_counter = itertools.count()
_folders: set[str] = set()  # folders this process made (or found) already: no mkdir each time


def relative_path(sha256: str) -> str:
    """Where a file with this digest lives, relative to the data dir, with forward slashes."""
    return f"{IMAGES_DIR}/{sha256[:2]}/{sha256}.png"


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
    folder = os.path.join(data_dir, IMAGES_DIR, sha256[:2])
    target = os.path.join(folder, f"{sha256}.png")
    if os.path.exists(target):
        return sha256, relative
    fd, temp = _create_temp(folder, sha256)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return sha256, relative


def _create_temp(folder: str, sha256: str) -> tuple[int, str]:
    """A new file (mode 0600, as ``tempfile.mkstemp`` makes) in ``folder``, made if need be.

    Its name is unique to this process (pid and a counter), so unlike ``mkstemp`` no random
    name is drawn; ``O_EXCL`` still guarantees it is new, a leftover name is skipped.
    """
    if folder not in _folders:
        os.makedirs(folder, exist_ok=True)
        _folders.add(folder)
    for _ in range(_TEMP_TRIES):
        temp = os.path.join(folder, f".{sha256[:8]}-{os.getpid()}-{next(_counter)}.tmp")
        try:
            return os.open(temp, _TEMP_FLAGS, 0o600), temp
        except FileExistsError:
            continue
        except FileNotFoundError:  # the folder was removed since: make it again
            os.makedirs(folder, exist_ok=True)
    raise FileExistsError(f"{folder}: no free temporary name after {_TEMP_TRIES} tries")
