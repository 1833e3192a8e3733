"""AUTOMATIC1111 stable-diffusion-webui, Forge and SD.Next (``type = "a1111"``).

The server must run with ``--api`` (or ``--nowebui``). One ``POST /sdapi/v1/txt2img`` per
attempt: prompt, negative_prompt, width, height, steps, cfg_scale, sampler_name, scheduler,
batch_size (= n), seed and, when a model is named, ``override_settings.sd_model_checkpoint``.
A named scheduler goes both ways A1111 reads it: the ``scheduler`` field (1.9+) and the old
combined name ("DPM++ 2M Karras", which 1.9+ splits again). Images come back as base64 without
a ``data:`` prefix and ``info`` is a JSON *string*. imagegate never sends seed -1: with no seed
in the request it picks one, so the seed is always known.

What is recorded is what A1111 reports in ``info``: each image's seed (``all_seeds``), the
model (``sd_model_name``, ``sd_model_hash``), sampler, schedule type, steps and CFG scale, and
A1111's own infotext (kept as it wrote it). A1111 never refuses a checkpoint it cannot load (it
answers with the one it has); a named checkpoint that is not the one A1111 reports having used
is an InvalidRequest naming the model and the checkpoints the server has. Checkpoint names
match as A1111 matches them: the title with or without " [hash]", the model name, the file
name, the short hash or the sha256.

Edits (img2img, inpaint) go to ``POST /sdapi/v1/img2img`` instead, with the body
``a1111_edit`` adds.

While the job is asked to finish early (an A1111-surface ``/interrupt``), ``POST
/sdapi/v1/interrupt`` is sent and A1111's answer, the image made so far, is the result.

A1111 runs one generation at a time, so this provider sends one at a time too (a lock per
provider; waiting for it counts against the deadline). While txt2img runs, ``GET
/sdapi/v1/progress`` is polled every ``progress_interval_s`` for the step. Cancelling the
task (or our own timeout after the request went out) sends ``POST /sdapi/v1/interrupt``, best
effort and bounded, so the server stops instead of finishing a job nobody waits for.

``auth_env`` names a variable holding ``user:pass`` for ``--api-auth`` (HTTP Basic); a value
without a colon is the password with an empty user name, which imagegate's own server takes.

``_map_error`` maps A1111's answers: 401 -> AuthError; 404 ``Not Found`` on /sdapi ->
Unavailable ("started without --api"; the breaker's probe notices the restart); 400 or 404
"Sampler not found" -> InvalidRequest(sampler); 422 -> InvalidRequest naming the field from
``detail``; 500 ``{error, detail, body, errors}`` -> UpstreamError quoting the error.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import json
import re
from collections.abc import Awaitable
from typing import Any, Literal

import pybase64
from PIL import UnidentifiedImageError
from pydantic import Field, PositiveFloat

from imagegate.deadline import finishing_early
from imagegate.errors import (
    AuthError,
    ImagegateError,
    InvalidRequest,
    ProtocolError,
    ProviderError,
    Timeout,
    Unavailable,
    UpstreamError,
)
from imagegate.images import to_png
from imagegate.providers.a1111_edit import img2img_body
from imagegate.providers.base import (
    Deadline,
    Progress,
    ProgressCallback,
    ProviderConfig,
    RemoteConfig,
)
from imagegate.providers.edits import require
from imagegate.providers.remote import RemoteProvider
from imagegate.request import GeneratedImage, ImageRequest, Reported, seed_series
from imagegate.sampling import (
    AUTOMATIC,
    SAMPLERS,
    SCHEDULERS,
    canonical_scheduler,
    scheduler_label,
)
from imagegate.transport import Response, Transport, protocol_error, raise_for_status, redact

__all__ = ["A1111Config", "A1111Provider", "checkpoint_aliases", "checkpoint_matches"]

INTERRUPT_S = 0.5  # the most a cancel waits for /interrupt to be answered
_FINISH_POLL_S = 0.1  # how often a running txt2img looks whether it is asked to finish early
_PROGRESS_POLL_S = 2.0  # the most one progress poll may take

# A1111's body field -> the request field it comes from (errors name the request's field).
_FIELDS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "width": "width",
    "height": "height",
    "steps": "steps",
    "cfg_scale": "guidance",
    "seed": "seed",
    "sampler_name": "sampler",
    "scheduler": "scheduler",
    "batch_size": "n",
    "override_settings": "model",
}


class A1111Config(RemoteConfig):
    """Settings of an AUTOMATIC1111-compatible server; steps..guidance are the web UI's."""

    type: Literal["a1111"] = Field(default="a1111", description="AUTOMATIC1111, Forge, SD.Next.")
    url: str | None = Field(
        default="http://127.0.0.1:7860",
        min_length=1,
        description="The web UI's base URL (started with --api).",
    )
    auth_env: str | None = Field(
        default=None,
        description="The environment variable holding `user:pass` for --api-auth; none = no auth.",
    )
    model: str | None = Field(
        default=None,
        description="A checkpoint title or name; none = whatever the server has loaded.",
    )
    steps: int = Field(
        default=20, ge=1, le=150, description="Steps when the request has none (1-150)."
    )
    sampler: str = Field(
        default="Euler a",
        min_length=1,
        description="The sampler name when the request has none, as the web UI lists it.",
    )
    guidance: float = Field(
        default=7.0, ge=0.0, le=30.0, description="CFG scale when the request has none (0-30)."
    )
    progress_interval_s: PositiveFloat = Field(
        default=0.5, description="Seconds between two polls of /sdapi/v1/progress (> 0)."
    )


