"""Novita AI (``type = "novita"``): the v3 asynchronous text-to-image API.

One image is one task: ``POST /v3/async/txt2img`` with the ``request`` object (and the
``extra`` options) answers ``{"task_id"}``; ``GET /v3/async/task-result?task_id=`` is polled
with a growing interval until the task is ``TASK_STATUS_SUCCEED`` or ``TASK_STATUS_FAILED``,
reporting ``task.progress_percent`` as progress; the images are presigned URLs on another
host, downloaded through the same transport, within the same deadline, without the key.

Seeds: we always send one (a random one when the request has none) and report the seed
Novita answers in ``extra.seed`` (a string). ``n > 1`` makes n tasks of one image each, with
seeds seed, seed+1, ..., so every reported seed regenerates its image alone; Novita does not
document how the images of one ``image_num > 1`` task are seeded.

Novita has no cancel endpoint: cancelling stops the polling, and the task still runs (and is
billed) on Novita's side. NSFW detection (``nsfw_detection``) is off by default, as it is at
Novita, and costs extra per image when on; its per-image result is not acted upon.

Edits (providers.md section 13.5, from novitalabs/python-sdk ``proto.py`` ``Img2ImgV3Request``
/ ``InpaintingRequest`` and Novita's img2img and inpainting reference pages): img2img is a
``POST /v3/async/img2img`` task with ``image_base64`` (plain base64, no ``data:`` prefix),
``strength`` (the SDK's default 0.5 when the request has none), ``width`` / ``height`` (the
input's size rounded down to a multiple of 8, at least 128, unless the request names one);
inpainting is a
``POST /v3/async/inpainting`` task with ``image_base64`` and ``mask_image_base64`` (same
resolution as the image; white = repaint, as the A1111 field names suggest: unverified),
``mask_blur``, ``strength`` (the SDK's default 1.0) and ``inpainting_full_res = 0``, on an
inpainting checkpoint (``inpaint_model``; Novita lists them with
``filter.is_inpainting=true``). Both are polled and downloaded exactly like txt2img. One input
image per request; more is refused (InvalidRequest naming images).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import time
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, Literal, TypeVar

from pydantic import Field, PositiveFloat

from imagegate.errors import (
    AuthError,
    ConnectError,
    ContentFiltered,
    InvalidRequest,
    ProtocolError,
    ProviderError,
    QuotaExceeded,
    RateLimited,
    Timeout,
    Unavailable,
    UpstreamError,
)
from imagegate.providers.base import (
    Deadline,
    Progress,
    ProgressCallback,
)
from imagegate.providers.edits import b64, default_strength, init_image, mask_png, require
from imagegate.providers.remote import HostedAPIConfig, RemoteProvider
from imagegate.request import MAX_SEED, GeneratedImage, ImageRequest
from imagegate.transport import (
    Response,
    parse_retry_after,
    protocol_error,
    raise_for_status,
    redact,
)

__all__ = ["SAMPLERS", "NovitaConfig", "NovitaProvider"]

T = TypeVar("T")

DEFAULT_MODEL = "sd_xl_base_1.0.safetensors"
"""The checkpoint Novita's own txt2img example uses; any ``sd_name`` from ``GET /v3/model``."""

DEFAULT_INPAINT_MODEL = "realisticVisionV40_v40VAE-inpainting_81543.safetensors"
"""The inpainting checkpoint Novita's inpainting reference uses as its example."""

IMG2IMG_STRENGTH = 0.5  # the SDK's Img2ImgV3Request default
INPAINT_STRENGTH = 1.0  # the SDK's InpaintingRequest default
_PATHS = {
    "txt2img": "/v3/async/txt2img",
    "img2img": "/v3/async/img2img",
    "inpaint": "/v3/async/inpainting",
}

SAMPLERS = (
    "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE",
    "DPM fast", "DPM adaptive", "LMS Karras", "DPM2 Karras", "DPM2 a Karras",
    "DPM++ 2S a Karras", "DPM++ 2M Karras", "DPM++ SDE Karras", "DDIM", "PLMS", "UniPC",
)  # fmt: skip
"""The ``sampler_name`` values Novita's txt2img reference lists."""

