"""What the router remembers of each provider's speed, per request shape, in fixed memory.

For every successful attempt the router adds two figures to the provider's memory: the time to
the first byte of the answer (the longest wait for response headers in the attempt, as the
transport measured it; for a synchronous image API that is the generation) and the total time
of the attempt. Each figure goes into a DDSketch (``ddsketch``: quantiles within 2 % relative
error, a bounded number of bins) kept per provider and per *shape* of request: the requested
pixels (width x height x n, in powers-of-four buckets) times the steps (powers-of-two buckets),
so a 1024x1024, 50-step request is not judged by the speed of 64x64 thumbnails.

Each sketch holds two windows of ``WINDOW`` samples, the current and the previous one; a full
current window replaces the previous one. Quantiles come from both, so the memory follows a
provider that became slower or faster within a few hundred requests while never holding more
than ``2 x BIN_LIMIT`` bins. At most ``MAX_SHAPES`` shapes are kept per provider (the least
recently used goes first).

The memory is per process, on purpose: latency is a property of the path from this process to
the provider as much as of the provider, every replica learns it within ``learn_min_samples``
successes of its own traffic, and sharing it would cost a write to the shared database on every
request. The breakers, which must agree across replicas, are shared (see the backplane).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace

from ddsketch import LogCollapsingLowestDenseDDSketch

from imagegate.request import ImageRequest

__all__ = ["LatencyMemory", "Quantiles", "Shape", "ShapeLatency", "shape_of"]

WINDOW = 256
"""Samples per window; a sketch remembers the last one to two windows."""
RELATIVE_ACCURACY = 0.02
BIN_LIMIT = 256
MAX_SHAPES = 32
STALE_FRACTION = 64
"""Quantiles are worked out again once the samples since the last time reach 1/64 of them."""
_SMALLEST_S = 1e-4  # a sketch needs positive values; nothing is faster than 0.1 ms


@dataclass(frozen=True, order=True)
class Shape:
    """A coarse bucket of requests that take about as long: pixels x steps."""

    side: int | None
    """The side of a square with about the request's pixels (width x height x n), a power of
    two; None when the request leaves the size to the provider."""
    steps: int | None
    """The lowest step count of the bucket, a power of two; None for the provider's default."""

    @property
    def label(self) -> str:
        size = f"~{self.side}x{self.side}" if self.side else "default size"
        if self.steps is None:
            return f"{size}, default steps"
        return f"{size}, {self.steps}-{self.steps * 2 - 1} steps"


def shape_of(request: ImageRequest) -> Shape:
    """The shape bucket of ``request``."""
    side = None
    if request.width and request.height:
        pixels = request.width * request.height * request.n
        side = 2 ** round(math.log2(math.sqrt(pixels)))
    steps = 2 ** int(math.log2(request.steps)) if request.steps else None
    return Shape(side, steps)


@dataclass(frozen=True)
class Quantiles:
    """What one sketch says: how many samples and the p50 / p95 / p99 in seconds."""

    samples: int
    p50: float
    p95: float
    p99: float

    def to_json(self) -> dict[str, float | int]:
        return {
            "samples": self.samples,
            "p50_s": round(self.p50, 3),
            "p95_s": round(self.p95, 3),
            "p99_s": round(self.p99, 3),
        }


def _sketch() -> LogCollapsingLowestDenseDDSketch:
    return LogCollapsingLowestDenseDDSketch(
        relative_accuracy=RELATIVE_ACCURACY, bin_limit=BIN_LIMIT
    )


class Sketch:
    """A streaming quantile estimate over the last one to two windows of samples."""

    def __init__(self) -> None:
        self._current = _sketch()
        self._previous: LogCollapsingLowestDenseDDSketch | None = None
        self._quantiles: Quantiles | None = None
        self._computed_at = 0  # the samples the quantiles were worked out from

    @property
    def samples(self) -> int:
        previous = self._previous.count if self._previous is not None else 0
        return int(self._current.count + previous)

    def add(self, seconds: float) -> None:
        if self._current.count >= WINDOW:
            self._previous, self._current = self._current, _sketch()
        self._current.add(max(seconds, _SMALLEST_S))

    def quantiles(self) -> Quantiles | None:
        """p50 / p95 / p99 over both windows; None before the first sample.

        Merging the windows costs more than the rest of a request's routing, and one more
        sample barely moves a quantile: they are worked out again once the samples since
        the last time reach 1/64 of them (every sample while there are fewer than 64); the
        count is always the current one.
        """
        samples = self.samples
        if not samples:
            return None
        cached = self._quantiles
        if cached is None or abs(samples - self._computed_at) > samples // STALE_FRACTION:
            merged = _sketch()
            merged.merge(self._current)
            if self._previous is not None:
                merged.merge(self._previous)
            p50, p95, p99 = (merged.get_quantile_value(q) or 0.0 for q in (0.5, 0.95, 0.99))
            cached = self._quantiles = Quantiles(samples, p50, p95, p99)
            self._computed_at = samples
        elif cached.samples != samples:
            cached = self._quantiles = replace(cached, samples=samples)
        return cached


class ShapeLatency:
    """One provider's memory for one shape: time to first byte and total time."""

    def __init__(self) -> None:
        self.first_byte = Sketch()
        self.total = Sketch()


class LatencyMemory:
    """Every provider's latency, per shape; what hedging and hang detection learn from."""

    def __init__(self) -> None:
        self._by_provider: dict[str, OrderedDict[Shape, ShapeLatency]] = {}

    def observe(
        self, provider: str, shape: Shape, total_s: float, first_byte_s: float | None
    ) -> None:
        """Remember one successful attempt (``first_byte_s`` None: nothing went over HTTP)."""
        shapes = self._by_provider.setdefault(provider, OrderedDict())
        memory = shapes.get(shape)
        if memory is None:
            memory = shapes[shape] = ShapeLatency()
            if len(shapes) > MAX_SHAPES:
                shapes.popitem(last=False)
        shapes.move_to_end(shape)
        memory.total.add(total_s)
        if first_byte_s is not None:
            memory.first_byte.add(first_byte_s)

    def observe_lower_bound(self, provider: str, shape: Shape, waited_s: float) -> None:
        """An attempt cancelled after ``waited_s`` because a hedge answered first.

        Its real time is unknown but at least ``waited_s``; counting it keeps the p95 from
        drifting down as hedging cuts off exactly the slow answers it would learn from.
        """
        memory = self._by_provider.get(provider, OrderedDict()).get(shape)
        if memory is not None:
            memory.total.add(waited_s)

    def of(self, provider: str, shape: Shape) -> ShapeLatency | None:
        return self._by_provider.get(provider, OrderedDict()).get(shape)

    def shapes(self, provider: str) -> list[tuple[Shape, ShapeLatency]]:
        """The shapes remembered for ``provider``, most samples first."""
        shapes = self._by_provider.get(provider, OrderedDict())
        return sorted(shapes.items(), key=lambda item: -item[1].total.samples)
