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

- ``img2img_diffusers`` and ``img2img_imagegate``: image to image on a 512x512 input at
  strength 0.5 (at least 2 steps, so ``int(steps x strength)`` runs at least one): plain
  ``AutoPipelineForImage2Image.from_pretrained`` against imagegate's provider, which makes the
  image-to-image pipeline from the text-to-image one it already loaded (``from_pipe``); the
  imagegate process makes a text-to-image image first, as a server would have, and reports its
  peak memory before and after the edit.
- ``img2img_second_load``: plain diffusers doing what ``from_pipe`` avoids: a text-to-image
  pipeline and then a second ``from_pretrained`` of the image-to-image one, one image each;
  its peak memory against ``img2img_imagegate``'s is what ``from_pipe`` saves.

- ``imagegate_channels_last``, ``imagegate_compile_cold``, ``imagegate_compile_warm``: the
  provider with one opt-in speed-up each (``channels_last``; ``compile`` with an empty compile
  cache, then again in a new process with the cache the cold run left), for the first-call
  cost of a cold and a warm cache and the seconds per image once compiled.

Every imagegate variant saves its first image (seed 0) and the U-Net's output on one fixed
input; ``drift`` compares each non-default variant with the default (PSNR of the decoded image,
cosine similarity of the U-Net output). ``environment`` lists the CPU flags that matter.

Prints one JSON document. Usage: ``python benchmarks/local_speed.py [--runs 3] [--quick]``;
``--quick`` is a small check (256x256, at most 2 steps, one timed run, no compile variants).
``--gpu`` runs the GPU profile on CUDA: SD 1.5 architecture, 512x512, 20 steps, guidance
7.5, float16, plain diffusers against imagegate with ``compile`` off and on, one request at a
time and 8 at once batched (``max_batch = 8``) against one call each.
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
PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {"arch": "sd-turbo", "size": 512, "steps": 1, "guidance": 0.0, "device": "auto",
            "concurrent": 4},
    "gpu": {"arch": "sd15", "size": 512, "steps": 20, "guidance": 7.5, "device": "cuda",
            "concurrent": 8},
}  # fmt: skip
EDIT_VARIANTS = ("img2img_diffusers", "img2img_imagegate", "img2img_second_load")
EDIT_STRENGTH = 0.5
CPU_VARIANTS = (
    "diffusers",
    "imagegate",
    "diffusers_tuned_malloc",
    *EDIT_VARIANTS,
    "batching",
    "imagegate_channels_last",
    "imagegate_compile_cold",
    "imagegate_compile_warm",
)
GPU_VARIANTS = (
    "diffusers",
    "imagegate",
    *EDIT_VARIANTS,
    "imagegate_compile_cold",
    "imagegate_compile_warm",
    "batching",
    "batching_compile",
)
VARIANTS = tuple(dict.fromkeys(CPU_VARIANTS + GPU_VARIANTS))
COMPILE_VARIANTS = ("imagegate_compile_cold", "imagegate_compile_warm", "batching_compile")
SETTINGS: dict[str, dict[str, Any]] = {
    "imagegate_channels_last": {"channels_last": True},
    "imagegate_compile_cold": {"compile": True},
    "imagegate_compile_warm": {"compile": True},
    "batching_compile": {"compile": True},
}
"""The provider settings of each imagegate variant beyond its defaults."""
PROFILE_ENV = "IMAGEGATE_BENCH_PROFILE"


def profile() -> dict[str, Any]:
    """The profile this process runs (set by the parent for its children)."""
    return dict(json.loads(os.environ.get(PROFILE_ENV, "null")) or PROFILES["cpu"])


def provider_settings(variant: str, folder: Path) -> dict[str, Any]:
    """The DiffusersConfig of ``variant``: the defaults, the profile's device, its extras."""
    settings: dict[str, Any] = {
        "model": str(folder / "pipe"),
        "tiny_vae": str(folder / "taesd"),
        "device": profile()["device"],
        **SETTINGS.get(variant, {}),
    }
    if settings.get("compile"):
        settings["compile_cache"] = str(folder / "compile-cache")
    return settings


