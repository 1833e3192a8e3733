"""Batching for the embedded pipeline: concurrent requests of one shape share one call.

The pipeline runs one call at a time on its worker thread. Requests that wait meanwhile
with the same shape (size, steps, guidance, sampler and scheduler; text to image) are merged
into the next call, up to ``max_batch`` images: prompts and negative prompts become lists and
every image keeps its own generator, so it starts from the same noise as it would alone.
Each request keeps its own progress events, deadline and cancel: a request cancelled or out of
time leaves the call at once and the others go on; the call stops early only when nobody is
left. A request alone runs exactly as before batching (``DiffusersProvider._generate_sync``).

On a GPU one call of 8 images takes little longer than one of 1, so batching multiplies
throughput; on a CPU the arithmetic is already the bottleneck and a batch of 4 measured
slower than 4 single calls, so a CPU does not batch unless ``max_batch`` says so.
``batch_wait_ms`` (default 0) makes the first request of a call wait for company; with 0 only
requests already waiting are merged, so nobody waits longer than without batching.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imagegate.errors import Cancelled, ImagegateError
from imagegate.providers.base import Progress
from imagegate.request import GeneratedImage, ImageRequest, seed_series

if TYPE_CHECKING:
    from imagegate.providers.local import DiffusersProvider, _Loaded, _Run

__all__ = ["Batcher", "default_max_batch"]

Shape = tuple[Any, ...]


def default_max_batch(device: str) -> int:
    """Most images in one call when ``max_batch`` is unset: 8 on a GPU; 1 (no batching) on a
    CPU, where a call of 4 made 0.76x the images per second of 4 calls of 1
    (``benchmarks/local_speed.py --only batching``, sd-turbo at 512x512, 2 vCPUs)."""
    return 1 if device == "cpu" else 8


@dataclass(eq=False)
class _Member:
    """One request waiting for, or riding in, a pipeline call."""

    request: ImageRequest
    seed: int
    run: _Run
    shape: Shape
    result: Future[list[GeneratedImage]] = field(default_factory=Future)
    queued: float = field(default_factory=time.monotonic)
    left: bool = False
    """Cancelled or out of time: its images are dropped, the call goes on for the others."""
    alone: bool = False
    """Taken into a call of its own: stopping it stops the call."""


class Batcher:
    """The requests waiting for one provider's pipeline, merged into calls by shape."""

    def __init__(self, provider: DiffusersProvider) -> None:
        self._provider = provider
        self._lock = threading.Lock()
        self._waiting: list[_Member] = []
        self.sizes: list[int] = []
        """The number of requests in each call made so far (for tests and the benchmark)."""

    async def generate(
        self,
        pool: ThreadPoolExecutor,
        loaded: _Loaded,
        request: ImageRequest,
        seed: int,
        run: _Run,
        started: float,
    ) -> list[GeneratedImage]:
        """Queue ``request`` for the next call of its shape and wait for its images."""
        member = _Member(request, seed, run, self._provider.batch_shape(loaded, request))
        with self._lock:
            self._waiting.append(member)
        pool.submit(self._drain, loaded, started)
        waiter = asyncio.wrap_future(member.result)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=run.deadline.remaining())
        except asyncio.CancelledError:
            run.stop.set()
            if self._leave(member) and not member.result.done():
                with contextlib.suppress(BaseException):
                    await asyncio.shield(waiter)  # alone in its call: it stops within a step
            raise
        if not done:
            run.stop.set()
            self._leave(member)
            raise self._provider._timeout("during generation", started)
        return waiter.result()

    def _leave(self, member: _Member) -> bool:
        """Take ``member`` out; True when it is running alone (its call stops with it)."""
        with self._lock:
            if member in self._waiting:
                self._waiting.remove(member)
                member.result.cancel()
                return False
            member.left = True
            return member.alone

    # -- the worker thread ---------------------------------------------------------------

    def _take(self, limit: int) -> list[_Member]:
        """The oldest waiting request and those of its shape, up to ``limit`` images."""
        with self._lock:
            if not self._waiting:
                return []
            shape = self._waiting[0].shape
            taken: list[_Member] = []
            images = 0
            for member in list(self._waiting):
                if member.shape != shape or images + member.request.n > max(limit, 1):
                    continue
                taken.append(member)
                images += member.request.n
            if not taken:  # a request larger than the batch runs alone
                taken = [self._waiting[0]]
            for member in taken:
                self._waiting.remove(member)
                member.alone = len(taken) == 1
            return taken

    def _drain(self, loaded: _Loaded, started: float) -> None:
        """One call for the oldest waiting request and its company (on the worker thread)."""
        limit = self._provider.max_batch(loaded)
        wait_s = self._provider.config.batch_wait_ms / 1000
        if wait_s > 0:
            with self._lock:
                first = self._waiting[0].queued if self._waiting else None
            if first is not None:
                time.sleep(max(0.0, first + wait_s - time.monotonic()))
        batch = self._take(limit)
        if not batch:
            return  # an earlier call took this request along
        self.sizes.append(len(batch))
        if len(batch) == 1:
            member = batch[0]
            _settle(
                member,
                lambda: self._provider._guarded(
                    lambda: self._provider._generate_sync(
                        loaded, member.request, member.seed, member.run
                    ),
                    started,
                ),
            )
            return
        try:
            images = self._provider._guarded(lambda: self._call(loaded, batch), started)
        except BaseException as exc:
            for member in batch:
                if not member.result.done():
                    member.result.set_exception(exc)
            return
        for member, mine in zip(batch, images, strict=True):
            if member.result.done():
                continue
            if isinstance(mine, ImagegateError):
                member.result.set_exception(mine)
            else:
                member.result.set_result(mine)

    def _call(
        self, loaded: _Loaded, batch: list[_Member]
    ) -> list[list[GeneratedImage] | ImagegateError]:
        """One pipeline call for several requests: each image with its own generator."""
        from imagegate.providers.local import _import_torch, _to_image, safety_refusal

        torch, _ = _import_torch()
        provider = self._provider
        first = batch[0].request
        pipe = loaded.pipe
        width, height, steps, guidance = provider.call_size(loaded, first)
        pipe.scheduler = provider._scheduler(loaded, first.sampler, first.scheduler)
        per_image = [(member, seed) for member in batch for seed in _series(member)]
        prompts = [m.request.prompt for m, _ in per_image]
        negatives = [m.request.negative_prompt for m, _ in per_image]
        generators = [torch.Generator("cpu").manual_seed(seed) for _, seed in per_image]

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
            total = int(getattr(pipe, "num_timesteps", 0) or steps)
            riding = [m for m in batch if not (m.left or m.run.stop.is_set())]
            for member in batch:
                if member in riding and member.run.deadline.expired:
                    member.left = True
                    member.result.set_exception(
                        provider._timeout("during generation", member.queued)
                    )
                elif member in riding:
                    member.run.steps_done = step + 1
                    if member.run.report is not None:
                        member.run.report(Progress(step + 1, total))
            if not any(not (m.left or m.run.stop.is_set()) for m in batch):
                pipe._interrupt = True
            return {}

        with torch.inference_mode():
            out = pipe(
                prompt=prompts,
                negative_prompt=negatives if any(negatives) else None,
                width=width,
                height=height,
                num_inference_steps=steps,
                guidance_scale=guidance,
                num_images_per_prompt=1,
                generator=generators,
                callback_on_step_end=on_step_end,
            )
        flagged = list(getattr(out, "nsfw_content_detected", None) or [])
        results: list[list[GeneratedImage] | ImagegateError] = []
        index = 0
        for member in batch:
            n = member.request.n
            seeds = [seed for _, seed in per_image[index : index + n]]
            mine = list(zip(out.images[index : index + n], seeds, strict=True))
            marks = flagged[index : index + n]
            index += n
            if member.left or member.run.stop.is_set():
                results.append(Cancelled("cancelled while its batch ran"))
            elif (refusal := safety_refusal(marks, provider.name)) is not None:
                results.append(refusal)
            else:
                results.append([_to_image(img, seed) for img, seed in mine])
        return results


def _series(member: _Member) -> list[int]:
    return seed_series(member.seed, member.request.n)


def _settle(member: _Member, work: Callable[[], list[GeneratedImage]]) -> None:
    """Run ``work`` for ``member`` and hand its outcome to the waiting caller."""
    try:
        images = work()
    except BaseException as exc:
        if not member.result.done():
            member.result.set_exception(exc)
        return
    if not member.result.done():
        member.result.set_result(images)
