"""Copy every stored image from one image store to another (``imagegate storage migrate``).

Idempotent and resumable: a digest the target holds already (same size) is skipped, so a copy
cut short is finished by running it again, and a second run copies nothing. Each image is read
from the source and checked against its digest before the target keeps it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from imagegate.errors import StorageError
from imagegate.store.blobs import ImageStore


@dataclass
class CopyReport:
    """What one migration run did."""

    copied: int = 0
    skipped: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, int]:
        return {"copied": self.copied, "skipped": self.skipped, "bytes": self.bytes}


async def copy_images(
    source: ImageStore,
    target: ImageStore,
    *,
    on_image: Callable[[str, bool], None] | None = None,
) -> CopyReport:
    """Copy what ``target`` lacks from ``source``; ``on_image(sha256, copied)`` per image."""
    report = CopyReport()
    async for sha256 in source.iterate():
        size = await source.size(sha256)
        if await target.size(sha256) == size and size:
            report.skipped += 1
            if on_image is not None:
                on_image(sha256, False)
            continue
        data = await source.read(sha256)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StorageError(
                f"image {sha256[:12]} does not match its digest; not copied",
                backend=source.backend,
            )
        await target.put(data)
        report.copied += 1
        report.bytes += len(data)
        if on_image is not None:
            on_image(sha256, True)
    return report