def build(folder: Path) -> None:
    """Save a random-weight pipeline of the profile's architecture (sd-turbo, or SD 1.5 for
    the GPU) to folder/pipe and a TAESD to folder/taesd."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    lib: Any = diffusers
    sd15 = profile()["arch"] == "sd15"
    torch.manual_seed(0)
    unet = lib.UNet2DConditionModel(
        block_out_channels=(320, 640, 1280, 1280),
        attention_head_dim=8 if sd15 else (5, 10, 20, 20),
        cross_attention_dim=768 if sd15 else 1024,
        use_linear_projection=not sd15,
        sample_size=64,
        layers_per_block=2,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768 if sd15 else 1024,
            num_hidden_layers=12 if sd15 else 23,
            num_attention_heads=12 if sd15 else 16,
            intermediate_size=3072 if sd15 else 4096,
            projection_dim=768 if sd15 else 512,
            hidden_act="quick_gelu" if sd15 else "gelu",
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
        timestep_spacing="leading" if sd15 else "trailing",
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


def run_batching(variant: str, folder: Path, runs: int) -> dict[str, Any]:
    """Images per second for the profile's concurrent compatible requests: batched vs one by
    one."""
    from imagegate.providers.base import Deadline
    from imagegate.providers.local import DiffusersConfig, DiffusersProvider
    from imagegate.request import ImageRequest

    prof = profile()
    concurrent = prof["concurrent"]
    config = DiffusersConfig(**provider_settings(variant, folder))
    provider = DiffusersProvider("local", config)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(provider.load())

    async def burst(seed: int) -> None:
        requests = [
            ImageRequest(prompt=f"{PROMPT}, view {i}", width=prof["size"], height=prof["size"],
                         steps=prof["steps"], guidance=prof["guidance"], seed=seed + i)
            for i in range(concurrent)
        ]  # fmt: skip
        await asyncio.gather(*(provider.generate(r, Deadline(3600), None) for r in requests))

    default = provider.max_batch(provider._loaded) if provider._loaded else None
    modes = {"batched": concurrent, "one_at_a_time": 1}
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    for max_batch in modes.values():  # warm-up of each mode (a compile per batch size)
        provider.config = config.model_copy(update={"max_batch": max_batch})
        loop.run_until_complete(burst(0))
    for round_ in range(runs):
        for mode, max_batch in modes.items():
            provider.config = config.model_copy(update={"max_batch": max_batch})
            t0 = time.perf_counter()
            loop.run_until_complete(burst(100 * (round_ + 1)))
            seconds[mode].append(time.perf_counter() - t0)
    rate = {mode: concurrent / statistics.median(times) for mode, times in seconds.items()}
    return {
        "concurrent_requests": concurrent,
        "max_batch_default": default,
        "images_per_s": {mode: round(value, 4) for mode, value in rate.items()},
        "burst_s": {mode: [round(t, 3) for t in times] for mode, times in seconds.items()},
        "batched_vs_one_at_a_time": round(rate["batched"] / rate["one_at_a_time"], 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def edit_steps() -> int:
    """The steps of an edit: the profile's, at least 2 (strength 0.5 then runs one)."""
    return edit_steps_of(profile())


def init_image() -> bytes:
    """The edits' input: a size x size PNG, a smooth gradient (the same in every process)."""
    import io

    from PIL import Image

    size = profile()["size"]
    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _peak_mib() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _timed(make: Any, runs: int) -> tuple[float, list[float]]:
    """Make a first (warm-up) image, then ``runs`` more; when the first ended, and each time."""
    make(0)
    first = time.perf_counter()
    times = []
    for seed in range(1, runs + 1):
        t0 = time.perf_counter()
        make(seed)
        times.append(time.perf_counter() - t0)
    return first, times


def run_edit(variant: str, folder: Path, runs: int) -> dict[str, Any]:
    """Image to image at strength 0.5: load, a first edit, ``runs`` timed ones; peak memory
    (for imagegate also after its text-to-image image, before the first edit)."""
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if variant == "img2img_imagegate":
        make = _imagegate_edit(folder, extra)
    elif variant == "img2img_second_load":
        make = _plain_edit(folder, second_load=True, extra=extra)
    else:
        make = _plain_edit(folder, second_load=False, extra=extra)
    loaded = time.perf_counter()
    first, times = _timed(make, runs)
    return {
        "sec_per_image": round(statistics.median(times), 3) if times else None,
        "runs_s": [round(t, 3) for t in times],
        "load_s": round(loaded - started, 3),
        "first_call_s": round(first - started, 3),
        "steps": edit_steps(),
        "steps_run": int(edit_steps() * EDIT_STRENGTH),
        "strength": EDIT_STRENGTH,
        "peak_rss_mib": _peak_mib(),
        **extra,
    }


