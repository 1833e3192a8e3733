"""Batching on the embedded pipeline: concurrent requests of one shape share one call, and
each keeps its own seeds, progress, deadline and cancel."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_local_provider import make, small

from imagegate.deadline import Deadline
from imagegate.errors import Timeout
from imagegate.providers.base import Progress
from imagegate.providers.local import DiffusersProvider
from imagegate.request import GeneratedImage


@pytest.fixture
def batching(tiny_model: Path) -> Iterator[DiffusersProvider]:
    """A provider that batches up to 4 images, waits 300 ms for company, and whose U-Net
    sleeps 20 ms per call."""
    provider = make(tiny_model, max_batch=4, batch_wait_ms=300)
    asyncio.run(provider.load())
    provider.pipeline.unet.register_forward_pre_hook(lambda *_: time.sleep(0.02))
    yield provider
    asyncio.run(provider.aclose())


def _pixels(image: GeneratedImage) -> Any:
    return np.asarray(Image.open(io.BytesIO(image.png)).convert("RGB"), dtype=np.float64)


def test_concurrent_requests_of_one_shape_share_one_call_and_keep_their_seeds(
    batching: DiffusersProvider,
) -> None:
    """Two requests sent together run in one call; each image is its request's alone."""

    async def together() -> list[list[GeneratedImage]]:
        return list(
            await asyncio.gather(
                batching.generate(small(seed=11, prompt="a red boat"), Deadline(60), None),
                batching.generate(small(seed=22, n=2, prompt="a fox"), Deadline(60), None),
            )
        )

    boat, foxes = asyncio.run(together())
    assert batching._batcher.sizes == [2]
    assert [image.seed for image in boat + foxes] == [11, 22, 23]
    alone = asyncio.run(batching.generate(small(seed=22, n=2, prompt="a fox"), Deadline(60), None))
    for batched, single in zip(foxes, alone, strict=True):
        assert np.abs(_pixels(batched) - _pixels(single)).max() <= 2  # float noise at most


def test_each_batched_request_gets_its_own_progress(batching: DiffusersProvider) -> None:
    """Both callers see every step of their shared call."""
    first: list[Progress] = []
    second: list[Progress] = []

    async def together() -> None:
        await asyncio.gather(
            batching.generate(small(seed=1, steps=3), Deadline(60), first.append),
            batching.generate(small(seed=2, steps=3), Deadline(60), second.append),
        )

    asyncio.run(together())
    assert first == second == [Progress(1, 3), Progress(2, 3), Progress(3, 3)]


def test_cancelling_one_batched_request_leaves_the_others_running(
    batching: DiffusersProvider,
) -> None:
    """The cancelled caller leaves at once; its companion still gets its image."""

    async def main() -> list[GeneratedImage]:
        stays = asyncio.create_task(batching.generate(small(seed=5, steps=30), Deadline(60), None))
        started = asyncio.Event()
        leaves = asyncio.create_task(
            batching.generate(small(seed=6, steps=30), Deadline(60), lambda _: started.set())
        )
        await started.wait()
        leaves.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaves
        return await stays

    images = asyncio.run(main())
    assert batching._batcher.sizes == [2]
    assert [image.seed for image in images] == [5]


def test_a_batched_request_past_its_deadline_times_out_alone(
    batching: DiffusersProvider,
) -> None:
    """A request whose deadline passes mid-call gets Timeout(total); the other finishes."""

    async def main() -> tuple[BaseException | list[GeneratedImage], ...]:
        return tuple(
            await asyncio.gather(
                batching.generate(small(seed=7, steps=30), Deadline(0.6), None),
                batching.generate(small(seed=8, steps=30), Deadline(60), None),
                return_exceptions=True,
            )
        )

    short, long = asyncio.run(main())
    assert isinstance(short, Timeout)
    assert short.stage == "total"
    assert isinstance(long, list)
    assert long[0].seed == 8


def test_requests_of_different_shapes_run_in_separate_calls(
    batching: DiffusersProvider,
) -> None:
    """A 2-step and a 3-step request sent together make two calls."""

    async def together() -> None:
        await asyncio.gather(
            batching.generate(small(seed=1), Deadline(60), None),
            batching.generate(small(seed=2, steps=3), Deadline(60), None),
        )

    asyncio.run(together())
    assert sorted(batching._batcher.sizes) == [1, 1]
