"""Settings and model facts of the embedded diffusers provider (split from ``local.py``).

``DiffusersConfig`` (its keys), what each known model is meant to be run with, the A1111
sampler and scheduler names mapped to diffusers classes, and the choice of device and dtype
from the hardware. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from imagegate.hubcache import DEFAULT_MODEL, DEFAULT_TINY_VAE
from imagegate.providers.local_accel import AccelConfig

__all__ = [
    "BF16_CPU_FLAGS",
    "KARRAS",
    "MODEL_DEFAULTS",
    "NEEDS_SCIPY",
    "OTHER_MODEL_DEFAULTS",
    "SAMPLERS",
    "SCHEDULERS",
    "TINY_VAE_XL",
    "DType",
    "Device",
    "DiffusersConfig",
    "ModelDefaults",
    "VaeChoice",
    "cpu_flags",
    "resolve_device_dtype",
]

Device = Literal["auto", "cpu", "cuda", "mps"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
VaeChoice = Literal["auto", "full", "tiny"]

TINY_VAE_XL = "madebyollin/taesdxl"
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@dataclass(frozen=True)
class ModelDefaults:
    """What a model is meant to be run with when neither request nor config says."""

    width: int | None
    height: int | None
    steps: int
    guidance: float


MODEL_DEFAULTS: dict[str, ModelDefaults] = {
    "stabilityai/sd-turbo": ModelDefaults(512, 512, 1, 0.0),
    "stabilityai/sdxl-turbo": ModelDefaults(512, 512, 1, 0.0),
    "IDKiro/sdxs-512-0.9": ModelDefaults(512, 512, 1, 0.0),
    "nota-ai/bk-sdm-tiny": ModelDefaults(512, 512, 25, 7.5),
    "segmind/tiny-sd": ModelDefaults(512, 512, 25, 7.5),
}
"""Models whose cards give a recipe. Any other model gets ``OTHER_MODEL_DEFAULTS``."""

OTHER_MODEL_DEFAULTS = ModelDefaults(None, None, 25, 7.5)
"""A model without a known recipe: the pipeline's own size (U-Net sample size times the VAE
factor, what diffusers itself uses), 25 steps (half diffusers' 50, ample for the usual
schedulers and twice as quick on CPU) and diffusers' default guidance of 7.5."""

# AUTOMATIC1111 sampler name -> (diffusers scheduler class, extra config for from_config).
SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}
SCHEDULERS: dict[str, dict[str, Any]] = {
    "automatic": {},
    "karras": {"use_karras_sigmas": True},
}
"""A1111 scheduler name -> the diffusers config that gives it; Karras on the samplers whose
diffusers class has Karras sigmas."""
KARRAS = frozenset(
    {"Euler", "Heun", "LMS", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "UniPC"}
)
NEEDS_SCIPY = frozenset({"LMS"})


class DiffusersConfig(AccelConfig):
    """Settings of the embedded diffusers provider; width..guidance None = the model's own."""

    type: Literal["diffusers"] = Field(
        default="diffusers", description="The embedded diffusers pipeline, in this process."
    )
    model: str = Field(
        default=DEFAULT_MODEL,
        min_length=1,
        description="A diffusers text-to-image model: a Hub id or a local folder.",
    )
    device: Device = Field(
        default="auto", description="auto = CUDA, else MPS, else CPU; or cpu, cuda, mps."
    )
    dtype: DType = Field(
        default="auto",
        description="auto = float16 on GPUs, bfloat16 on CPUs with AMX or AVX512-BF16, else "
        "float32.",
    )
    vae: VaeChoice = Field(
        default="auto", description="auto = the tiny VAE (TAESD) on CPU, the full one on GPUs."
    )
    tiny_vae: str = Field(
        default=DEFAULT_TINY_VAE,
        min_length=1,
        description="The tiny VAE used when `vae` picks it (a Hub id or folder).",
    )
    width: int | None = Field(
        default=None,
        ge=64,
        le=2048,
        multiple_of=8,
        description="Width when the request has none (64-2048, a multiple of 8); none = the "
        "model's own.",
    )
    height: int | None = Field(
        default=None,
        ge=64,
        le=2048,
        multiple_of=8,
        description="Height when the request has none (64-2048, a multiple of 8); none = the "
        "model's own.",
    )
    steps: int | None = Field(
        default=None,
        ge=1,
        le=150,
        description="Steps when the request has none (1-150); none = the model's recipe.",
    )
    guidance: float | None = Field(
        default=None,
        ge=0.0,
        le=30.0,
        description="Guidance when the request has none (0-30); none = the model's recipe.",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="CPU threads torch uses (1-1024); none = the CPUs this process may use.",
    )
    concurrency: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Requests this pipeline takes at once per process (1-1024); one pipeline "
        "call runs at a time, and requests of the same shape waiting meanwhile are merged into "
        "it (max_batch).",
    )
    max_batch: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Most images in one batched pipeline call (1-64; 1 = no batching); none "
        "= 8 on a GPU, 1 on a CPU (where batching measured slower).",
    )
    batch_wait_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=1000.0,
        description="Milliseconds the first request of a call waits for others of its shape "
        "(0-1000); 0 = only requests already waiting are merged.",
    )


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def resolve_device_dtype(
    device: Device,
    dtype: DType,
    *,
    cuda: bool,
    mps: bool,
    flags: Iterable[str],
) -> tuple[Literal["cpu", "cuda", "mps"], Literal["float32", "bfloat16", "float16"]]:
    """Pick the device and dtype for ``auto`` settings; explicit settings are kept as given.

    auto device: CUDA, else MPS, else CPU. auto dtype: float16 on CUDA and MPS; on CPU
    bfloat16 only with native bf16 arithmetic (``amx_bf16`` or ``avx512_bf16``), where it is
    faster than float32, and float32 elsewhere, where emulated bf16 is slower.
    """
    auto: Literal["cpu", "cuda", "mps"] = "cuda" if cuda else "mps" if mps else "cpu"
    chosen = auto if device == "auto" else device
    if dtype != "auto":
        return chosen, dtype
    if chosen in ("cuda", "mps"):
        return chosen, "float16"
    return chosen, "bfloat16" if BF16_CPU_FLAGS & set(flags) else "float32"
