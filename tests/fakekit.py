"""What the vendor fakes and the provider tests share.

For the fakes: ``solid_png`` (a quick real image), ``bearer_token`` (the token of an
``Authorization: Bearer`` header) and ``Armed`` (the documented errors armed for the next
calls, taken in order across the fake's threads). For the tests: ``drive`` (run a coroutine
on a fresh loop, then close the provider on it), ``generate`` and ``failure``.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TypeVar

import pytest
from PIL import Image

from imagegate.providers.base import Deadline, Progress, Provider
from imagegate.request import GeneratedImage, ImageRequest

T = TypeVar("T")

__all__ = ["Armed", "bearer_token", "drive", "failure", "generate", "solid_png"]


def solid_png(width: int, height: int, colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    """A solid-colour image made with Pillow, PNG (fast compression) unless ``fmt`` says so."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format=fmt, compress_level=1)
    return out.getvalue()


def bearer_token(headers: Mapping[str, str]) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; "" when there is none."""
    header = headers.get("authorization", "")
    return header[7:] if header.startswith("Bearer ") else ""


class Armed:
    """The errors a fake answers its next calls with, in the order armed; thread-safe."""

    def __init__(self, vendor: str, known: Collection[str]) -> None:
        self.vendor = vendor
        self.known = known
        self._names: list[str] = []
        self._lock = threading.Lock()

    def arm(self, name: str, times: int = 1) -> None:
        """Answer the next ``times`` matching calls with the error ``name``."""
        if name not in self.known:
            raise KeyError(f"unknown {self.vendor} error {name!r}; known: {sorted(self.known)}")
        with self._lock:
            self._names += [name] * times

    def take(self, *names: str) -> str | None:
        """The first armed error among ``names`` (any, when none are given), now disarmed."""
        with self._lock:
            for i, armed in enumerate(self._names):
                if not names or armed in names:
                    return self._names.pop(i)
        return None

    def clear(self) -> None:
        """Forget every armed error."""
        with self._lock:
            self._names.clear()


def drive(provider: Provider, body: Callable[[], Awaitable[T]]) -> T:
    """Run ``body`` on one event loop, then close the provider on that same loop."""

    async def main() -> T:
        try:
            return await body()
        finally:
            await provider.aclose()

    return asyncio.run(main())


def generate(
    provider: Provider, req: ImageRequest, seen: list[Progress] | None = None
) -> list[GeneratedImage]:
    """``req``'s images within 10 s, the progress appended to ``seen`` when given."""
    callback = seen.append if seen is not None else None
    return drive(provider, lambda: provider.generate(req, Deadline(10), callback))


def failure(provider: Provider, req: ImageRequest) -> Exception:
    """The exception generating ``req`` raises (the caller checks its class)."""
    with pytest.raises(Exception) as info:  # noqa: PT011 - the tests check the class
        generate(provider, req)
    return info.value
