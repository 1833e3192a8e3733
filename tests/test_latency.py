"""The latency memory: per provider and shape, quantiles in fixed memory."""

from __future__ import annotations

import random

from imagegate.latency import BIN_LIMIT, MAX_SHAPES, WINDOW, LatencyMemory, Sketch, shape_of
from imagegate.request import ImageRequest


def test_quantiles_are_within_two_percent_of_the_exact_ones() -> None:
    """p50 / p95 / p99 of 1000 samples agree with the sorted samples within 2 %."""
    rand = random.Random(1)
    values = [rand.uniform(0.8, 1.2) for _ in range(WINDOW)]
    sketch = Sketch()
    for value in values:
        sketch.add(value)
    quantiles = sketch.quantiles()
    assert quantiles is not None
    ordered = sorted(values)
    for got, q in ((quantiles.p50, 0.5), (quantiles.p95, 0.95), (quantiles.p99, 0.99)):
        exact = ordered[int(q * (len(ordered) - 1))]
        assert abs(got - exact) / exact <= 0.021


def test_a_sketch_forgets_all_but_the_last_two_windows() -> None:
    """After a provider gets slower, the old samples leave within two windows."""
    sketch = Sketch()
    for _ in range(3 * WINDOW):
        sketch.add(1.0)
    for _ in range(2 * WINDOW):
        sketch.add(10.0)
    quantiles = sketch.quantiles()
    assert quantiles is not None
    assert quantiles.samples <= 2 * WINDOW
    assert quantiles.p50 > 9.0


def test_a_sketch_holds_a_bounded_number_of_bins() -> None:
    """Latencies spread over six decades still fit in the bin limit of each window."""
    sketch = Sketch()
    for i in range(WINDOW):
        sketch.add(10 ** (-3 + 6 * i / WINDOW))
    assert len(sketch._current._store.bins) <= BIN_LIMIT


def test_shapes_bucket_size_times_count_and_steps_coarsely() -> None:
    """512x512 x1 at 20 steps and 520x504 at 30 steps share a bucket; 1024x1024 does not."""
    a = shape_of(ImageRequest(prompt="p", width=512, height=512, steps=20))
    b = shape_of(ImageRequest(prompt="p", width=520, height=504, steps=30))
    c = shape_of(ImageRequest(prompt="p", width=1024, height=1024, steps=20))
    four = shape_of(ImageRequest(prompt="p", width=512, height=512, steps=20, n=4))
    assert a == b
    assert a != c
    assert four == c
    assert a.label == "~512x512, 16-31 steps"
    assert shape_of(ImageRequest(prompt="p")).label == "default size, default steps"


def test_memory_keeps_at_most_max_shapes_per_provider() -> None:
    """The least recently used shape is dropped past MAX_SHAPES."""
    memory = LatencyMemory()
    sides = (64, 128, 256, 512, 1024, 2048)
    steps = (1, 2, 4, 8, 16, 32, 64, 128)
    for side in sides:
        for step in steps:
            request = ImageRequest(prompt="p", width=side, height=side, steps=step)
            memory.observe("a", shape_of(request), 1.0, 1.0)
    assert len(sides) * len(steps) > MAX_SHAPES
    assert len(memory.shapes("a")) == MAX_SHAPES
    newest = shape_of(ImageRequest(prompt="p", width=2048, height=2048, steps=128))
    oldest = shape_of(ImageRequest(prompt="p", width=64, height=64, steps=1))
    assert memory.of("a", newest) is not None
    assert memory.of("a", oldest) is None
