"""The embedded diffusers provider, run for real on a tiny random-weight pipeline, offline."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagegate.errors import (
    ConfigError,
    ContentFiltered,
    InvalidRequest,
    MissingDependency,
    Timeout,
    Unavailable,
    UpstreamError,
)
from imagegate.providers.base import Deadline, Progress, provider_types
from imagegate.providers.local import (
    SAMPLERS,
    DiffusersConfig,
    DiffusersProvider,
    _map_error,
    cpu_flags,
    resolve_device_dtype,
)
from imagegate.request import GeneratedImage, ImageRequest

pytestmark = pytest.mark.filterwarnings(
    # diffusers' Euler scheduler calls np.array() on a torch tensor; numpy 2 complains.
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small(**fields: Any) -> ImageRequest:
    """A 64x64, 2-step request for the tiny pipeline."""
    base: dict[str, Any] = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64}
    base["steps"] = 2
    return ImageRequest(**(base | fields))


def make(model: Path | str, **settings: Any) -> DiffusersProvider:
    """A provider for ``model`` with the full VAE unless told otherwise."""
    settings.setdefault("vae", "full")
    return DiffusersProvider("local", DiffusersConfig(model=str(model), **settings))


def generate(
    provider: DiffusersProvider,
    request: ImageRequest,
    deadline_s: float = 60.0,
    progress: Any = None,
) -> list[GeneratedImage]:
    """Run one generation to the end on a fresh event loop."""
    return asyncio.run(provider.generate(request, Deadline(deadline_s), progress))


@pytest.fixture(scope="module")
def provider(tiny_model: Path) -> Iterator[DiffusersProvider]:
    """One warm provider on the tiny pipeline, shared by the tests that only generate."""
    shared = make(tiny_model)
    yield shared
    asyncio.run(shared.aclose())


@pytest.fixture
def slow_provider(tiny_model: Path) -> Iterator[DiffusersProvider]:
    """A provider whose U-Net sleeps 20 ms per call, so runs can be stopped mid-way."""
    slow = make(tiny_model)
    asyncio.run(slow.load())
    slow.pipeline.unet.register_forward_pre_hook(lambda *_: time.sleep(0.02))
    yield slow
    asyncio.run(slow.aclose())


def test_entry_point_registers_the_diffusers_type() -> None:
    """The diffusers provider is found through the imagegate.providers entry point."""
    assert provider_types()["diffusers"].cls is DiffusersProvider


def test_importing_the_provider_does_not_import_torch() -> None:
    """Importing the provider and models modules leaves torch and diffusers unimported."""
    code = (
        "import sys, imagegate.providers.local, imagegate.hubcache; "
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_generates_a_png_of_the_requested_size(provider: DiffusersProvider) -> None:
    """A request gives PNG bytes of the asked width and height, with its seed."""
    [image] = generate(provider, small(seed=7))
    assert image.png.startswith(PNG_MAGIC)
    assert (image.width, image.height, image.seed) == (64, 64, 7)


def test_same_seed_gives_the_same_png(provider: DiffusersProvider) -> None:
    """Two runs with one seed give byte-identical PNGs."""
    first = generate(provider, small(seed=123))[0].png
    assert generate(provider, small(seed=123))[0].png == first


def test_random_seed_is_reported(provider: DiffusersProvider) -> None:
    """Without a seed, a random one in [0, 2**32-1] is used and reported."""
    [image] = generate(provider, small())
    assert 0 <= image.seed <= 2**32 - 1


def test_n_images_use_consecutive_seeds(provider: DiffusersProvider) -> None:
    """Image i of n uses seed + i, wrapping past 2**32-1."""
    images = generate(provider, small(seed=2**32 - 1, n=2))
    assert [image.seed for image in images] == [2**32 - 1, 0]
    assert images[0].png != images[1].png


def test_progress_is_reported_for_every_step(provider: DiffusersProvider) -> None:
    """Each denoising step reaches the progress callback, in order."""
    seen: list[Progress] = []
    generate(provider, small(steps=3, seed=1), progress=seen.append)
    assert seen == [Progress(1, 3), Progress(2, 3), Progress(3, 3)]


def test_cancelling_stops_the_pipeline_within_a_step(slow_provider: DiffusersProvider) -> None:
    """Cancelling the awaiting task stops the worker after at most one more step."""
    seen: list[Progress] = []

    async def main() -> None:
        started = asyncio.Event()

        def on_step(step: Progress) -> None:
            seen.append(step)
            started.set()

        task = asyncio.create_task(slow_provider.generate(small(steps=50), Deadline(60), on_step))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    steps_at_cancel = len(seen)
    time.sleep(0.1)
    assert len(seen) == steps_at_cancel < 50


def test_deadline_mid_generation_raises_timeout_total(slow_provider: DiffusersProvider) -> None:
    """A deadline passing during the steps ends the run with Timeout(stage='total')."""
    with pytest.raises(Timeout) as caught:
        generate(slow_provider, small(steps=50), deadline_s=0.3)
    assert caught.value.stage == "total"


@pytest.mark.parametrize(
    ("sampler", "scheduler", "karras"),
    [
        ("Euler a", "EulerAncestralDiscreteScheduler", False),
        ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", True),
        ("DDIM", "DDIMScheduler", False),
        ("UniPC", "UniPCMultistepScheduler", False),
    ],
)
def test_sampler_names_map_to_diffusers_schedulers(
    provider: DiffusersProvider, sampler: str, scheduler: str, karras: bool
) -> None:
    """An AUTOMATIC1111 sampler name runs with the matching diffusers scheduler."""
    generate(provider, small(sampler=sampler, seed=1))
    used = provider.pipeline.scheduler
    assert type(used).__name__ == scheduler
    assert bool(used.config.get("use_karras_sigmas", False)) is karras


def test_every_sampler_name_builds_a_scheduler(provider: DiffusersProvider) -> None:
    """Every listed sampler name resolves to a scheduler class diffusers has."""
    import diffusers

    assert all(hasattr(diffusers, cls) for cls, _ in SAMPLERS.values())


def test_unknown_sampler_is_refused_naming_the_allowed_names(
    provider: DiffusersProvider,
) -> None:
    """An unknown sampler is InvalidRequest on field 'sampler' listing the names."""
    with pytest.raises(InvalidRequest) as caught:
        generate(provider, small(sampler="Euler z"))
    assert caught.value.field == "sampler"
    assert "DPM++ 2M SDE" in str(caught.value)


def test_another_model_is_refused_naming_field_model(provider: DiffusersProvider) -> None:
    """A request for a model other than the configured one is InvalidRequest on 'model'."""
    with pytest.raises(InvalidRequest) as caught:
        generate(provider, small(model="someone/else"))
    assert caught.value.field == "model"


def test_flagged_image_raises_content_filtered(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image the model's safety checker flags is ContentFiltered, never a black PNG."""
    flagging = make(tiny_model)
    asyncio.run(flagging.load())
    monkeypatch.setattr(
        flagging.pipeline,
        "run_safety_checker",
        lambda image, device, dtype: (image, [True] * image.shape[0]),
    )
    with pytest.raises(ContentFiltered):
        generate(flagging, small(seed=1))