class A1111Provider(RemoteProvider):
    """An AUTOMATIC1111 / Forge / SD.Next server's ``/sdapi/v1`` API."""

    type = "a1111"
    Config = A1111Config
    config: A1111Config
    key_setting = "auth_env"
    describes_key = False
    json_any_content_type = True
    capabilities = frozenset({"txt2img", "img2img", "inpaint"})

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        self._lock = asyncio.Lock()

    @property
    def model(self) -> str:
        return self.config.model or "a1111"

    # ------------------------------------------------------------------ protocol

    async def generate(
        self, request: ImageRequest, deadline: Deadline, progress: ProgressCallback | None
    ) -> list[GeneratedImage]:
        """txt2img under the provider's lock, polling progress, interrupting on cancel."""
        transport, auth = self._connect()
        seed = request.seeds()[0]
        params = self.effective_params(request)
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "steps": params["steps"],
            "cfg_scale": params["guidance"],
            "sampler_name": params["sampler"],
            "seed": seed,
            "batch_size": request.n,
            "n_iter": 1,
            "send_images": True,
            "save_images": False,
        }
        if request.width is not None:
            body["width"] = request.width
        if request.height is not None:
            body["height"] = request.height
        scheduler = request.scheduler
        if scheduler is not None and scheduler != AUTOMATIC:
            body["sampler_name"] = f"{params['sampler']} {scheduler_label(scheduler)}"
            body["scheduler"] = scheduler
        model = request.model or self.config.model
        if model:
            body["override_settings"] = {"sd_model_checkpoint": model}
        path = "sdapi/v1/txt2img"
        if require(self.name, self.capabilities, request) != "txt2img":
            path, body = "sdapi/v1/img2img", img2img_body(request, body)
        try:
            async with asyncio.timeout(deadline.remaining()):
                await self._lock.acquire()
        except TimeoutError:
            raise Timeout(
                "the deadline passed while waiting for this provider's previous request "
                "(A1111 runs one at a time); raise gateway.deadline_s, or add a second server",
                provider=self.name,
                stage="total",
            ) from None
        try:
            call = transport.request("POST", path, deadline=deadline, json=body, auth=auth)
            resp = await self._while_polling(call, deadline, progress, auth)
        finally:
            self._lock.release()
        payload = self._json(resp)
        if not isinstance(payload, dict):
            raise self._protocol(resp, "the answer is not a JSON object")
        images = self._images(payload, request, seed, resp)
        if model and images and images[0].reported is not None:
            await self._check_model(model, images[0].reported, deadline, auth)
        if progress is not None:
            progress(Progress(params["steps"], params["steps"]))
        return images

    def effective_params(self, request: ImageRequest) -> dict[str, Any]:
        """The request's steps, sampler and guidance, else the config's (the web UI's)."""
        return {
            "steps": request.steps if request.steps is not None else self.config.steps,
            "sampler": request.sampler or self.config.sampler,
            "scheduler": request.scheduler,
            "guidance": request.guidance if request.guidance is not None else self.config.guidance,
        }

    def samplers(self) -> tuple[str, ...] | None:
        """A1111's own: all of them."""
        return tuple(info.name for info in SAMPLERS)

    def schedulers(self) -> tuple[str, ...] | None:
        """A1111's own: all of them (1.9+; older servers take the combined names)."""
        return tuple(info.name for info in SCHEDULERS)

    async def probe(self, deadline: Deadline) -> str | None:
        """``GET /sdapi/v1/sd-models`` and ``/options``: the API is on, auth passes, the
        configured checkpoint is there; "N checkpoints, loaded: TITLE"."""
        transport, auth = self._connect()
        models = await self._checkpoints(transport, deadline, auth)
        if self.config.model and not any(checkpoint_matches(self.config.model, m) for m in models):
            raise self._no_checkpoint(self.config.model, models)
        loaded = None
        with contextlib.suppress(ImagegateError, ValueError):
            resp = await transport.request("GET", "sdapi/v1/options", deadline=deadline, auth=auth)
            options = resp.json() if resp.ok else None
            if isinstance(options, dict):
                loaded = options.get("sd_model_checkpoint")
        detail = f"{len(models)} checkpoints"
        return f"{detail}, loaded: {loaded}" if isinstance(loaded, str) and loaded else detail

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(auth=bool(self.config.auth_env))
        return info

    # ------------------------------------------------------------------ helpers

    async def _checkpoints(
        self, transport: Transport, deadline: Deadline, auth: tuple[str, str] | None
    ) -> list[dict[str, Any]]:
        resp = await transport.request("GET", "sdapi/v1/sd-models", deadline=deadline, auth=auth)
        models = self._json(resp)
        if not isinstance(models, list):
            raise self._protocol(resp, "the checkpoint list is not a list")
        return [m for m in models if isinstance(m, dict)]

    def _no_checkpoint(self, model: str, models: list[dict[str, Any]]) -> InvalidRequest:
        titles = sorted(str(m.get("title")) for m in models)
        shown = ", ".join(titles[:8]) or "none"
        return InvalidRequest(
            f"the checkpoint {model!r} is not on the server (it has: {shown}); "
            "set the provider's model (or the request's) to one of those, or put the file in "
            "models/Stable-diffusion and refresh the checkpoints",
            field="model",
            limit=f"one of: {shown}",
            provider=self.name,
        )

    async def _check_model(
        self,
        model: str,
        reported: Reported,
        deadline: Deadline,
        auth: tuple[str, str] | None,
    ) -> None:
        """InvalidRequest when A1111 reports another checkpoint than the one named."""
        ran = {"model_name": reported.model, "hash": reported.model_hash}
        if reported.model is None or checkpoint_matches(model, ran):
            return
        transport, _ = self._connect()
        models: list[dict[str, Any]] = []
        with contextlib.suppress(ImagegateError):
            models = await self._checkpoints(transport, deadline.within(_PROGRESS_POLL_S), auth)
        for m in models:  # an alias that info lacks (the file name of another extension)
            if checkpoint_matches(model, m) and m.get("model_name") == reported.model:
                return
        raise InvalidRequest(
            f"A1111 ran {reported.model!r}, not the checkpoint {model!r}, which it could not "
            f"load: {self._no_checkpoint(model, models).cause}",
            field="model",
            limit="a checkpoint the server has",
            provider=self.name,
        )

    def _connect(self) -> tuple[Transport, tuple[str, str] | None]:
        """The transport, and the Basic credentials read now from ``auth_env``."""
        value = self._read_key()
        user, _, password = value.partition(":") if ":" in value else ("", "", value)
        transport = self._http(value, password)
        return transport, ((user, password) if self.config.auth_env else None)

    def _error(self, resp: Response) -> ProviderError:
        return _map_error(resp, self.name, auth_env=self.config.auth_env)

    async def _while_polling(
        self,
        call: Awaitable[Response],
        deadline: Deadline,
        progress: ProgressCallback | None,
        auth: tuple[str, str] | None,
    ) -> Response:
        """Await ``call`` while polling progress; interrupt the server if we give up on it."""
        task = asyncio.ensure_future(call)
        poller = asyncio.ensure_future(self._poll(deadline, progress, auth)) if progress else None
        finisher = asyncio.ensure_future(self._finish_early(deadline, auth))
        try:
            return await task
        except asyncio.CancelledError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await self._interrupt(deadline, auth)
            raise
        except Timeout as exc:
            if exc.stage in ("first_byte", "read", "total"):
                await self._interrupt(deadline, auth)
            raise
        finally:
            for helper in (poller, finisher):
                if helper is not None:
                    helper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await helper

    async def _finish_early(self, deadline: Deadline, auth: tuple[str, str] | None) -> None:
        """Send ``/interrupt`` once the job is asked to finish early: A1111 then answers the
        txt2img with what it made so far."""
        event = finishing_early()
        if event is None:
            return
        while not event.is_set():  # noqa: ASYNC110 - a threading.Event, shared with threads
            await asyncio.sleep(_FINISH_POLL_S)
        await self._interrupt(deadline, auth)

    async def _poll(
        self, deadline: Deadline, progress: ProgressCallback, auth: tuple[str, str] | None
    ) -> None:
        """Report ``state.sampling_step`` of ``/progress`` until cancelled; errors ignored."""
        transport = self._transport
        assert transport is not None
        last = -1
        while True:
            await asyncio.sleep(self.config.progress_interval_s)
            with contextlib.suppress(ImagegateError):
                resp = await transport.request(
                    "GET",
                    "sdapi/v1/progress",
                    deadline=deadline.within(_PROGRESS_POLL_S),
                    params={"skip_current_image": "true"},
                    auth=auth,
                )
                state = resp.json().get("state", {}) if resp.ok else {}
                step, steps = state.get("sampling_step"), state.get("sampling_steps")
                if isinstance(step, int) and isinstance(steps, int) and steps > 0:
                    step = min(step, steps)
                    if step != last:
                        last = step
                        progress(Progress(step, steps))

    async def _interrupt(self, deadline: Deadline, auth: tuple[str, str] | None) -> None:
        """``POST /sdapi/v1/interrupt``, within INTERRUPT_S, whatever happens.

        Skipped when the router never let this attempt send (it lost a handshake race):
        the server has nothing of ours to stop.
        """
        gate = deadline.control.gate if deadline.control else None
        if self._transport is None or (gate is not None and not gate.granted.is_set()):
            return
        with contextlib.suppress(Exception):
            await self._transport.request(
                "POST", "sdapi/v1/interrupt", deadline=Deadline(INTERRUPT_S), auth=auth
            )

    def _images(
        self, payload: dict[str, Any], request: ImageRequest, seed: int, resp: Response
    ) -> list[GeneratedImage]:
        raw = payload.get("images")
        if not isinstance(raw, list) or len(raw) < request.n:
            count = len(raw) if isinstance(raw, list) else "no"
            raise self._protocol(resp, f"{count} images where {request.n} were asked")
        info = _info(payload.get("info"))
        seeds = _seeds(info, request.n, seed)
        reports = _reports(info, request.n)
        # A grid image is prepended when the server saves images with return_grid on.
        return [
            self._decode(b64, s, resp, reported)
            for b64, s, reported in zip(raw[-request.n :], seeds, reports, strict=True)
        ]

    def _decode(
        self, b64: Any, seed: int, resp: Response, reported: Reported | None = None
    ) -> GeneratedImage:
        try:
            data = pybase64.b64decode(str(b64).split(",", 1)[-1], validate=True)
            # samples_format = jpg or webp is re-encoded
            png, width, height = to_png(data, decode_png=False)
        except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
            raise self._protocol(resp, "an image could not be decoded") from None
        return GeneratedImage(png=png, width=width, height=height, seed=seed, reported=reported)

    def _protocol(self, resp: Response, what: str) -> ProtocolError:
        fix = "check that the url is an AUTOMATIC1111-compatible server"
        return protocol_error(resp, self.name, what, fix)