def _plain_edit(folder: Path, *, second_load: bool, extra: dict[str, Any]) -> Any:
    import io

    import diffusers
    import torch
    from PIL import Image

    lib: Any = diffusers
    prof = profile()
    cuda = prof["device"] == "cuda"
    kwargs: dict[str, Any] = {"torch_dtype": torch.float16} if cuda else {}
    path = str(folder / "pipe")
    if second_load:  # a text-to-image pipeline first, as a server would have loaded
        first = lib.AutoPipelineForText2Image.from_pretrained(path, **kwargs)
        first = first.to("cuda") if cuda else first
        first.set_progress_bar_config(disable=True)
        seeded = torch.Generator("cpu").manual_seed(0)
        first(PROMPT, height=prof["size"], width=prof["size"], num_inference_steps=1,
              guidance_scale=prof["guidance"], generator=seeded)  # fmt: skip
        extra["peak_rss_mib_after_txt2img"] = _peak_mib()
    pipe = lib.AutoPipelineForImage2Image.from_pretrained(path, **kwargs)
    pipe = pipe.to("cuda") if cuda else pipe
    pipe.set_progress_bar_config(disable=True)
    image = Image.open(io.BytesIO(init_image())).convert("RGB")

    kept = [first] if second_load else []  # both pipelines stay loaded, as in a server

    def make(seed: int) -> None:
        assert kept or not second_load
        generator = torch.Generator("cpu").manual_seed(seed)
        pipe(PROMPT, image=image, strength=EDIT_STRENGTH, generator=generator,
             num_inference_steps=edit_steps(), guidance_scale=prof["guidance"])  # fmt: skip

    return make


def _imagegate_edit(folder: Path, extra: dict[str, Any]) -> Any:
    from imagegate.inputs import InputImage
    from imagegate.providers.base import Deadline
    from imagegate.providers.local import DiffusersConfig, DiffusersProvider
    from imagegate.request import ImageRequest

    prof = profile()
    provider = DiffusersProvider("local", DiffusersConfig(**provider_settings("imagegate", folder)))
    loop = asyncio.new_event_loop()
    loop.run_until_complete(provider.load())
    size, guidance = prof["size"], prof["guidance"]
    text = ImageRequest(prompt=PROMPT, width=size, height=size, steps=1, guidance=guidance, seed=0)
    loop.run_until_complete(provider.generate(text, Deadline(3600), None))
    extra["peak_rss_mib_after_txt2img"] = _peak_mib()
    init = InputImage.from_bytes(init_image())

    def make(seed: int) -> None:
        request = ImageRequest(
            prompt=PROMPT,
            images=(init,),
            strength=EDIT_STRENGTH,
            steps=edit_steps(),
            guidance=guidance,
            seed=seed,
        )
        loop.run_until_complete(provider.generate(request, Deadline(3600), None))

    return make


def run_variant(variant: str, folder: Path, runs: int) -> dict[str, Any]:
    """Load, make a first image, then time ``runs`` more; report seconds and peak memory."""
    if variant.startswith("batching"):
        return run_batching(variant, folder, runs)
    if variant in EDIT_VARIANTS:
        return run_edit(variant, folder, runs)
    started = time.perf_counter()
    ours = variant.startswith("imagegate")
    make = _imagegate(variant, folder) if ours else _plain(folder)
    malloc = os.environ.get("GLIBC_TUNABLES", "default")
    loaded = time.perf_counter()
    first, times = _timed(make, runs)
    import torch

    if ours:
        _save_unet_output(variant, folder)
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
    prof = profile()
    if prof["device"] == "cuda":  # diffusers' GPU recipe: float16 on the device
        pipe = lib.AutoPipelineForText2Image.from_pretrained(
            str(folder / "pipe"), torch_dtype=torch.float16
        ).to("cuda")
    else:
        pipe = lib.AutoPipelineForText2Image.from_pretrained(str(folder / "pipe"))
    pipe.set_progress_bar_config(disable=True)

    def make(seed: int) -> None:
        generator = torch.Generator("cpu").manual_seed(seed)
        pipe(PROMPT, height=prof["size"], width=prof["size"], generator=generator,
             num_inference_steps=prof["steps"], guidance_scale=prof["guidance"])  # fmt: skip

    return make