def test_missing_hub_model_offline_is_unavailable_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An uncached hub model offline fails at once naming model, cache folder and fix."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(Unavailable) as caught:
        generate(make("someone/not-cached"), small())
    message = str(caught.value)
    assert "someone/not-cached" in message
    assert str(tmp_path) in message
    assert "imagegate models pull someone/not-cached" in message
    assert caught.value.retry_after is None


def test_cached_hub_model_loads_from_the_cache_offline(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id found in the hub cache loads from it with no network."""
    import huggingface_hub.constants

    repo = tmp_path / "models--someone--tiny"
    shutil.copytree(tiny_model, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    [image] = generate(make("someone/tiny"), small(seed=3))
    assert image.seed == 3


def test_missing_folder_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    """A model folder that does not exist is ConfigError on providers.<name>.model."""
    with pytest.raises(ConfigError) as caught:
        generate(make(tmp_path / "nowhere"), small())
    assert caught.value.key == "providers.local.model"


def test_missing_torch_raises_missing_dependency(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without torch and diffusers importable, loading names the pip line to run."""
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(MissingDependency) as caught:
        asyncio.run(make(tiny_model).load())
    assert "pip install 'imagegate[local]'" in str(caught.value)


def test_tiny_vae_replaces_the_full_vae(tiny_model: Path, tiny_vae: Path) -> None:
    """vae='tiny' loads AutoencoderTiny from tiny_vae and still makes images."""
    tiny = make(tiny_model, vae="tiny", tiny_vae=str(tiny_vae))
    [image] = generate(tiny, small(seed=1))
    assert type(tiny.pipeline.vae).__name__ == "AutoencoderTiny"
    assert (image.width, image.height) == (64, 64)
    assert tiny.describe()["vae"] == "tiny"


def test_auto_vae_falls_back_to_full_when_tiny_is_not_cached(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """vae='auto' on CPU keeps the full VAE, with a warning, when TAESD is not cached."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    auto = make(tiny_model, vae="auto", device="cpu")
    with caplog.at_level(logging.WARNING):
        asyncio.run(auto.load())
    assert auto.describe()["vae"] == "full"
    assert "madebyollin/taesd" in caplog.text


def test_tiny_vae_not_cached_is_an_error_when_asked_for(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vae='tiny' with TAESD missing from the cache fails with Unavailable."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(Unavailable, match="madebyollin/taesd"):
        asyncio.run(make(tiny_model, vae="tiny").load())


def test_describe_reports_device_dtype_vae_and_loaded(tiny_model: Path) -> None:
    """describe() adds device, dtype, VAE and whether the pipeline is loaded."""
    fresh = make(tiny_model, device="cpu", dtype="float32")
    assert fresh.describe()["loaded"] is False
    asyncio.run(fresh.load())
    info = fresh.describe()
    assert (info["device"], info["dtype"], info["vae"], info["loaded"]) == (
        "cpu",
        "float32",
        "full",
        True,
    )


def test_probe_passes_for_a_model_folder_without_loading(tiny_model: Path) -> None:
    """probe() accepts an existing folder and leaves the pipeline unloaded."""
    fresh = make(tiny_model)
    asyncio.run(fresh.probe(Deadline(10)))
    assert fresh.pipeline is None


def test_probe_fails_for_an_uncached_hub_model_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """probe() reports an uncached hub model offline as Unavailable."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(Unavailable):
        asyncio.run(make("someone/not-cached").probe(Deadline(10)))


@pytest.mark.parametrize(
    ("device", "cuda", "mps", "flags", "expected"),
    [
        ("auto", True, False, set(), ("cuda", "float16")),
        ("auto", False, True, set(), ("mps", "float16")),
        ("auto", False, False, {"avx2", "avx512f"}, ("cpu", "float32")),
        ("auto", False, False, {"avx512_bf16"}, ("cpu", "bfloat16")),
        ("auto", False, False, {"amx_bf16", "amx_tile"}, ("cpu", "bfloat16")),
        ("cpu", True, False, set(), ("cpu", "float32")),
    ],
)
def test_auto_device_and_dtype_follow_the_hardware(
    device: Any, cuda: bool, mps: bool, flags: set[str], expected: tuple[str, str]
) -> None:
    """auto picks CUDA/MPS with float16, and bf16 on CPU only with native bf16 support."""
    assert resolve_device_dtype(device, "auto", cuda=cuda, mps=mps, flags=flags) == expected


def test_explicit_dtype_is_kept() -> None:
    """An explicit dtype is used as given, never corrected."""
    assert resolve_device_dtype("cpu", "float16", cuda=False, mps=False, flags=()) == (
        "cpu",
        "float16",
    )


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    """cpu_flags() returns the flags line of /proc/cpuinfo, empty when it is missing."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OSError("no file named model_index.json"), Unavailable),
        (RuntimeError("CUDA out of memory"), Unavailable),
        (RuntimeError("something broke"), UpstreamError),
        (ValueError("`height` and `width` have to be divisible by 8"), InvalidRequest),
    ],
)
def test_library_errors_map_into_the_tree(exc: Exception, expected: type[Exception]) -> None:
    """diffusers and torch exceptions become imagegate errors in one function."""
    assert type(_map_error(exc, "local", "m", time.monotonic(), "generate")) is expected