def checkpoint_aliases(entry: dict[str, Any]) -> set[str]:
    """Every name A1111 resolves to this checkpoint (an ``/sd-models`` entry, or ``info``'s
    model_name and hash): the title, the title without " [hash]", the model name, the file
    name, "name [hash]", the short hash and the sha256."""
    names: set[str] = set()
    title, model_name = entry.get("title"), entry.get("model_name")
    short, sha256, filename = entry.get("hash"), entry.get("sha256"), entry.get("filename")
    for value in (title, model_name, short, sha256):
        if isinstance(value, str) and value:
            names.add(value)
    if isinstance(title, str):
        names.add(title.split(" [", 1)[0])
    if isinstance(filename, str) and filename:
        base = filename.replace("\\", "/").rsplit("/", 1)[-1]
        names.update({filename, base})
    for name in list(names):
        if isinstance(short, str) and short and not name.endswith("]"):
            names.add(f"{name} [{short}]")
    if isinstance(model_name, str):
        stem = model_name
        names.update(f"{stem}{ext}" for ext in (".safetensors", ".ckpt"))
    return names


def checkpoint_matches(name: str, entry: dict[str, Any]) -> bool:
    """Whether A1111 resolves ``name`` to this checkpoint: one of its aliases, also with the
    " [hash]" stripped (as A1111 does when the hash is not computed yet)."""
    aliases = checkpoint_aliases(entry)
    return name in aliases or name.split(" [", 1)[0] in aliases