_SUCCEED, _FAILED = "TASK_STATUS_SUCCEED", "TASK_STATUS_FAILED"
_POLL_CAP_S = 4.0  # the polling interval grows to this at most
_POLL_FAILURES = 3  # consecutive failed polls before giving up on the task
_PARALLEL = 4  # tasks in flight at once for one request with n > 1
# Novita's request fields -> ImageRequest fields, for naming the field a 400 complains about.
_FIELDS = {
    "model_name": "model",
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "width": "width",
    "height": "height",
    "image_num": "n",
    "steps": "steps",
    "guidance_scale": "guidance",
    "sampler_name": "sampler",
    "seed": "seed",
}
_FILTERED = re.compile(r"nsfw|illegal|inappropriate|sensitive|moderation|policy", re.I)
_INVALID = re.compile(r"invalid|not (?:found|exist)|out of range|unsupported|parameter", re.I)


class NovitaConfig(HostedAPIConfig):
    """Settings of a Novita provider; width..sampler are used when the request has none."""

    type: Literal["novita"] = Field(default="novita", description="Novita AI's async txt2img API.")
    url: str | None = Field(default="https://api.novita.ai", description="Novita's base URL.")
    api_key_env: str = Field(
        default="NOVITA_API_KEY", description="The environment variable holding the API key."
    )
    model: str = Field(
        default=DEFAULT_MODEL, min_length=1, description="The model_name Novita runs."
    )
    width: int = Field(
        default=1024, ge=128, le=2048, description="Width when the request has none (128-2048)."
    )
    height: int = Field(
        default=1024, ge=128, le=2048, description="Height when the request has none (128-2048)."
    )
    steps: int = Field(
        default=20, ge=1, le=100, description="Steps when the request has none (1-100)."
    )
    guidance: float = Field(
        default=7.5, ge=1.0, le=30.0, description="Guidance when the request has none (1-30)."
    )
    sampler: str = Field(
        default="Euler a", description="The sampler_name when the request has none."
    )
    nsfw_detection: bool = Field(
        default=False,
        description="Novita's extra.enable_nsfw_detection (off by default there too; costs extra).",
    )
    nsfw_detection_level: Literal[0, 1, 2] | None = Field(
        default=None, description="Novita's NSFW detection strictness: 0, 1 or 2; none = theirs."
    )
    inpaint_model: str = Field(
        default=DEFAULT_INPAINT_MODEL,
        min_length=1,
        description="The inpainting checkpoint inpainting tasks run on (Novita's inpainting "
        "takes inpainting checkpoints only; list them with GET "
        "/v3/model?filter.is_inpainting=true).",
    )
    poll_interval_s: PositiveFloat = Field(
        default=0.5,
        description="The first wait between two polls of a task (> 0); it grows by half each "
        "time, to 4 s.",
    )


