"""Optional speed-ups of the embedded pipeline's U-Net: ``torch.compile`` and ``channels_last``.

Both are switched in ``[providers.NAME]`` (``compile``, ``channels_last``) and off by default:
on the project's CPUs a cold inductor compile of the sd-turbo U-Net takes minutes, which a
one-image ``imagegate generate`` would pay in full (``docs/performance.md`` has the figures).

With ``compile`` on, the U-Net is compiled in place (``nn.Module.compile``, inductor) and
inductor's caches (FX graph, AOT autograd, and on GPUs Triton's) live in one persistent folder,
``compile_cache`` (default: ``torch-compile`` in the data dir), so only the first process to
run a given shape pays the compile; the next starts from the cache. Compilation happens on the
first call; if it fails, a warning names the cause and the U-Net runs eagerly from then on (the
call that failed is rerun eagerly, so the request still gets its image).

torch is imported inside functions only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import Field

from imagegate.providers.base import ProviderConfig

__all__ = ["CACHE_ENV", "AccelConfig", "accelerate", "compile_cache_dir", "compile_failure"]

log = logging.getLogger(__name__)

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
"""Where inductor keeps its caches; set for the process when ``compile`` is on."""


class AccelConfig(ProviderConfig):
    """The speed-up switches of the diffusers provider (its config class inherits them)."""

    compile: bool = Field(
        default=False,
        description="Compile the U-Net with torch.compile (inductor); default false: the first "
        "call of each shape pays the compile (minutes on a small CPU) unless the compile "
        "cache has it. A compile failure warns and runs eagerly.",
    )
    compile_cache: str | None = Field(
        default=None,
        min_length=1,
        description="Folder of the persistent compile cache, reused across processes; none = "
        "`torch-compile` in the data dir (IMAGEGATE_DATA_DIR, else the platform's).",
    )
    channels_last: bool = Field(
        default=False,
        description="Run the U-Net in the channels_last memory format; default false (slower "
        "in bf16 on CPUs measured so far).",
    )


def compile_cache_dir(configured: str | None) -> Path:
    """The compile cache folder: the configured one, else ``torch-compile`` in the data dir."""
    if configured:
        return Path(configured).expanduser()
    data = os.environ.get("IMAGEGATE_DATA_DIR")
    base = Path(data).expanduser() if data else Path(platformdirs.user_data_dir("imagegate"))
    return base / "torch-compile"


def accelerate(
    pipe: Any,
    *,
    provider: str,
    compile_unet: bool,
    channels_last: bool,
    cache_dir: Path,
) -> list[str]:
    """Apply the chosen speed-ups to ``pipe``'s U-Net; the names of those applied."""
    import torch

    applied: list[str] = []
    unet = getattr(pipe, "unet", None)
    if unet is None:
        return applied
    if channels_last:
        unet.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if compile_unet:
        cache_dir.mkdir(parents=True, exist_ok=True)
        os.environ[CACHE_ENV] = str(cache_dir)
        os.environ.setdefault("TRITON_CACHE_DIR", str(cache_dir / "triton"))  # GPU kernels
        import torch._inductor.config as inductor

        inductor.fx_graph_cache = True
        unet.compile()
        _fall_back_on_failure(unet, provider)
        applied.append("compile")
    return applied


def compile_failure(exc: BaseException) -> BaseException | None:
    """The root cause when ``exc`` is a compilation failure (dynamo or inductor), else None."""
    import torch._dynamo.exc as dynamo_exc

    names = {"BackendCompilerFailed", "InductorError", "CompilationError"}
    if not isinstance(exc, dynamo_exc.TorchDynamoException) and type(exc).__name__ not in names:
        return None
    root: BaseException = exc
    inner = getattr(exc, "inner_exception", None)
    if isinstance(inner, BaseException):
        root = inner
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    return root


def _fall_back_on_failure(module: Any, provider: str) -> None:
    """Wrap the module's compiled call: a compilation failure turns it eager, with a warning."""
    compiled = module._compiled_call_impl

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return compiled(*args, **kwargs)
        except Exception as exc:
            cause = compile_failure(exc)
            if cause is None:
                raise
            log.warning(
                "%s: torch.compile failed (%s: %s); the U-Net runs eagerly from now on. "
                "Set compile = false to skip the attempt.",
                provider,
                type(cause).__name__,
                cause,
            )
            module._compiled_call_impl = None
            return module._call_impl(*args, **kwargs)

    module._compiled_call_impl = call
