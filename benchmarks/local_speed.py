"""Seconds per 512x512 image: imagegate's local provider against plain diffusers.

Both run the SD 2.1 / sd-turbo architecture at full size with random weights built from its
config (nothing is downloaded), saved to a temporary folder and loaded back through
``from_pretrained`` so the load path is the real one. Each variant runs in its own process so
its peak memory is its own:

- ``diffusers``: diffusers as its docs show it, ``from_pretrained`` defaults (float32, the
  full VAE, the model's scheduler), 1 step, guidance 0.
- ``imagegate``: ``DiffusersProvider`` with its default settings (auto device and dtype, the
  tiny VAE on CPU), the same 1 step and guidance 0, in a process started with the glibc malloc
  settings that ``imagegate generate`` and ``imagegate serve`` give themselves
  (``imagegate.allocator``).
- ``diffusers_tuned_malloc``: plain diffusers again, under the same malloc settings, so the
  report separates what the allocator buys from what the pipeline settings buy.
- ``batching``: imagegate's provider, four compatible requests sent at once (different
  prompts and seeds, one shape), timed as images per second: batched into one pipeline call
  (``max_batch = 4``) against one call each (``max_batch = 1``), in the same process on the
  same loaded pipeline, alternating; and which of the two the device's default picks.

Prints one JSON document. Usage: ``python benchmarks/local_speed.py [--runs 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from imagegate.allocator import MARKER, tuned_env

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SIZE = 512
VARIANTS = ("diffusers", "imagegate", "diffusers_tuned_malloc", "batching")
CONCURRENT = 4


def build(folder: Path) -> None:
    """Save a random-weight sd-turbo-shaped pipeline to folder/pipe and a TAESD to folder/taesd."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    lib: Any = diffusers
    torch.manual_seed(0)
    unet = lib.UNet2DConditionModel(
        block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        use_linear_projection=True,
        sample_size=64,
        layers_per_block=2,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=1024,
            num_hidden_layers=23,
            num_attention_heads=16,
            intermediate_size=4096,
            projection_dim=512,
            hidden_act="gelu",
            vocab_size=49408,
            max_position_embeddings=77,
        )
    )
    vae = lib.AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=768,
    )
    scheduler = lib.EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="trailing",
    )
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = CLIPTokenizer.from_pretrained(_write_vocab(Path(scratch)), model_max_length=77)
    pipe = lib.StableDiffusionPipeline(
        unet=unet,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder / "pipe"), safe_serialization=True)
    lib.AutoencoderTiny().save_pretrained(str(folder / "taesd"), safe_serialization=True)