def _imagegate(variant: str, folder: Path) -> Any:
    from imagegate.providers.base import Deadline
    from imagegate.providers.local import DiffusersConfig, DiffusersProvider
    from imagegate.request import ImageRequest

    prof = profile()
    config = DiffusersConfig(**provider_settings(variant, folder))
    provider = DiffusersProvider("local", config)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(provider.load())
    info = provider.describe()
    print(json.dumps({"settings": {k: info[k] for k in ("device", "dtype", "vae")}}))
    _PROVIDERS[variant] = provider

    def make(seed: int) -> None:
        size, steps, guidance = prof["size"], prof["steps"], prof["guidance"]
        request = ImageRequest(
            prompt=PROMPT, width=size, height=size, steps=steps, guidance=guidance, seed=seed
        )
        [image] = loop.run_until_complete(provider.generate(request, Deadline(3600), None))
        if seed == 0:
            (folder / f"{variant}.png").write_bytes(image.png)

    return make


_PROVIDERS: dict[str, Any] = {}


def _save_unet_output(variant: str, folder: Path) -> None:
    """The U-Net's output on one fixed input (the pipeline's own input types), for drift."""
    import torch

    unet = _PROVIDERS[variant].pipeline.unet
    prof, cfg = profile(), unet.config
    batch = 2 if prof["guidance"] > 1 else 1  # as the pipeline calls it: same compiled graph
    side = prof["size"] // 8
    gen = torch.Generator("cpu").manual_seed(1234)
    sample = torch.randn((batch, cfg.in_channels, side, side), generator=gen)
    context = torch.randn((batch, 77, cfg.cross_attention_dim), generator=gen)
    kwargs = {"timestep_cond": None, "cross_attention_kwargs": None, "added_cond_kwargs": None}
    timestep = torch.tensor(999.0, device=unet.device)
    with torch.inference_mode():
        out = unet(
            sample.to(unet.device, unet.dtype),
            timestep,
            encoder_hidden_states=context.to(unet.device, unet.dtype),
            return_dict=False,
            **kwargs,
        )[0]
    torch.save(out.float().cpu(), folder / f"{variant}.unet.pt")


