"""Hugging Face Inference Providers, the ``hf-inference`` route (``type = "hf-inference"``).

One synchronous call per image, on ``imagegate.transport``:
``POST {url}/models/{model}`` with ``{"inputs": prompt, "parameters": {negative_prompt,
width, height, num_inference_steps, guidance_scale, seed, scheduler}}`` (only the fields the
request sets), ``Authorization: Bearer`` from ``token_env`` and ``Accept: image/png``; the
answer is the image's bytes (re-encoded as PNG when the server sent JPEG). ``url`` defaults
to ``https://router.huggingface.co/hf-inference``; a ``model`` that is an ``http(s)://``
address (an Inference Endpoint) is posted to directly, as ``InferenceClient`` does.

The API makes one image per call, so n > 1 is n calls in turn with seeds seed, seed+1, ...
(a random seed is picked when the request has none, and is always sent and reported). The
sampler is sent as ``scheduler``, the diffusers class of the A1111 name (``SCHEDULERS``).

A model that is not loaded answers 503 ``{"error": "... is currently loading",
"estimated_time": s}``. ``InferenceClient`` retries with ``X-wait-for-model: 1`` so the
server holds the request until the model is up; imagegate does not by default: holding a
request for an unknown time is what imagegate exists to avoid. The attempt fails with
``Unavailable(retry_after=estimated_time)``, the router serves the request elsewhere and its
background probe (``probe()``: the Hub's model status) tries again after that time.
``wait_for_model = true`` sends ``x-wait-for-model: true`` instead, for a route that has
nowhere else to go; the wait is still bounded by ``first_byte_timeout_s`` and the deadline.

Statuses map in one place, ``_map_error``: 401/403 AuthError, 402 QuotaExceeded, 429
RateLimited (Retry-After), 400/422 InvalidRequest, 404 InvalidRequest(model), 503
Unavailable, other 5xx UpstreamError. The service has no cancel endpoint: cancelling the
task closes the connection.

Edits (providers.md section 13.6, read from huggingface_hub ``InferenceClient.image_to_image``
and ``_providers/hf_inference.py``): the ``image-to-image`` task, on ``img2img_model`` (else
``model``), is the same ``POST {url}/models/{model}`` with ``{"inputs": <the image as plain
base64>, "parameters": {prompt, negative_prompt, num_inference_steps, guidance_scale,
target_size: {width, height}, seed, strength}}`` (the client sends JSON whenever a parameter
is given) and answers the image's bytes. The task has no mask, so ``inpaint`` is not among
the capabilities (the router sends inpainting elsewhere). ``strength`` and ``seed`` are not
in the task's published parameters: they ride as extra parameters (``**kwargs`` in the
client), sent only when set, which diffusers-backed models take (unverified per model). One
input image per request; more is refused (InvalidRequest naming images).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import Field

from imagegate.errors import (
    AuthError,
    InvalidRequest,
    ProtocolError,
    ProviderError,
    QuotaExceeded,
    Unavailable,
)
from imagegate.images import to_png
from imagegate.providers.base import (
    Deadline,
    Progress,
    ProgressCallback,
    read_secret,
)
from imagegate.providers.edits import b64, init_image, require
from imagegate.providers.local import SAMPLERS
from imagegate.providers.remote import HostedAPIConfig, RemoteProvider
from imagegate.request import GeneratedImage, ImageRequest
from imagegate.transport import Response, raise_for_status

__all__ = ["DEFAULT_URL", "SCHEDULERS", "HFInferenceConfig", "HFInferenceProvider"]

DEFAULT_URL = "https://router.huggingface.co/hf-inference"
DEFAULT_HUB_URL = "https://huggingface.co"

SCHEDULERS: dict[str, str] = {name: cls for name, (cls, extra) in SAMPLERS.items() if not extra}
"""A1111 sampler name -> the diffusers scheduler class sent as ``scheduler`` (no variants:
a Karras or SDE flavour needs scheduler options the API does not take)."""


class HFInferenceConfig(HostedAPIConfig):
    """Settings of the hf-inference route; ``model`` is a Hub id or an endpoint URL."""

    type: Literal["hf-inference"] = Field(
        default="hf-inference", description="Hugging Face's hf-inference provider."
    )
    url: str | None = Field(
        default=DEFAULT_URL, description="The inference API's base URL (the model id is appended)."
    )
    model: str = Field(
        min_length=1,
        description="A Hub model id, or an http(s) endpoint URL posted to directly (required).",
    )
    token_env: str | None = Field(
        default="HF_TOKEN",
        description="The environment variable holding the Hugging Face token; none = no token.",
    )
    wait_for_model: bool = Field(
        default=False,
        description="Send x-wait-for-model; false = a loading model is Unavailable with its "
        "estimated time as Retry-After.",
    )
    img2img_model: str | None = Field(
        default=None,
        min_length=1,
        description="The Hub model id (or endpoint URL) of image-to-image requests; none = "
        "`model`.",
    )
    hub_url: str = Field(
        default=DEFAULT_HUB_URL, description="The Hub the probe reads the model's status from."
    )


class HFInferenceProvider(RemoteProvider):
    """Text to image through Hugging Face's hf-inference provider: one call per image."""

    type = "hf-inference"
    Config = HFInferenceConfig
    config: HFInferenceConfig
    key_setting = "token_env"
    describes_key = False
    capabilities = frozenset({"txt2img", "img2img"})

    # -- public surface ------------------------------------------------------------------

    def endpoint(self) -> str | None:
        """Where images are made: the model's URL on the route (or the endpoint URL)."""
        return self._model_url(self.config.model)

    async def generate(
        self, request: ImageRequest, deadline: Deadline, progress: ProgressCallback | None
    ) -> list[GeneratedImage]:
        """Make ``request.n`` images, one call each, seeds counting up from the first."""
        parameters = self._parameters(request)
        token = self._token()
        url = self._model_url(request.model or self.config.model)
        inputs: str = request.prompt
        if require(self.name, self.capabilities, request) == "img2img":
            url = self._model_url(request.model or self.config.img2img_model or self.config.model)
            inputs, parameters = _image_to_image(request, parameters)
        headers = {"authorization": f"Bearer {token}", "accept": "image/png"}
        if self.config.wait_for_model:
            headers["x-wait-for-model"] = "true"
        images: list[GeneratedImage] = []
        for i, this_seed in enumerate(request.seeds()):
            body = {"inputs": inputs, "parameters": {**parameters, "seed": this_seed}}
            resp = await self._http(token).request(
                "POST", url, deadline=deadline, json=body, headers=headers
            )
            if not resp.ok:
                raise _map_error(self.name, resp)
            if not resp.content_type.startswith("image/"):
                raise _map_error(self.name, resp, broken="an image")
            png, width, height = await self._decode(resp)
            images.append(GeneratedImage(png=png, width=width, height=height, seed=this_seed))
            if progress is not None:
                progress(Progress(i + 1, request.n))
        return images

    async def probe(self, deadline: Deadline) -> str | None:
        """The Hub's status of the model, with the token: ``GET /api/models/{model}``."""
        token = self._token()
        model = self.config.model
        if model.startswith(("http://", "https://")):
            return "an Inference Endpoint URL (no Hub status to read)"
        hub = self.config.hub_url.rstrip("/")
        resp = await self._http(token).request(
            "GET",
            f"{hub}/api/models/{model}",
            deadline=deadline,
            params={"expand": ["inference", "inferenceProviderMapping"]},
            headers={"authorization": f"Bearer {token}"},
        )
        info = self._json(resp)
        mapping = info.get("inferenceProviderMapping") if isinstance(info, dict) else None
        if isinstance(mapping, dict) and mapping and "hf-inference" not in mapping:
            others = ", ".join(sorted(mapping))
            raise Unavailable(
                f"{model} is not served by hf-inference (only by: {others}); pick a model "
                "that hf-inference serves",
                provider=self.name,
                retry_after=300.0,
            )
        status = info.get("inference") if isinstance(info, dict) else None
        return f"{model}: {status or 'status unknown'}"

    def describe(self) -> dict[str, Any]:
        """Name, type, model, paid, and the model's URL (never the token)."""
        info = super().describe()
        info.update(url=self.endpoint(), wait_for_model=self.config.wait_for_model)
        return info

    # -- helpers ---------------------------------------------------------------------------

    def _parameters(self, request: ImageRequest) -> dict[str, Any]:
        """The request's fields as the task's ``parameters`` (the seed is added per call)."""
        scheduler = None
        if request.sampler is not None:
            scheduler = SCHEDULERS.get(request.sampler)
            if scheduler is None:
                allowed = ", ".join(SCHEDULERS)
                raise InvalidRequest(
                    f"sampler: hf-inference takes a plain scheduler, not {request.sampler!r}; "
                    f"use one of: {allowed}",
                    field="sampler",
                    limit=f"one of: {allowed}",
                    provider=self.name,
                )
        values = {
            "negative_prompt": request.negative_prompt or None,
            "width": request.width,
            "height": request.height,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance,
            "scheduler": scheduler,
        }
        return {key: value for key, value in values.items() if value is not None}

    def _model_url(self, model: str) -> str:
        if model.startswith(("http://", "https://")):
            return model
        return f"{(self.config.url or DEFAULT_URL).rstrip('/')}/models/{model}"

    def _token(self) -> str:
        secret = read_secret(self.config.token_env, provider=self.name, key="token_env")
        if secret is None:
            raise AuthError(
                "hf-inference needs a Hugging Face token: set token_env to the variable that "
                "holds one (HF_TOKEN by default)",
                provider=self.name,
                stage="config",
            )
        return secret.get_secret_value()

    def _error(self, resp: Response) -> ProviderError:
        return _map_error(self.name, resp)

    async def _decode(self, resp: Response) -> tuple[bytes, int, int]:
        try:
            return await asyncio.to_thread(to_png, resp.content)
        except (OSError, ValueError) as exc:
            raise _map_error(self.name, resp, broken="a readable image") from exc


