"""The embedded local provider (``type = "diffusers"``): a diffusers pipeline kept warm.

One pipeline per provider, loaded once (lazily on first use, or through :meth:`load`) with
``AutoPipelineForText2Image.from_pretrained`` from a hub id or a folder, and run on one
dedicated worker thread so generations never block the event loop and never overlap.

The worker reports each step through ``callback_on_step_end``; the same callback stops the
run within one step when the awaiting task is cancelled or the deadline passes. On CPU the
defaults aim at speed: bfloat16 only where the CPU has native bf16 (AMX or AVX512-BF16), the
tiny VAE (TAESD), inference mode and threads capped to the CPUs this process may use
(``benchmarks/local_speed.py`` measures the gain against plain diffusers). The model's own
safety checker stays on; a flagged image is an error.

torch and diffusers are imported inside functions only, so ``import imagegate`` stays light.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from imagegate import hubcache
from imagegate.deadline import finishing_early
from imagegate.errors import (
    AuthError,
    ConfigError,
    ContentFiltered,
    ImagegateError,
    InvalidRequest,
    MissingDependency,
    ProviderError,
    Timeout,
    Unavailable,
    UpstreamError,
)
from imagegate.hubcache import DEFAULT_MODEL, DEFAULT_TINY_VAE
from imagegate.providers.base import (
    Deadline,
    Progress,
    ProgressCallback,
    Provider,
    ProviderConfig,
)
from imagegate.providers.local_accel import accelerate, compile_cache_dir
from imagegate.providers.local_batch import Batcher, default_max_batch
from imagegate.providers.local_config import KARRAS as _KARRAS
from imagegate.providers.local_config import (
    MODEL_DEFAULTS,
    OTHER_MODEL_DEFAULTS,
    SAMPLERS,
    SCHEDULERS,
    TINY_VAE_XL,
    DiffusersConfig,
    ModelDefaults,
    cpu_flags,
    resolve_device_dtype,
)
from imagegate.providers.local_config import NEEDS_SCIPY as _NEEDS_SCIPY
from imagegate.providers.local_edit import EDIT_TASKS, edit_sync
from imagegate.request import GeneratedImage, ImageRequest, seed_series

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_DEFAULTS",
    "SAMPLERS",
    "SCHEDULERS",
    "DiffusersConfig",
    "DiffusersProvider",
    "ModelDefaults",
    "cpu_flags",
    "resolve_device_dtype",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


def _import_torch() -> tuple[Any, Any]:
    # transformers warns at import about optional image backends a text-to-image pipeline
    # never uses; imagegate reports progress itself, so the libraries' own bars stay off.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        import diffusers
        import torch
        import transformers
    except ImportError:
        raise MissingDependency("local", "torch") from None
    for lib in (diffusers, transformers):
        quiet: Any = lib.utils.logging
        quiet.disable_progress_bar()
    return torch, diffusers


class _Stopped(Exception):
    """Raised inside the pipeline's step callback to end a run early."""

    def __init__(self, reason: Literal["cancelled", "deadline"]) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Run:
    """One generation as the worker thread sees it: stop flag, deadline, progress sink."""

    deadline: Deadline
    report: Callable[[Progress], None] | None
    stop: threading.Event = field(default_factory=threading.Event)
    finish: threading.Event | None = None
    """Set when the job is asked to finish early: the remaining steps are skipped and the
    latents so far are decoded (diffusers' ``_interrupt``), a partial image."""
    steps_done: int = 0

    def on_step_end(self, pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
        self.steps_done = step + 1
        if self.report is not None:
            self.report(Progress(step + 1, int(getattr(pipe, "num_timesteps", 0) or 0)))
        reason: Literal["cancelled", "deadline"] | None = None
        if self.stop.is_set():
            reason = "cancelled"
        elif self.deadline.expired:
            reason = "deadline"
        if reason is not None:
            pipe._interrupt = True
            raise _Stopped(reason)
        if self.finish is not None and self.finish.is_set():
            pipe._interrupt = True
        return {}


@dataclass
class _Loaded:
    pipe: Any
    device: str
    dtype: str
    vae: Literal["full", "tiny"]
    base_scheduler: Any
    defaults: ModelDefaults
    schedulers: dict[str, Any] = field(default_factory=dict)
    edits: dict[str, Any] = field(default_factory=dict)
    """The image-to-image and inpainting pipelines, made from ``pipe`` on first use."""


class DiffusersProvider(Provider):
    """Text to image with a local diffusers pipeline, loaded once and kept warm."""

    type = "diffusers"
    Config = DiffusersConfig
    capabilities = frozenset({"txt2img", "img2img", "inpaint"})
    config: DiffusersConfig

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self._pool: ThreadPoolExecutor | None = None
        self._guard = threading.Lock()
        self._loading: Future[_Loaded] | None = None
        self._loaded: _Loaded | None = None
        self._batcher = Batcher(self)

    # -- public surface ------------------------------------------------------------------

    @property
    def pipeline(self) -> Any:
        """The loaded diffusers pipeline, or None before the first load."""
        return self._loaded.pipe if self._loaded else None

    async def load(self) -> None:
        """Load the pipeline now (it is otherwise loaded on the first generate)."""
        await self._await_loaded(None)

    async def generate(
        self, request: ImageRequest, deadline: Deadline, progress: ProgressCallback | None
    ) -> list[GeneratedImage]:
        """Make ``request.n`` images; one step at a time, cancellable within a step."""
        started = time.monotonic()
        self._check_request(request)
        loaded = await self._await_loaded(deadline, started)
        run = _Run(
            deadline, _threadsafe(progress, asyncio.get_running_loop()), finish=finishing_early()
        )
        seed = request.seeds()[0]
        if request.task == "txt2img":  # edits are not batched
            return await self._batcher.generate(
                self._executor(), loaded, request, seed, run, started
            )
        return await self._in_worker(
            lambda: self._generate_sync(loaded, request, seed, run), run, deadline, started
        )

    def max_batch(self, loaded: _Loaded) -> int:
        """Most images in one call: ``max_batch``, else the device's default."""
        return self.config.max_batch or default_max_batch(loaded.device)

    def batch_shape(self, loaded: _Loaded, request: ImageRequest) -> tuple[Any, ...]:
        """What requests must share to ride in one call: size, steps, guidance, sampler."""
        return (*self.call_size(loaded, request), request.sampler, request.scheduler)

    def call_size(
        self, loaded: _Loaded, request: ImageRequest
    ) -> tuple[int | None, int | None, int, float]:
        """The width, height, steps and guidance a call for ``request`` runs with."""
        cfg, defaults = self.config, loaded.defaults
        steps, guidance = self._steps_guidance(request, defaults)
        width = request.width or cfg.width or defaults.width
        height = request.height or cfg.height or defaults.height
        return width, height, steps, guidance

    async def probe(self, deadline: Deadline) -> str | None:
        """Check that torch is installed and the model is loadable, without loading it."""
        if self._loaded is not None:
            return f"{self.config.model} loaded on {self._loaded.device} ({self._loaded.dtype})"
        import importlib.util

        if (
            importlib.util.find_spec("torch") is None
            or importlib.util.find_spec("diffusers") is None
        ):
            raise MissingDependency("local", "torch")
        try:
            source, _ = await asyncio.wait_for(
                asyncio.to_thread(self._source), timeout=deadline.remaining()
            )
        except TimeoutError:
            raise self._timeout("while checking the model", None) from None
        return f"{self.config.model} found at {source}"

    async def aclose(self) -> None:
        """Drop the pipeline and stop the worker thread."""
        with self._guard:
            pool, self._pool = self._pool, None
            self._loaded = None
            self._loading = None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        """Name, type and model, plus device, dtype and VAE (resolved once loaded)."""
        info = super().describe()
        loaded = self._loaded
        info.update(
            device=loaded.device if loaded else self.config.device,
            dtype=loaded.dtype if loaded else self.config.dtype,
            vae=loaded.vae if loaded else self.config.vae,
            loaded=loaded is not None,
        )
        return info

    # -- the event-loop side -------------------------------------------------------------

    def _check_request(self, request: ImageRequest) -> None:
        if request.model is not None and request.model != self.config.model:
            raise InvalidRequest(
                f"model: this provider serves {self.config.model!r} only; got "
                f"{request.model!r}. Leave model out, or route to a provider that has it.",
                field="model",
                limit=f"must be {self.config.model!r}",
                provider=self.name,
            )
        if request.sampler is not None and request.sampler not in SAMPLERS:
            allowed = ", ".join(SAMPLERS)
            raise InvalidRequest(
                f"sampler: unknown sampler {request.sampler!r}; use one of: {allowed}",
                field="sampler",
                limit=f"one of: {allowed}",
                provider=self.name,
            )
        if request.scheduler is not None and (
            request.scheduler not in SCHEDULERS
            or (request.scheduler == "karras" and (request.sampler or "") not in _KARRAS)
        ):
            karras = ", ".join(sorted(_KARRAS))
            raise InvalidRequest(
                f"scheduler: {request.scheduler!r} does not run here; use automatic, or karras "
                f"with one of: {karras}",
                field="scheduler",
                limit="automatic, or karras with a sampler that has it",
                provider=self.name,
            )

    def _executor(self) -> ThreadPoolExecutor:
        with self._guard:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"imagegate-{self.name}")
            return self._pool

    async def _await_loaded(
        self, deadline: Deadline | None, started: float | None = None
    ) -> _Loaded:
        if self._loaded is not None:
            return self._loaded
        pool = self._executor()
        with self._guard:
            if self._loading is None or _failed(self._loading):
                self._loading = pool.submit(self._load_sync)
            loading = self._loading
        waiter = asyncio.wrap_future(loading)
        waiter.add_done_callback(_consume)  # also when the caller stops waiting
        if deadline is None:
            return await asyncio.shield(waiter)
        done, _ = await asyncio.wait({waiter}, timeout=deadline.remaining())
        if not done:
            raise self._timeout("while the model was loading (it goes on loading)", started)
        return waiter.result()

    async def _in_worker(
        self, work: Callable[[], T], run: _Run, deadline: Deadline, started: float
    ) -> T:
        job = self._executor().submit(self._guarded, work, started)
        waiter = asyncio.wrap_future(job)
        waiter.add_done_callback(_consume)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=deadline.remaining())
        except asyncio.CancelledError:
            run.stop.set()
            job.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(waiter)  # the worker stops within one step
            raise
        if not done:
            run.stop.set()
            job.cancel()
            raise self._timeout("during generation", started)
        return waiter.result()

    def _timeout(self, when: str, started: float | None) -> Timeout:
        return Timeout(
            f"the request deadline passed {when}; raise gateway.deadline_s or the provider's "
            "timeout_s, or ask for fewer steps or a smaller image",
            provider=self.name,
            stage="total",
            elapsed_s=None if started is None else time.monotonic() - started,
        )

    def _guarded(self, work: Callable[[], T], started: float) -> T:
        """Run ``work`` on the worker thread, mapping every library error into the tree."""
        try:
            return work()
        except _Stopped as stop:
            if stop.reason == "deadline":
                raise self._timeout("during generation", started) from None
            raise
        except ImagegateError:
            raise
        except Exception as exc:
            raise _map_error(exc, self.name, self.config.model, started, "generate") from exc

    # -- the worker thread ---------------------------------------------------------------

    def preflight(self) -> None:
        """The model is a folder here, in the hub cache, or downloadable now; no torch."""
        self._source()

    def _source(self) -> tuple[str, bool]:
        """Where to load the model from, and whether from local files only; fails fast."""
        return _resolve(self.config.model, self.name, "model")

    def _load_sync(self) -> _Loaded:
        started = time.monotonic()
        try:
            return self._load_inner()
        except ImagegateError:
            raise
        except Exception as exc:
            raise _map_error(exc, self.name, self.config.model, started, "load") from exc

    def _load_inner(self) -> _Loaded:
        source, local_only = self._source()  # first: a model not here fails before torch loads
        torch, diffusers = _import_torch()
        has_mps = (
            getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
        )
        device, dtype = resolve_device_dtype(
            self.config.device,
            self.config.dtype,
            cuda=torch.cuda.is_available(),
            mps=has_mps,
            flags=cpu_flags(),
        )
        if device == "cpu":
            torch.set_num_threads(self.config.threads or _cpu_threads(torch))
        torch_dtype = getattr(torch, dtype)
        pipe = diffusers.AutoPipelineForText2Image.from_pretrained(
            source, local_files_only=local_only, **_dtype_kwarg(torch_dtype)
        )
        vae = self._swap_vae(pipe, diffusers, device, torch_dtype)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        cfg = self.config
        extra = accelerate(
            pipe, provider=self.name, compile_unet=cfg.compile, channels_last=cfg.channels_last,
            cache_dir=compile_cache_dir(cfg.compile_cache),
        )  # fmt: skip
        self._loaded = _Loaded(
            pipe=pipe,
            device=device,
            dtype=dtype,
            vae=vae,
            base_scheduler=pipe.scheduler,
            defaults=MODEL_DEFAULTS.get(self.config.model, OTHER_MODEL_DEFAULTS),
        )
        log.info(
            "%s: loaded %s on %s as %s, %s VAE %s", self.name, source, device, dtype, vae, extra
        )
        return self._loaded

    def _swap_vae(
        self, pipe: Any, diffusers: Any, device: str, torch_dtype: Any
    ) -> Literal["full", "tiny"]:
        choice = self.config.vae
        if choice == "full" or (choice == "auto" and device != "cpu"):
            return "full"
        repo = self._tiny_vae_for(pipe)
        if repo is None:
            if choice == "tiny":
                raise ConfigError(
                    f"no tiny VAE is known for {type(pipe).__name__}; set tiny_vae to one that "
                    "matches the model, or vae = 'full'",
                    key=f"providers.{self.name}.tiny_vae",
                )
            return "full"
        try:
            source, local_only = _resolve(repo, self.name, "tiny_vae")
            pipe.vae = diffusers.AutoencoderTiny.from_pretrained(
                source, local_files_only=local_only, **_dtype_kwarg(torch_dtype)
            )
        except (Unavailable, OSError) as exc:
            if choice == "tiny":
                if isinstance(exc, Unavailable):
                    raise
                raise _map_error(exc, self.name, repo, time.monotonic(), "load") from exc
            log.warning(
                "%s: the tiny VAE %s could not be loaded (%s); using the model's full VAE, "
                "which is slower on CPU. Run `imagegate models pull %s` to fix.",
                self.name,
                repo,
                exc,
                repo,
            )
            return "full"
        return "tiny"

    def _tiny_vae_for(self, pipe: Any) -> str | None:
        if self.config.tiny_vae != DEFAULT_TINY_VAE:
            return self.config.tiny_vae
        vae = getattr(pipe, "vae", None)
        if vae is None or getattr(vae.config, "latent_channels", None) != 4:
            return None  # SD3, Flux and others need their own TAESD variants
        return TINY_VAE_XL if "XL" in type(pipe).__name__ else DEFAULT_TINY_VAE

    def _generate_sync(
        self, loaded: _Loaded, request: ImageRequest, seed: int, run: _Run
    ) -> list[GeneratedImage]:
        if run.stop.is_set():
            raise _Stopped("cancelled")
        if run.deadline.expired:  # it waited behind another generation
            raise _Stopped("deadline")
        if request.task in EDIT_TASKS:
            return edit_sync(self, loaded, request, seed, run)
        pipe = loaded.pipe
        width, height, steps, guidance = self.call_size(loaded, request)
        pipe.scheduler = self._scheduler(loaded, request.sampler, request.scheduler)
        made, seeds = self.call_pipeline(
            pipe,
            request,
            seed,
            run,
            width=width,
            height=height,
            num_inference_steps=steps,
            guidance_scale=guidance,
        )
        return [_to_image(img, s) for img, s in zip(made, seeds, strict=True)]

    def call_pipeline(
        self, pipe: Any, request: ImageRequest, seed: int, run: _Run, **call: Any
    ) -> tuple[list[Any], list[int]]:
        """One pipeline call for ``request``: a seeded generator per image, each step
        reported to ``run``; the images and their seeds, or ContentFiltered when the model's
        safety checker flagged any."""
        torch, _ = _import_torch()
        seeds = seed_series(seed, request.n)
        with torch.inference_mode():
            out = pipe(
                prompt=request.prompt,
                negative_prompt=request.negative_prompt or None,
                num_images_per_prompt=request.n,
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                callback_on_step_end=run.on_step_end,
                **call,
            )
        refusal = safety_refusal(getattr(out, "nsfw_content_detected", None), self.name)
        if refusal is not None:
            raise refusal
        return list(out.images), seeds

    def effective_params(self, request: ImageRequest) -> dict[str, Any]:
        """The steps, guidance and sampler that ran (or will run) for ``request``."""
        defaults = (
            self._loaded.defaults
            if self._loaded is not None
            else MODEL_DEFAULTS.get(self.config.model, OTHER_MODEL_DEFAULTS)
        )
        steps, guidance = self._steps_guidance(request, defaults)
        sampler = request.sampler
        if sampler is None and self._loaded is not None:
            sampler = _sampler_name(self._loaded.base_scheduler)
        return {
            "steps": steps,
            "guidance": guidance,
            "sampler": sampler,
            "scheduler": request.scheduler,
        }

    def samplers(self) -> tuple[str, ...] | None:
        """The A1111 samplers that have a diffusers scheduler class."""
        return tuple(SAMPLERS)

    def schedulers(self) -> tuple[str, ...] | None:
        """Automatic (the class's own sigmas) and Karras."""
        return tuple(SCHEDULERS)

    def _steps_guidance(self, request: ImageRequest, defaults: ModelDefaults) -> tuple[int, float]:
        cfg = self.config
        steps = request.steps or cfg.steps or defaults.steps
        return steps, _first(request.guidance, cfg.guidance, defaults.guidance)

    def _scheduler(self, loaded: _Loaded, sampler: str | None, scheduler: str | None) -> Any:
        if sampler is None:
            return loaded.base_scheduler
        key = f"{sampler} {scheduler or 'automatic'}"
        if key not in loaded.schedulers:
            import diffusers

            if sampler in _NEEDS_SCIPY:
                import importlib.util

                if importlib.util.find_spec("scipy") is None:
                    raise MissingDependency("local", "scipy")
            cls_name, extra = SAMPLERS[sampler]
            cls = getattr(diffusers, cls_name)
            extra = {**extra, **SCHEDULERS.get(scheduler or "automatic", {})}
            loaded.schedulers[key] = cls.from_config(loaded.base_scheduler.config, **extra)
        return loaded.schedulers[key]