def _write_vocab(folder: Path) -> str:
    """A byte-level CLIP vocabulary (no merges): any prompt tokenizes; 77 tokens either way."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in chars:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return str(folder)


def run_batching(folder: Path, runs: int) -> dict[str, Any]:
    """Images per second for ``CONCURRENT`` compatible requests at once: batched vs one by one."""
    from imagegate.providers.base import Deadline
    from imagegate.providers.local import DiffusersConfig, DiffusersProvider
    from imagegate.request import ImageRequest

    config = DiffusersConfig(model=str(folder / "pipe"), tiny_vae=str(folder / "taesd"))
    provider = DiffusersProvider("local", config)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(provider.load())

    async def burst(seed: int) -> None:
        requests = [
            ImageRequest(prompt=f"{PROMPT}, view {i}", width=SIZE, height=SIZE, steps=1,
                         guidance=0.0, seed=seed + i)
            for i in range(CONCURRENT)
        ]  # fmt: skip
        await asyncio.gather(*(provider.generate(r, Deadline(3600), None) for r in requests))

    default = provider.max_batch(provider._loaded) if provider._loaded else None
    modes = {"batched": CONCURRENT, "one_at_a_time": 1}
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    loop.run_until_complete(burst(0))  # warm-up, batched
    for round_ in range(runs):
        for mode, max_batch in modes.items():
            provider.config = config.model_copy(update={"max_batch": max_batch})
            t0 = time.perf_counter()
            loop.run_until_complete(burst(100 * (round_ + 1)))
            seconds[mode].append(time.perf_counter() - t0)
    rate = {mode: CONCURRENT / statistics.median(times) for mode, times in seconds.items()}
    return {
        "concurrent_requests": CONCURRENT,
        "max_batch_default": default,
        "images_per_s": {mode: round(value, 4) for mode, value in rate.items()},
        "burst_s": {mode: [round(t, 3) for t in times] for mode, times in seconds.items()},
        "batched_vs_one_at_a_time": round(rate["batched"] / rate["one_at_a_time"], 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def run_variant(variant: str, folder: Path, runs: int) -> dict[str, Any]:
    """Load, make a first image, then time ``runs`` more; report seconds and peak memory."""
    if variant == "batching":
        return run_batching(folder, runs)
    started = time.perf_counter()
    make = _imagegate(folder) if variant == "imagegate" else _plain(folder)
    malloc = os.environ.get("GLIBC_TUNABLES", "default")
    loaded = time.perf_counter()
    make(0)
    first = time.perf_counter()
    times = []
    for seed in range(1, runs + 1):
        t0 = time.perf_counter()
        make(seed)
        times.append(time.perf_counter() - t0)
    import torch

    return {
        "sec_per_image": round(statistics.median(times), 3),
        "runs_s": [round(t, 3) for t in times],
        "load_s": round(loaded - started, 3),
        "first_call_s": round(first - started, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "torch_threads": torch.get_num_threads(),
        "glibc_tunables": malloc,
    }


def _plain(folder: Path) -> Any:
    import diffusers
    import torch

    lib: Any = diffusers
    pipe = lib.AutoPipelineForText2Image.from_pretrained(str(folder / "pipe"))
    pipe.set_progress_bar_config(disable=True)

    def make(seed: int) -> None:
        generator = torch.Generator("cpu").manual_seed(seed)
        pipe(PROMPT, num_inference_steps=1, guidance_scale=0.0, generator=generator)

    return make


def _imagegate(folder: Path) -> Any:
    from imagegate.providers.base import Deadline
    from imagegate.providers.local import DiffusersConfig, DiffusersProvider
    from imagegate.request import ImageRequest

    config = DiffusersConfig(model=str(folder / "pipe"), tiny_vae=str(folder / "taesd"))
    provider = DiffusersProvider("local", config)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(provider.load())
    info = provider.describe()
    print(json.dumps({"settings": {k: info[k] for k in ("device", "dtype", "vae")}}))

    def make(seed: int) -> None:
        request = ImageRequest(
            prompt=PROMPT, width=SIZE, height=SIZE, steps=1, guidance=0.0, seed=seed
        )
        loop.run_until_complete(provider.generate(request, Deadline(600), None))

    return make


def environment() -> dict[str, Any]:
    """CPU model and the flags that decide bf16, library versions, threads."""
    import diffusers
    import torch

    from imagegate.providers.local import cpu_flags

    flags = cpu_flags()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "cpu_flags": {flag: flag in flags for flag in wanted},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="timed images after the first")
    parser.add_argument(
        "--only", choices=VARIANTS, action="append", help="run only these variants (repeatable)"
    )
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build(args.folder)
        return
    if args.variant:
        print(json.dumps({"result": run_variant(args.variant, args.folder, args.runs)}))
        return
    with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as scratch:
        folder = Path(scratch)
        t0 = time.perf_counter()
        _child(["--build", "--folder", str(folder)])
        results: dict[str, Any] = {}
        for variant in args.only or VARIANTS:
            lines = _child(
                ["--variant", variant, "--folder", str(folder), "--runs", str(args.runs)],
                tuned=variant != "diffusers",
            )
            results[variant] = {}
            for line in lines:
                results[variant].update(line.get("settings", {}), **line.get("result", {}))
        total = time.perf_counter() - t0
    if args.only:
        print(json.dumps({"benchmark": "local_speed", "only": args.only, **results,
                          "environment": environment()}, indent=2))  # fmt: skip
        return
    ours, plain = results["imagegate"], results["diffusers"]
    plain_tuned = results["diffusers_tuned_malloc"]
    report = {
        "benchmark": "local_speed",
        "what": f"seconds per {SIZE}x{SIZE} image, sd-turbo architecture, random weights, "
        "1 step, guidance 0; median of the timed runs after a first (warm-up) image",
        "runs": args.runs,
        "imagegate": ours,
        "diffusers_default": plain,
        "diffusers_tuned_malloc": plain_tuned,
        "speedup": round(plain["sec_per_image"] / ours["sec_per_image"], 2),
        "speedup_vs_diffusers_tuned_malloc": round(
            plain_tuned["sec_per_image"] / ours["sec_per_image"], 2
        ),
        "first_call_speedup": round(plain["first_call_s"] / ours["first_call_s"], 2),
        "batching": results["batching"],
        "environment": environment(),
        "total_s": round(total, 1),
    }
    print(json.dumps(report, indent=2))


def _child(args: list[str], *, tuned: bool = False) -> list[dict[str, Any]]:
    """Run this script with ``args`` in a fresh process; its JSON lines, parsed."""
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", MARKER)}
    env = dict(base, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    if tuned:
        env = tuned_env(env) or env
    done = subprocess.run(
        [sys.executable, __file__, *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


if __name__ == "__main__":
    main()