def _image_to_image(
    request: ImageRequest, parameters: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The image-to-image task's ``inputs`` (plain base64) and ``parameters``."""
    params = {k: v for k, v in parameters.items() if k not in ("width", "height")}
    params["prompt"] = request.prompt
    if request.width is not None and request.height is not None:
        params["target_size"] = {"width": request.width, "height": request.height}
    if request.strength is not None:
        params["strength"] = request.strength
    return b64(init_image(request).data), params


def _map_error(provider: str, resp: Response, broken: str | None = None) -> ProviderError:
    """The one place where the service's answers become the error tree.

    ``resp`` not 2xx: by status. ``broken``: a 2xx answer that was not what it should be.
    """
    where = f"{resp.timings.host}:{resp.timings.port}"
    kw: dict[str, Any] = {"provider": provider, "elapsed_s": round(resp.timings.total_s, 3)}
    if broken is not None:
        return ProtocolError(
            f"{where} answered {resp.status} with {resp.content_type or 'no content type'}, "
            f"not {broken} ({resp.snippet()!r}); check url and model",
            stage="read",
            **kw,
        )
    body = _json_or_none(resp)
    message = str(body.get("error") or "") if isinstance(body, dict) else ""
    if resp.status == 503:
        estimated = body.get("estimated_time") if isinstance(body, dict) else None
        loading = "loading" in message.lower() or isinstance(estimated, int | float)
        wait = float(estimated) if isinstance(estimated, int | float) else None
        if loading:
            return Unavailable(
                f"{where}: the model is loading ({message or 'no message'}); routing elsewhere"
                + (f" for about {wait:.0f} s" if wait is not None else "")
                + ", or set wait_for_model = true to let the server hold the request",
                retry_after=wait,
                **kw,
            )
    if resp.status == 402:
        return QuotaExceeded(
            f"{where} answered 402 ({message or resp.snippet()}): the account's Inference "
            "Providers credits are spent; add credits or a PRO plan on huggingface.co",
            **kw,
        )
    if resp.status == 404:
        return InvalidRequest(
            f"{where} answered 404 ({message or resp.snippet()}): hf-inference does not serve "
            "this model; check model",
            field="model",
            provider=provider,
            elapsed_s=kw["elapsed_s"],
        )
    if resp.status in (400, 422):
        return InvalidRequest(
            f"{where} refused the request ({resp.status}: {message or resp.snippet()}); "
            "change the field it names",
            provider=provider,
            elapsed_s=kw["elapsed_s"],
        )
    try:
        raise_for_status(resp, provider)
    except ProviderError as exc:
        return exc
    return ProtocolError(f"{where} answered {resp.status} unexpectedly", **kw)


def _json_or_none(resp: Response) -> Any:
    try:
        return resp.json()
    except ProviderError:
        return None