def _sampler_name(scheduler: Any) -> str | None:
    """The A1111 name of a scheduler as diffusers configured it, when one matches plainly."""
    cls_name = type(scheduler).__name__
    for name, (candidate, extra) in SAMPLERS.items():
        if candidate == cls_name and not extra:
            return name
    return None


def _resolve(model: str, provider: str, key: str) -> tuple[str, bool]:
    """A folder (checked to exist) or a hub id (cached, or downloadable right now)."""
    if not hubcache.is_hub_id(model):
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise ConfigError(
                f"the folder {model!r} does not exist; set it to a diffusers model folder or a "
                f"hub id such as {DEFAULT_MODEL!r}",
                key=f"providers.{provider}.{key}",
            )
        return str(folder), True
    snapshot = hubcache.cached_snapshot(model)
    if snapshot is not None:
        return str(snapshot), True  # the cached folder itself: no hub call at all
    reason = hubcache.hub_unreachable()
    if reason is not None:
        raise hubcache.not_cached_error(model, reason, provider=provider)
    return model, False


def _map_error(
    exc: BaseException,
    provider: str,
    model: str,
    started: float,
    during: Literal["load", "generate"],
) -> ProviderError | ImagegateError:
    """The one place where diffusers, torch and hub errors become imagegate errors."""
    elapsed = time.monotonic() - started
    text = f"{type(exc).__name__}: {exc}"
    name = type(exc).__name__
    if name == "GatedRepoError":
        return AuthError(
            f"{model} is gated ({exc}); accept its licence on huggingface.co and set HF_TOKEN",
            provider=provider,
            elapsed_s=elapsed,
        )
    if name == "RepositoryNotFoundError":
        return ConfigError(
            f"{model} is not a model on the hub; check the id", key=f"providers.{provider}.model"
        )
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return Unavailable(
            f"out of memory running {model} ({text}); ask for a smaller image or fewer images, "
            "or set dtype to a 16-bit type and vae = 'tiny'",
            provider=provider,
            stage="runtime",
            elapsed_s=elapsed,
        )
    if isinstance(exc, OSError):
        return Unavailable(
            f"could not load {model} from the hub cache ({hubcache.hub_cache_dir()}): {text}; run "
            f"`imagegate models pull {model}` on a machine with internet access, or set model "
            "to a local folder",
            provider=provider,
            stage="runtime",
            elapsed_s=elapsed,
        )
    if isinstance(exc, ValueError) and during == "generate":  # diffusers' check_inputs
        return InvalidRequest(
            f"the pipeline refused the request ({text}); change the named value and try again",
            provider=provider,
            elapsed_s=elapsed,
        )
    return UpstreamError(
        f"the local pipeline failed ({text}); see the log, and report it if it repeats",
        provider=provider,
        stage="runtime",
        elapsed_s=elapsed,
    )