def _info(info: Any) -> dict[str, Any]:
    """A1111's ``info`` (a JSON string) as a dict; empty when it is not one."""
    try:
        parsed = json.loads(info) if isinstance(info, str) else info
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _reports(info: dict[str, Any], n: int) -> list[Reported | None]:
    """What A1111 says it ran for each of the last ``n`` images."""
    if not info:
        return [None] * n
    texts = info.get("infotexts")
    texts = texts[-n:] if isinstance(texts, list) and len(texts) >= n else [None] * n

    def text_or_none(value: Any) -> str | None:
        return value if isinstance(value, str) else None

    def number(value: Any) -> float | None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else None

    reports: list[Reported | None] = []
    for text in texts:
        fields = _infotext_fields(text) if isinstance(text, str) else {}
        label = fields.get("Schedule type")
        scheduler = canonical_scheduler(label) if label else None
        steps = info.get("steps")
        reports.append(
            Reported(
                model=text_or_none(info.get("sd_model_name")) or fields.get("Model"),
                model_hash=text_or_none(info.get("sd_model_hash")) or fields.get("Model hash"),
                sampler=text_or_none(info.get("sampler_name")) or fields.get("Sampler"),
                scheduler=None if scheduler == AUTOMATIC else scheduler,
                steps=steps if isinstance(steps, int) and not isinstance(steps, bool) else None,
                guidance=number(info.get("cfg_scale")),
                infotext=text_or_none(text),
            )
        )
    return reports