class NovitaProvider(RemoteProvider):
    """Text to image with Novita's v3 async API: submit, poll, download."""

    type = "novita"
    Config = NovitaConfig
    config: NovitaConfig
    capabilities = frozenset({"txt2img", "img2img", "inpaint"})

    # -- public surface ------------------------------------------------------------------

    async def generate(
        self, request: ImageRequest, deadline: Deadline, progress: ProgressCallback | None
    ) -> list[GeneratedImage]:
        """One task per image, polled until done; images downloaded before ``deadline``."""
        self._check_request(request)
        task = require(self.name, self.capabilities, request)
        path = _PATHS[task]
        headers = self._headers()
        seeds = request.seeds()
        tracker = _ProgressTracker(request.n, progress)
        gate = asyncio.Semaphore(_PARALLEL)

        async def one(index: int) -> GeneratedImage:
            async with gate:
                body = self._body(request, seeds[index])
                if task != "txt2img":
                    body["request"] = _edit(task, request, body["request"], self.config)
                return await self._run_task(path, body, headers, deadline, tracker.part(index))

        images = await _all(one(i) for i in range(request.n))
        tracker.finish()
        return images

    async def probe(self, deadline: Deadline) -> str | None:
        """List checkpoints matching the configured model (``GET /v3/model``)."""
        params = {
            "filter.types": "checkpoint",
            "filter.query": self.config.model,
            "pagination.limit": "100",
        }
        resp = await self._http().request(
            "GET", "/v3/model", deadline=deadline, params=params, headers=self._headers()
        )
        data = self._json(resp)
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, list):
            raise self._protocol(resp, "the model list has no 'models' array")
        names = {
            str(m.get(key))
            for m in models
            if isinstance(m, dict)
            for key in ("sd_name", "sd_name_in_api")
        }
        if self.config.model not in names:
            raise InvalidRequest(
                f"model: Novita has no checkpoint named {self.config.model!r}; pick an sd_name "
                "from GET /v3/model?filter.types=checkpoint and set the provider's model",
                field="model",
                provider=self.name,
            )
        return f"checkpoint {self.config.model} available"

    def effective_params(self, request: ImageRequest) -> dict[str, Any]:
        """The steps, sampler, scheduler and guidance sent to Novita for ``request``."""
        return {
            "steps": request.steps or self.config.steps,
            "sampler": request.sampler or self.config.sampler,
            "scheduler": request.scheduler,
            "guidance": request.guidance if request.guidance is not None else self.config.guidance,
        }

    def samplers(self) -> tuple[str, ...] | None:
        """The names of Novita's list without a schedule suffix."""
        return tuple(name for name in SAMPLERS if not name.endswith(" Karras"))

    def schedulers(self) -> tuple[str, ...] | None:
        """Automatic, and Karras (Novita's "... Karras" names)."""
        return ("automatic", "karras")

    # -- one task ------------------------------------------------------------------------

    def _check_request(self, request: ImageRequest) -> None:
        if _sampler_name(request.sampler, request.scheduler) not in (None, *SAMPLERS):
            allowed = ", ".join(SAMPLERS)
            raise InvalidRequest(
                f"sampler: Novita has no sampler "
                f"{_sampler_name(request.sampler, request.scheduler)!r}; use one of: {allowed}",
                field="sampler",
                limit=f"one of: {allowed}",
                provider=self.name,
            )

    def _body(self, request: ImageRequest, seed: int) -> dict[str, Any]:
        cfg = self.config
        params = self.effective_params(request)
        body: dict[str, Any] = {
            "model_name": request.model or cfg.model,
            "prompt": request.prompt,
            "width": request.width or cfg.width,
            "height": request.height or cfg.height,
            "image_num": 1,
            "steps": params["steps"],
            "guidance_scale": params["guidance"],
            "sampler_name": _sampler_name(params["sampler"], request.scheduler),
            "seed": seed,
        }
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
        extra: dict[str, Any] = {"response_image_type": "png"}
        if cfg.nsfw_detection:
            extra["enable_nsfw_detection"] = True
            if cfg.nsfw_detection_level is not None:
                extra["nsfw_detection_level"] = cfg.nsfw_detection_level
        return {"extra": extra, "request": body}

    async def _run_task(
        self,
        path: str,
        body: dict[str, Any],
        headers: Mapping[str, str],
        deadline: Deadline,
        progress: ProgressCallback,
    ) -> GeneratedImage:
        http = self._http()
        resp = await http.request("POST", path, deadline=deadline, json=body, headers=headers)
        data = self._json(resp)
        task_id = data.get("task_id") if isinstance(data, dict) else None
        if not isinstance(task_id, str) or not task_id:
            raise self._protocol(resp, f"the answer to {path} has no task_id")
        try:
            return await self._finish_task(task_id, body, headers, deadline, progress)
        except ProviderError as exc:
            # Novita accepted the task and bills it whatever happens next (a failed task says
            # so itself): the router must not send the request elsewhere.
            if exc.billed is None:
                exc.billed = True
            raise

    async def _finish_task(
        self,
        task_id: str,
        body: dict[str, Any],
        headers: Mapping[str, str],
        deadline: Deadline,
        progress: ProgressCallback,
    ) -> GeneratedImage:
        http = self._http()
        result = await self._poll(task_id, headers, deadline, progress)
        images = result.get("images")
        if not isinstance(images, list) or not images or not isinstance(images[0], dict):
            raise self._protocol(None, f"task {task_id} succeeded without an image")
        url = images[0].get("image_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise self._protocol(None, f"task {task_id} gave no usable image_url")
        # A presigned URL on another host: no Authorization header, or S3 refuses it.
        image = await http.request("GET", url, deadline=deadline)
        if not image.ok:
            raise _map_error(image, self.name)
        png, width, height = _as_png(image.content, self.name, image)
        return GeneratedImage(
            png=png, width=width, height=height, seed=_seed(result, body["request"]["seed"])
        )

    async def _poll(
        self,
        task_id: str,
        headers: Mapping[str, str],
        deadline: Deadline,
        progress: ProgressCallback,
    ) -> dict[str, Any]:
        """Poll the task until it ends, or the deadline passes; its last answer."""
        started = time.monotonic()
        interval = self.config.poll_interval_s
        failures: list[ProviderError] = []
        while True:
            await _sleep_within(interval, deadline, self.name, started, task_id)
            interval = min(interval * 1.5, max(_POLL_CAP_S, self.config.poll_interval_s))
            try:
                resp = await self._http().request(
                    "GET",
                    "/v3/async/task-result",
                    deadline=deadline,
                    params={"task_id": task_id},
                    headers=headers,
                )
                data = self._json(resp)
            except (RateLimited, Unavailable, UpstreamError, ConnectError) as exc:
                # The task is submitted (and billed): a failed poll is worth another one.
                failures.append(exc)
                if len(failures) >= _POLL_FAILURES:
                    raise
                interval = max(interval, exc.retry_after or 0.0)
                continue
            except Timeout as exc:
                if exc.stage == "total":
                    raise _late(task_id, self.name, started) from exc
                failures.append(exc)
                if len(failures) >= _POLL_FAILURES:
                    raise
                continue
            failures.clear()
            task = data.get("task") if isinstance(data, dict) else None
            if not isinstance(task, dict):
                raise self._protocol(resp, f"the result of task {task_id} has no 'task' object")
            status = task.get("status")
            if status == _SUCCEED:
                return dict(data)
            if status == _FAILED:
                raise _task_failed(task_id, str(task.get("reason") or ""), self.name, started)
            percent = task.get("progress_percent")
            if isinstance(percent, int | float) and 0 <= percent <= 100:
                progress(Progress(int(percent), 100))

    # -- plumbing ------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key()}"}

    def _error(self, resp: Response) -> ProviderError:
        return _map_error(resp, self.name)

    def _protocol(self, resp: Response | None, what: str) -> ProtocolError:
        fix = "the API changed or a proxy altered the answer: check the provider's url"
        return protocol_error(resp, self.name, what, fix)


# --------------------------------------------------------------------------- helpers


def _edit(
    task: str, request: ImageRequest, body: dict[str, Any], config: NovitaConfig
) -> dict[str, Any]:
    """The txt2img ``request`` object turned into an img2img or inpainting one."""
    image = init_image(request)
    edit = {**body, "image_base64": b64(image.data)}
    if task == "img2img":
        edit["strength"] = default_strength(request, IMG2IMG_STRENGTH)
        edit["width"] = request.width or max(128, image.width // 8 * 8)
        edit["height"] = request.height or max(128, image.height // 8 * 8)
        return edit
    for key in ("width", "height"):  # the output has the image's size
        edit.pop(key, None)
    edit.update(
        model_name=request.model or config.inpaint_model,
        mask_image_base64=b64(mask_png(request)),
        mask_blur=request.mask_blur,
        strength=default_strength(request, INPAINT_STRENGTH),
        inpainting_full_res=0,
    )
    return edit


class _ProgressTracker:
    """Folds the progress of n tasks into one Progress: each task is 100 steps."""

    def __init__(self, n: int, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.parts = [0] * n
        self.last = -1

    def part(self, index: int) -> ProgressCallback:
        def report(p: Progress) -> None:
            self.parts[index] = max(self.parts[index], min(p.step, 100))
            self._emit()

        return report

    def finish(self) -> None:
        self.parts = [100] * len(self.parts)
        self._emit()

    def _emit(self) -> None:
        step = sum(self.parts)
        if self.callback is not None and step > self.last:
            self.last = step
            self.callback(Progress(step, 100 * len(self.parts)))


async def _all(jobs: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``jobs`` together; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(job) for job in jobs]
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
    return [task.result() for task in tasks]


async def _sleep_within(
    seconds: float, deadline: Deadline, provider: str, started: float, task_id: str
) -> None:
    if deadline.remaining() <= seconds:
        await asyncio.sleep(deadline.remaining())
        raise _late(task_id, provider, started)
    await asyncio.sleep(seconds)


def _late(task_id: str, provider: str, started: float) -> Timeout:
    return Timeout(
        f"task {task_id} did not finish before the request deadline; Novita goes on with it "
        "(and bills it): raise gateway.deadline_s or the provider's timeout_s, or ask for "
        "fewer steps",
        provider=provider,
        stage="total",
        elapsed_s=round(time.monotonic() - started, 3),
    )


def _seed(result: Mapping[str, Any], sent: int) -> int:
    """``extra.seed`` (a string) when it is a number, else the seed we sent."""
    extra = result.get("extra")
    value = extra.get("seed") if isinstance(extra, dict) else None
    try:
        seed = int(str(value))
    except ValueError:
        return sent
    return seed if 0 <= seed <= MAX_SEED else sent


def _as_png(data: bytes, provider: str, resp: Response) -> tuple[bytes, int, int]:
    """``data`` as PNG bytes with its size; a JPEG or WebP is converted."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        return data, int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            out = io.BytesIO()
            img.save(out, format="PNG")
            return out.getvalue(), img.width, img.height
    except (UnidentifiedImageError, OSError) as exc:
        raise ProtocolError(
            f"{resp.timings.host}:{resp.timings.port} sent {len(data)} bytes that are not an "
            f"image ({resp.snippet()!r}); the presigned URL may have expired: try again",
            provider=provider,
            stage="read",
        ) from exc


def _task_failed(task_id: str, reason: str, provider: str, started: float) -> ProviderError:
    """A TASK_STATUS_FAILED task as the error its reason describes."""
    kw: dict[str, Any] = {"provider": provider, "elapsed_s": round(time.monotonic() - started, 3)}
    said = reason or "no reason given"
    error: ProviderError
    if _FILTERED.search(reason):
        error = ContentFiltered(f"Novita refused task {task_id}: {said}; change the prompt", **kw)
    elif _INVALID.search(reason):
        error = InvalidRequest(
            f"Novita refused task {task_id}: {said}; fix the request", field=_field_in(reason), **kw
        )
    else:
        error = UpstreamError(
            f"Novita task {task_id} failed: {said}; try again, or route elsewhere", **kw
        )
    error.billed = False  # a failed task is not charged
    return error


def _field_in(text: str) -> str | None:
    """The ImageRequest field a Novita message names, if it names one."""
    for name, field in _FIELDS.items():
        if re.search(rf"\b{name}\b", text):
            return field
    return None


def _map_error(resp: Response, provider: str) -> ProviderError:
    """A non-2xx Novita answer as an error of the tree: the one place statuses are mapped.

    Bodies are ``{"code", "reason", "message", "metadata"}``. 401 and 403 (INVALID_API_KEY,
    API_NOT_ALLOWED, NEED_REAL_NAME_VERIFY, BILLING_AUTH_FAILED) -> AuthError; 403
    NOT_ENOUGH_BALANCE and 400 BILLING_BALANCE_NOT_ENOUGH -> QuotaExceeded; 400 ILLEGAL_PROMPT
    / ILLEGAL_IMAGE_CONTENT -> ContentFiltered; other 400 -> InvalidRequest naming the field;
    429 -> RateLimited; 503/504 -> Unavailable; other 5xx -> UpstreamError.
    """
    body: Any = None
    with contextlib.suppress(ProtocolError):
        body = resp.json()
    reason = str(body.get("reason") or "") if isinstance(body, dict) else ""
    message = str(body.get("message") or "") if isinstance(body, dict) else ""
    where = f"{resp.timings.host}:{resp.timings.port}"
    said = f"{where} answered {resp.status} {reason or ''}".rstrip()
    said += f" ({redact(message, resp.secrets)[:200] if message else resp.snippet()})"
    kw: dict[str, Any] = {"provider": provider, "elapsed_s": round(resp.timings.total_s, 3)}
    retry_after = parse_retry_after(resp.headers.get("retry-after"))
    status = resp.status
    if "BALANCE" in reason:
        return QuotaExceeded(f"{said}; top up the Novita account", **kw)
    if reason.startswith("ILLEGAL_"):
        return ContentFiltered(f"{said}; Novita's filter refused it: change the prompt", **kw)
    if status in (401, 403) or reason in ("MISSING_API_KEY", "INVALID_API_KEY"):
        return AuthError(
            f"{said}; check the key in the variable the provider's api_key_env names, and the "
            "account's permissions and verification in the Novita console",
            **kw,
        )
    if status == 429:
        return RateLimited(
            f"{said}; Novita's rate limit: wait, or lower the provider's concurrency",
            retry_after=retry_after,
            **kw,
        )
    if status in (503, 504):
        return Unavailable(
            f"{said}; Novita is overloaded: try again later, or route elsewhere",
            retry_after=retry_after,
            **kw,
        )
    if status == 400:
        field = _field_in(message)
        return InvalidRequest(
            f"{said}; fix {field or 'the request'} and try again", field=field, **kw
        )
    try:
        raise_for_status(resp, provider)
    except ProviderError as exc:
        return exc
    return UpstreamError(f"{said}; try again", **kw)


def _sampler_name(sampler: str | None, scheduler: str | None) -> str | None:
    """Novita's name: the A1111 name, with " Karras" for the karras scheduler."""
    if sampler is None or scheduler in (None, "automatic"):
        return sampler
    return f"{sampler} {scheduler.title()}"