def _threadsafe(
    progress: ProgressCallback | None, loop: asyncio.AbstractEventLoop
) -> Callable[[Progress], None] | None:
    """Wrap ``progress`` so the worker thread can call it: it runs on ``loop``."""
    if progress is None:
        return None

    def report(step: Progress) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed
            loop.call_soon_threadsafe(progress, step)

    return report


def _to_image(image: Any, seed: int) -> GeneratedImage:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return GeneratedImage(png=buf.getvalue(), width=image.width, height=image.height, seed=seed)


def _dtype_kwarg(torch_dtype: Any) -> dict[str, Any]:
    """``dtype=`` where diffusers takes it (it deprecated ``torch_dtype``), else the old name."""
    import importlib

    renamed = hasattr(
        importlib.import_module("diffusers.utils.deprecation_utils"), "_resolve_dtype"
    )
    return {"dtype" if renamed else "torch_dtype": torch_dtype}


def _cpu_threads(torch: Any) -> int:
    """torch's default (physical cores), capped to the CPUs this process may run on."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        allowed = os.cpu_count() or 1
    return max(1, min(int(torch.get_num_threads()), allowed))


def _first(*values: float | None) -> float:
    return next(v for v in values if v is not None)


def _failed(fut: Future[Any]) -> bool:
    """Whether a finished load failed or was cancelled (then the next call loads again)."""
    return fut.done() and (fut.cancelled() or fut.exception() is not None)


def _consume(fut: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned future's outcome so asyncio does not log it as lost."""
    if not fut.cancelled():
        fut.exception()


def safety_refusal(flags: Sequence[bool] | None, provider: str) -> ContentFiltered | None:
    """ContentFiltered when the model's own safety checker flagged any of the images of a
    request (it blacks them out; it stays on); None when it flagged none."""
    flagged = sum(map(bool, flags or ()))
    if not flagged:
        return None
    return ContentFiltered(
        f"the model's own safety checker flagged {flagged} of {len(flags or ())} images and "
        "blacked them out; it stays on for this provider. Change the prompt, the input "
        "image or the seed and try again.",
        provider=provider,
    )
