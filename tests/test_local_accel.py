"""The diffusers provider's speed-up switches: torch.compile with its cache, channels_last."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imagegate.providers.base import Deadline
from imagegate.providers.local import DiffusersConfig, DiffusersProvider
from imagegate.providers.local_accel import compile_cache_dir
from imagegate.request import GeneratedImage, ImageRequest

pytestmark = [
    # importing torch._inductor touches torch.jit.script_method (torch 2.13)
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    # dynamo tracing diffusers' upsampler notes an lru_cache it traces through
    pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`"),
]

# A one-convolution stand-in for the U-Net, compiled through the provider's own accelerate():
# the tiny pipeline's U-Net takes ~50 s to compile cold on two cores, this one a few seconds.
STAND_IN = """
import json, sys, types
from pathlib import Path
import torch
from torch._dynamo.utils import counters
from imagegate.providers.local_accel import accelerate

class StandIn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, sample):
        return torch.nn.functional.silu(self.conv(sample)) * 2

torch.manual_seed(0)
pipe = types.SimpleNamespace(unet=StandIn())
accelerate(pipe, provider="local", compile_unet=True, channels_last=False,
           cache_dir=Path(sys.argv[1]))
with torch.inference_mode():
    pipe.unet(torch.ones(1, 4, 8, 8))
print(json.dumps(dict(counters["inductor"])))
"""


def request(**fields: Any) -> ImageRequest:
    """A 64x64, 2-step, guidance 0 request with a fixed seed."""
    base: dict[str, Any] = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}
    return ImageRequest(**(base | {"guidance": 0.0, "seed": 3} | fields))


def run(model: Path, **settings: Any) -> list[GeneratedImage]:
    """The images of one request to a provider with ``settings`` on the tiny pipeline."""
    config = DiffusersConfig.model_validate({"model": str(model), "vae": "full"} | settings)
    provider = DiffusersProvider("local", config)

    async def main() -> list[GeneratedImage]:
        try:
            return await provider.generate(request(), Deadline(120), None)
        finally:
            await provider.aclose()

    return asyncio.run(main())


def test_compile_failure_falls_back_to_eager_with_a_warning(
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An inductor failure is logged with its cause and the image comes from the eager U-Net."""
    import torch._inductor.compile_fx as compile_fx

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("no C++ compiler in this test")

    monkeypatch.setattr(compile_fx, "compile_fx", broken)
    [eager] = run(tiny_model)
    with caplog.at_level(logging.WARNING, logger="imagegate.providers.local_accel"):
        [image] = run(tiny_model, compile=True, compile_cache=str(tmp_path))
    [warning] = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.message]
    assert "RuntimeError: no C++ compiler in this test" in warning
    assert image.png == eager.png


def test_compile_cache_is_reused_across_processes(tmp_path: Path) -> None:
    """A second process compiling the same U-Net reads inductor's cache in compile_cache."""
    cache = tmp_path / "cache"

    def compile_once() -> dict[str, int]:
        done = subprocess.run(
            [sys.executable, "-c", STAND_IN, str(cache)],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        counts: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
        return counts

    first = compile_once()
    assert first.get("fxgraph_cache_miss") == 1
    assert any(cache.rglob("*.py"))  # the generated kernels live in the configured folder
    second = compile_once()
    assert second.get("fxgraph_cache_hit") == 1
    assert "fxgraph_cache_miss" not in second


def test_compile_cache_defaults_to_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without compile_cache the cache is torch-compile in IMAGEGATE_DATA_DIR."""
    monkeypatch.setenv("IMAGEGATE_DATA_DIR", str(tmp_path))
    assert compile_cache_dir(None) == tmp_path / "torch-compile"
    assert compile_cache_dir("~/x") == Path("~/x").expanduser()


def test_channels_last_puts_the_unet_weights_in_that_format(tiny_model: Path) -> None:
    """channels_last = true stores the U-Net's convolution weights channels-last."""
    import torch

    config = DiffusersConfig.model_validate(
        {"model": str(tiny_model), "vae": "full", "channels_last": True}
    )
    provider = DiffusersProvider("local", config)

    async def main() -> list[GeneratedImage]:
        try:
            await provider.load()
            weight = provider.pipeline.unet.conv_in.weight
            assert weight.is_contiguous(memory_format=torch.channels_last)
            return await provider.generate(request(), Deadline(60), None)
        finally:
            await provider.aclose()

    [image] = asyncio.run(main())
    assert image.width == 64


def test_speed_ups_are_off_by_default() -> None:
    """compile and channels_last are opt-in: a cold compile costs minutes on a small CPU."""
    config = DiffusersConfig()
    assert (config.compile, config.channels_last, config.compile_cache) == (False, False, None)