_INFOTEXT_FIELD = re.compile(r"(?:^|, )(Schedule type|Model hash|Model|Sampler): ([^,\n]+)")


def _infotext_fields(text: str) -> dict[str, str]:
    """The few ``Key: value`` pairs of an infotext's last line that provenance needs."""
    last = text.strip().rsplit("\n", 1)[-1]
    return dict(_INFOTEXT_FIELD.findall(last))


def _seeds(parsed: dict[str, Any], n: int, seed: int) -> list[int]:
    """Each image's seed from ``info.all_seeds``; else seed + i."""
    fallback = seed_series(seed, n)
    seeds = parsed.get("all_seeds")
    if not isinstance(seeds, list) or len(seeds) < n:
        return fallback
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        return fallback
    return [int(s) for s in seeds[-n:]]


def _map_error(resp: Response, provider: str, *, auth_env: str | None = None) -> ProviderError:
    """The one place an A1111 error answer becomes an error of the tree."""
    try:
        body = resp.json()
    except ProtocolError:
        body = None
    body = body if isinstance(body, dict) else {}
    detail = body.get("detail")
    where = f"{resp.timings.host}:{resp.timings.port}"
    kw: dict[str, Any] = {"provider": provider, "elapsed_s": round(resp.timings.total_s, 3)}
    status = resp.status
    text = redact(str(detail if isinstance(detail, str) else ""), resp.secrets)
    if status == 401:
        if auth_env is None:
            return AuthError(
                f"{where} answered 401: the server runs with --api-auth and this provider "
                "sends no credentials; set the provider's auth_env to the name of an "
                "environment variable holding the server's user:pass",
                **kw,
            )
        return AuthError(
            f"{where} answered 401: the server runs with --api-auth and refused the "
            f"credentials; set {auth_env} (the provider's auth_env) to the server's user:pass",
            **kw,
        )
    if status in (400, 404) and "sampler" in text.lower():
        return InvalidRequest(
            f"{where} answered {status}: {text}; pick a sampler from GET /sdapi/v1/samplers "
            "(such as 'Euler a' or 'DPM++ 2M')",
            field="sampler",
            **kw,
        )
    if text in ("Init image not found", "Invalid encoded image"):
        return InvalidRequest(
            f"{where} answered {status}: {text}; send the input image as PNG, JPEG or WebP",
            field="images",
            **kw,
        )
    if status == 404 and text == "Not Found":
        return Unavailable(
            f"{where} answered 404 on /sdapi/v1: the web UI was started without the API; "
            "restart it with --api (or --nowebui), or check the provider's url",
            **kw,
        )
    if status == 422 and isinstance(detail, list):
        first = detail[0] if detail and isinstance(detail[0], dict) else {}
        loc = [str(part) for part in first.get("loc", []) if part != "body"]
        field = _FIELDS.get(loc[0], loc[0]) if loc else None
        msg = redact(str(first.get("msg", "invalid")), resp.secrets)
        return InvalidRequest(
            f"{where} answered 422: {'.'.join(loc) or 'the request'}: {msg}; change "
            f"{field or 'the request'} and try again",
            field=field,
            limit=msg,
            **kw,
        )
    if status >= 500 and body.get("error"):
        error = redact(str(body.get("error")), resp.secrets)
        errors = redact(str(body.get("errors") or text or ""), resp.secrets)[:200]
        return UpstreamError(
            f"{where} answered {status}: {error}: {errors}; the server failed on the "
            "request: see its console, or lower the size, n or steps",
            **kw,
        )
    try:
        raise_for_status(resp, provider)
    except ProviderError as exc:
        return exc
    return ProtocolError(f"{where} answered {status}; unexpected", **kw)  # pragma: no cover
