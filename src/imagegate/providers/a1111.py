"""AUTOMATIC1111 stable-diffusion-webui, Forge and SD.Next (``type = "a1111"``).

The server must run with ``--api`` (or ``--nowebui``). One ``POST /sdapi/v1/txt2img`` per
attempt: prompt, negative_prompt, width, height, steps, cfg_scale, sampler_name, batch_size
(= n), seed and, when a model is named, ``override_settings.sd_model_checkpoint``; images come
back as base64 without a ``data:`` prefix and ``info`` is a JSON *string* whose ``all_seeds``
gives each image's seed. imagegate never sends seed -1: with no seed in the request it picks
one, so the seed is always known.

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
from collections.abc import Awaitable
from typing import Any, Literal

import pybase64
from PIL import UnidentifiedImageError
from pydantic import Field, PositiveFloat

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
from imagegate.providers.base import (
    Deadline,
    Progress,
    ProgressCallback,
    ProviderConfig,
    RemoteConfig,
)
from imagegate.providers.remote import RemoteProvider
from imagegate.request import GeneratedImage, ImageRequest, seed_series
from imagegate.transport import Response, Transport, protocol_error, raise_for_status, redact

__all__ = ["A1111Config", "A1111Provider"]

INTERRUPT_S = 0.5  # the most a cancel waits for /interrupt to be answered
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
        model = request.model or self.config.model
        if model:
            body["override_settings"] = {"sd_model_checkpoint": model}
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
            call = transport.request(
                "POST", "sdapi/v1/txt2img", deadline=deadline, json=body, auth=auth
            )
            resp = await self._while_polling(call, deadline, progress, auth)
        finally:
            self._lock.release()
        payload = self._json(resp)
        if not isinstance(payload, dict):
            raise self._protocol(resp, "the answer is not a JSON object")
        images = self._images(payload, request, seed, resp)
        if progress is not None:
            progress(Progress(params["steps"], params["steps"]))
        return images

    def effective_params(self, request: ImageRequest) -> dict[str, Any]:
        """The request's steps, sampler and guidance, else the config's (the web UI's)."""
        return {
            "steps": request.steps if request.steps is not None else self.config.steps,
            "sampler": request.sampler or self.config.sampler,
            "guidance": request.guidance if request.guidance is not None else self.config.guidance,
        }

    async def probe(self, deadline: Deadline) -> str | None:
        """``GET /sdapi/v1/sd-models``: the API is on, auth passes; "N checkpoints"."""
        transport, auth = self._connect()
        resp = await transport.request("GET", "sdapi/v1/sd-models", deadline=deadline, auth=auth)
        models = self._json(resp)
        if not isinstance(models, list):
            raise self._protocol(resp, "the checkpoint list is not a list")
        if self.config.model:
            names = {
                str(m.get(key))
                for m in models
                if isinstance(m, dict)
                for key in ("title", "model_name")
            }
            if self.config.model not in names:
                shown = ", ".join(sorted(names)[:5]) or "none"
                raise InvalidRequest(
                    f"the checkpoint {self.config.model!r} is not on the server (it has: {shown}); "
                    "set the provider's model to one of those, or put the file in "
                    "models/Stable-diffusion and refresh the checkpoints",
                    field="model",
                    provider=self.name,
                )
        return f"{len(models)} checkpoints"

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(auth=bool(self.config.auth_env))
        return info

    # ------------------------------------------------------------------ helpers

    def _connect(self) -> tuple[Transport, tuple[str, str] | None]:
        """The transport, and the Basic credentials read now from ``auth_env``."""
        value = self._read_key()
        user, _, password = value.partition(":") if ":" in value else ("", "", value)
        transport = self._http(value, password)
        return transport, ((user, password) if self.config.auth_env else None)

    def _error(self, resp: Response) -> ProviderError:
        return _map_error(resp, self.name)

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
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller

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
        seeds = _seeds(payload.get("info"), request.n, seed)
        # A grid image is prepended when the server saves images with return_grid on.
        return [self._decode(b64, s, resp) for b64, s in zip(raw[-request.n :], seeds, strict=True)]

    def _decode(self, b64: Any, seed: int, resp: Response) -> GeneratedImage:
        try:
            data = pybase64.b64decode(str(b64).split(",", 1)[-1], validate=True)
            # samples_format = jpg or webp is re-encoded
            png, width, height = to_png(data, decode_png=False)
        except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
            raise self._protocol(resp, "an image could not be decoded") from None
        return GeneratedImage(png=png, width=width, height=height, seed=seed)

    def _protocol(self, resp: Response, what: str) -> ProtocolError:
        fix = "check that the url is an AUTOMATIC1111-compatible server"
        return protocol_error(resp, self.name, what, fix)


def _seeds(info: Any, n: int, seed: int) -> list[int]:
    """Each image's seed from ``info.all_seeds`` (a JSON string); else seed + i."""
    fallback = seed_series(seed, n)
    try:
        parsed = json.loads(info) if isinstance(info, str) else info
    except ValueError:
        return fallback
    seeds = parsed.get("all_seeds") if isinstance(parsed, dict) else None
    if not isinstance(seeds, list) or len(seeds) < n:
        return fallback
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        return fallback
    return [int(s) for s in seeds[-n:]]


def _map_error(resp: Response, provider: str) -> ProviderError:
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
        return AuthError(
            f"{where} answered 401: the server runs with --api-auth and refused the "
            "credentials; set the variable that auth_env names to the server's user:pass",
            **kw,
        )
    if status in (400, 404) and "sampler" in text.lower():
        return InvalidRequest(
            f"{where} answered {status}: {text}; pick a sampler from GET /sdapi/v1/samplers "
            "(such as 'Euler a' or 'DPM++ 2M')",
            field="sampler",
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