def drift(folder: Path, variants: list[str]) -> dict[str, Any]:
    """How far each non-default imagegate variant moves from the default's image and U-Net."""
    import numpy as np
    import torch
    from PIL import Image

    base_png, base_unet = folder / "imagegate.png", folder / "imagegate.unet.pt"
    if not base_png.exists():
        return {}
    base = np.asarray(Image.open(base_png).convert("RGB"), dtype=np.float64)
    reference = torch.load(base_unet).flatten()
    found: dict[str, Any] = {}
    for variant in variants:
        png, unet = folder / f"{variant}.png", folder / f"{variant}.unet.pt"
        if variant == "imagegate" or not png.exists():
            continue
        other = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
        mse = float(np.mean((base - other) ** 2))
        psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
        cosine = torch.nn.functional.cosine_similarity(reference, torch.load(unet).flatten(), dim=0)
        found[variant] = {
            "image_psnr_db": "identical" if mse == 0 else round(psnr, 2),
            "unet_cosine": round(float(cosine), 6),
        }
    return found


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
        "load_average_1_5_15m": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="timed images after the first")
    parser.add_argument(
        "--only", choices=VARIANTS, action="append", help="run only these variants (repeatable)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small check: 256x256, at most 2 steps, 1 run, no compile",
    )
    parser.add_argument(
        "--gpu", action="store_true", help="the GPU profile: SD 1.5, 20 steps, float16, CUDA"
    )
    parser.add_argument(
        "--device", help="override the profile's device (e.g. cpu to try --gpu's code path)"
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
    prof = dict(PROFILES["gpu" if args.gpu else "cpu"])
    if args.device:
        prof["device"] = args.device
    runs = 1 if args.quick else args.runs
    variants = list(args.only or (GPU_VARIANTS if args.gpu else CPU_VARIANTS))
    if args.quick:
        prof["size"] = 256
        prof["steps"] = min(prof["steps"], 2)
        variants = [v for v in variants if v not in COMPILE_VARIANTS]
    with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as scratch:
        folder = Path(scratch)
        t0 = time.perf_counter()
        _child(["--build", "--folder", str(folder)], prof)
        results: dict[str, Any] = {}
        for variant in variants:
            lines = _child(
                ["--variant", variant, "--folder", str(folder), "--runs", str(runs)],
                prof,
                tuned=variant != "diffusers",
            )
            results[variant] = {}
            for line in lines:
                results[variant].update(line.get("settings", {}), **line.get("result", {}))
        moved = drift(folder, variants)
        total = time.perf_counter() - t0
    print(json.dumps(report(args, prof, runs, results, moved, total), indent=2))


def report(
    args: argparse.Namespace,
    prof: dict[str, Any],
    runs: int,
    results: dict[str, Any],
    moved: dict[str, Any],
    total: float,
) -> dict[str, Any]:
    """The one JSON document: every variant's figures and the comparisons that matter."""
    size = prof["size"]
    out: dict[str, Any] = {
        "benchmark": "local_speed",
        "profile": "gpu" if args.gpu else "cpu",
        "quick": args.quick,
        "what": f"seconds per {size}x{size} image, {prof['arch']} architecture, random weights, "
        f"{prof['steps']} steps, guidance {prof['guidance']}; median of the timed runs after a "
        "first (warm-up) image",
        "runs": runs,
    }
    ours, plain = results.get("imagegate"), results.get("diffusers")
    if ours:
        out["imagegate"] = ours
        out["new_default"] = (
            "the same as today's path (imagegate): compile and channels_last stay opt-in, "
            "see compile_first_call_s and sec_per_image"
        )
    if plain:
        out["diffusers_default"] = plain
    if ours and plain:
        out["speedup"] = round(plain["sec_per_image"] / ours["sec_per_image"], 2)
        out["first_call_speedup"] = round(plain["first_call_s"] / ours["first_call_s"], 2)
    tuned = results.get("diffusers_tuned_malloc")
    if ours and tuned:
        out["diffusers_tuned_malloc"] = tuned
        out["speedup_vs_diffusers_tuned_malloc"] = round(
            tuned["sec_per_image"] / ours["sec_per_image"], 2
        )
    edits = {v: results[v] for v in EDIT_VARIANTS if v in results}
    if edits:
        out["img2img"] = _edit_report(prof, edits)
    out["sec_per_image"] = {
        v: r["sec_per_image"] for v, r in results.items() if "sec_per_image" in r
    }
    out["peak_rss_mib"] = {v: r["peak_rss_mib"] for v, r in results.items() if "peak_rss_mib" in r}
    cold, warm = results.get("imagegate_compile_cold"), results.get("imagegate_compile_warm")
    if cold and warm:
        out["compile_first_call_s"] = {
            "cold_cache": cold["first_call_s"],
            "warm_cache": warm["first_call_s"],
            "eager_default": ours["first_call_s"] if ours else None,
        }
    for variant in ("imagegate_channels_last", "imagegate_compile_cold", "imagegate_compile_warm"):
        if variant in results:
            out[variant] = results[variant]
    for variant in ("batching", "batching_compile"):
        if variant in results:
            out[variant] = results[variant]
    out["drift_vs_default"] = moved
    out["environment"] = environment()  # a load average above the CPU count: shared, noisy
    out["total_s"] = round(total, 1)
    return out


def _edit_report(prof: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    """The edits' figures: imagegate against plain diffusers, and what from_pipe saves."""
    size = prof["size"]
    out: dict[str, Any] = {
        "what": f"image to image on a {size}x{size} input at strength {EDIT_STRENGTH}, "
        f"{edit_steps_of(prof)} steps ({int(edit_steps_of(prof) * EDIT_STRENGTH)} run); "
        "median seconds per image after a first one",
        **edits,
    }
    ours, plain = edits.get("img2img_imagegate"), edits.get("img2img_diffusers")
    if ours and plain and ours["sec_per_image"] and plain["sec_per_image"]:
        out["speedup_vs_diffusers_from_pretrained"] = round(
            plain["sec_per_image"] / ours["sec_per_image"], 2
        )
    twice = edits.get("img2img_second_load")
    if ours and twice:
        out["peak_rss_mib"] = {
            "imagegate_txt2img_then_img2img_from_pipe": ours["peak_rss_mib"],
            "imagegate_txt2img_only": ours.get("peak_rss_mib_after_txt2img"),
            "diffusers_txt2img_then_img2img_second_from_pretrained": twice["peak_rss_mib"],
            "diffusers_txt2img_only": twice.get("peak_rss_mib_after_txt2img"),
        }
    return out


def edit_steps_of(prof: dict[str, Any]) -> int:
    """The steps of an edit in ``prof``: its steps, at least 2."""
    return max(2, int(prof["steps"]))


def _child(args: list[str], prof: dict[str, Any], *, tuned: bool = False) -> list[dict[str, Any]]:
    """Run this script with ``args`` in a fresh process; its JSON lines, parsed."""
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", MARKER)}
    env = dict(base, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    env[PROFILE_ENV] = json.dumps(prof)
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
