"""Stability AI (``type = "stability"``): the v2beta Stable Image generate endpoints.

One image is one synchronous call: ``POST /v2beta/stable-image/generate/{core|ultra|sd3}``
as ``multipart/form-data`` (even with no file), answered with the PNG bytes (``Accept:
image/*``, the vendor's default, with ``seed`` and ``finish-reason`` headers) or with JSON
(``accept = "json"``: ``{"image": b64, "seed", "finish_reason"}``).

The API takes an aspect ratio, not a size: a request's width and height become an
``aspect_ratio`` only when they reduce exactly to one of the nine allowed ratios; anything
else is refused naming the ratios, never rounded. The size of the image that comes back is
Stability's, and is reported as it is. Steps and sampler are not parameters of this API and
are ignored (``effective_params`` says so); guidance becomes ``cfg_scale`` on sd3 only.

Seeds: we always send one (a random one when the request has none) and report the seed
Stability answers. ``n > 1`` makes n calls (at most 4 at a time) seeded seed, seed+1, ...

Moderation comes two ways, both ContentFiltered: 403 ``content_moderation`` before
generating, and ``finish_reason = CONTENT_FILTERED`` after (a blurred, billed image).

Edits (providers.md section 13.4, from Stability's OpenAPI as vendored in tryAGI/StabilityAI
and ComfyUI's ``nodes_stability.py``): img2img is ``generate/sd3`` with ``mode =
image-to-image``, an ``image`` file part and ``strength`` (0 = the image as it is, 1 =
ignore it; required, 0.75 when the request has none), no ``aspect_ratio``; with ``model =
"ultra"`` it is ``generate/ultra`` with ``image`` and ``strength``; ``core`` takes no image,
so with ``core`` (the default) img2img runs on sd3's default model (sd3.5-large). Inpainting
is ``edit/inpaint`` with ``image`` and ``mask`` (white = full strength, black = none: the
internal mask as it is), ``prompt``, ``negative_prompt``, ``seed``, ``output_format``,
``style_preset``; it takes no strength and its ``grow_mask`` keeps Stability's default (5).
Each call makes one image of about 4 MP whatever the input's size (reported as it comes);
the whole request must stay under 10 MiB (413 ``payload_too_large``), every image side >= 64
px, inpainting's image 4,096 to 9,437,184 pixels. One input image per request; more is
refused (InvalidRequest naming images).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import re
from collections.abc import Coroutine, Iterable
from fractions import Fraction
from typing import Any, Literal, TypeVar

import pybase64
from pydantic import Field

from imagegate.errors import (
    AuthError,
    ContentFiltered,
    InvalidRequest,
    ProtocolError,
    ProviderError,
    QuotaExceeded,
    RateLimited,
    UpstreamError,
)
from imagegate.providers.base import (
    Deadline,
    Progress,
    ProgressCallback,
)
from imagegate.providers.edits import default_strength, filename, init_image, mask_png, require
from imagegate.providers.remote import HostedAPIConfig, RemoteProvider
from imagegate.request import GeneratedImage, ImageRequest
from imagegate.transport import (
    Response,
    expect_json,
    parse_retry_after,
    protocol_error,
    raise_for_status,
    redact,
)

__all__ = ["ASPECT_RATIOS", "MODELS", "StabilityConfig", "StabilityProvider"]

T = TypeVar("T")

ASPECT_RATIOS = ("16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")
"""The ``aspect_ratio`` values v2beta accepts."""

SD3_MODELS = ("sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium")
MODELS = ("core", "ultra", "sd3", *SD3_MODELS)
"""``model`` values: an endpoint, or an sd3 model (the sd3 endpoint with that ``model``)."""

StylePreset = Literal[
    "3d-model", "analog-film", "anime", "cinematic", "comic-book", "digital-art", "enhance",
    "fantasy-art", "isometric", "line-art", "low-poly", "modeling-compound", "neon-punk",
    "origami", "photographic", "pixel-art", "tile-texture",
]  # fmt: skip
Model = Literal["core", "ultra", "sd3", "sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium"]

DEFAULT_STRENGTH = 0.75  # img2img's strength when the request has none (A1111's default)
MAX_STABILITY_SEED = 4294967294
LOCKOUT_S = 60.0  # Stability's documented timeout after going over its rate limit
_PARALLEL = 4  # calls in flight at once for one request with n > 1
# Stability's form fields -> ImageRequest fields, for naming the field a 400 complains about.
_FIELDS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "aspect_ratio": "width",
    "seed": "seed",
    "cfg_scale": "guidance",
    "model": "model",
    "output_format": "output_format",
}


class StabilityConfig(HostedAPIConfig):
    """Settings of a Stability provider."""

    type: Literal["stability"] = Field(
        default="stability", description="Stability AI's v2beta Stable Image API."
    )
    url: str | None = Field(default="https://api.stability.ai", description="Stability's base URL.")
    api_key_env: str = Field(
        default="STABILITY_API_KEY", description="The environment variable holding the API key."
    )
    model: Model = Field(
        default="core",
        description="core, ultra, sd3 (Stability's default sd3 model), sd3.5-large, "
        "sd3.5-large-turbo or sd3.5-medium.",
    )
    style_preset: StylePreset | None = Field(
        default=None, description="One of Stability's style presets; none = no preset."
    )
    accept: Literal["image", "json"] = Field(
        default="image",
        description="How the image comes back: raw bytes (Accept: image/*) or base64 in JSON.",
    )
    guidance: float | None = Field(
        default=None,
        ge=1.0,
        le=10.0,
        description="sd3's cfg_scale when the request has no guidance (1-10); none = "
        "Stability's default.",
    )


class StabilityProvider(RemoteProvider):
    """Text to image with Stability's v2beta Stable Image API."""

    type = "stability"
    Config = StabilityConfig
    config: StabilityConfig
    capabilities = frozenset({"txt2img", "img2img", "inpaint"})

    # -- public surface ------------------------------------------------------------------

    async def generate(
        self, request: ImageRequest, deadline: Deadline, progress: ProgressCallback | None
    ) -> list[GeneratedImage]:
        """n calls, each one image; progress counts finished images."""
        model = self._model(request)
        task = require(self.name, self.capabilities, request)
        form = self._form(request, model)
        path = f"/v2beta/stable-image/generate/{model[0]}"
        uploads: dict[str, tuple[str, bytes, str]] = {}
        if task != "txt2img":
            path, form, uploads = _edit(task, request, model, form)
        headers = self._headers()
        seeds = request.seeds(low=1, high=MAX_STABILITY_SEED)  # 0 asks Stability for a random one
        gate = asyncio.Semaphore(_PARALLEL)
        done = 0

        async def one(index: int) -> GeneratedImage:
            nonlocal done
            async with gate:
                fields = {**form, "seed": str(seeds[index])}
                image = await self._call(path, fields, uploads, headers, deadline)
            done += 1
            if progress is not None:
                progress(Progress(done, request.n))
            return image

        return await _all(one(i) for i in range(request.n))

    async def probe(self, deadline: Deadline) -> str | None:
        """The account's credit balance (``GET /v1/user/balance``)."""
        resp = await self._http().request(
            "GET", "/v1/user/balance", deadline=deadline, headers=self._headers()
        )
        data = self._json(resp)
        credits = data.get("credits") if isinstance(data, dict) else None
        if not isinstance(credits, int | float):
            raise _protocol(resp, self.name, "the balance answer has no 'credits' number")
        if credits <= 0:
            raise QuotaExceeded(
                f"the Stability account has {credits:g} credits left; top it up",
                provider=self.name,
            )
        return f"{credits:g} credits"

    def effective_params(self, request: ImageRequest) -> dict[str, Any]:
        """No steps or sampler at this API; guidance only as sd3's cfg_scale."""
        guidance = None
        if self._model(request)[0] == "sd3":
            guidance = request.guidance if request.guidance is not None else self.config.guidance
        return {"steps": None, "sampler": None, "guidance": guidance}

    # -- the request ---------------------------------------------------------------------

    def _model(self, request: ImageRequest) -> tuple[str, str | None]:
        """(endpoint, sd3 model or None) for the request's model or the configured one."""
        name = request.model or self.config.model
        if name not in MODELS:
            raise InvalidRequest(
                f"model: Stability has no model {name!r} here; use one of: {', '.join(MODELS)}",
                field="model",
                limit=f"one of: {', '.join(MODELS)}",
                provider=self.name,
            )
        if name in SD3_MODELS:
            return "sd3", name
        return name, None

    def _form(self, request: ImageRequest, model: tuple[str, str | None]) -> dict[str, str]:
        endpoint, sd3_model = model
        form = {"prompt": request.prompt, "output_format": "png"}
        if request.negative_prompt:
            form["negative_prompt"] = request.negative_prompt
        ratio = self._aspect_ratio(request)
        if ratio is not None:
            form["aspect_ratio"] = ratio
        if self.config.style_preset is not None:
            form["style_preset"] = self.config.style_preset
        if sd3_model is not None:
            form["model"] = sd3_model
        if endpoint == "sd3":
            guidance = request.guidance if request.guidance is not None else self.config.guidance
            if guidance is not None and not 1.0 <= guidance <= 10.0:
                raise InvalidRequest(
                    f"guidance: Stability's sd3 takes a cfg_scale between 1 and 10; got "
                    f"{guidance:g}. Change guidance, or leave it out",
                    field="guidance",
                    limit="between 1 and 10",
                    provider=self.name,
                )
            if guidance is not None:
                form["cfg_scale"] = f"{guidance:g}"
        return form

    def _aspect_ratio(self, request: ImageRequest) -> str | None:
        """The allowed ratio width:height reduces to exactly; None when no size was asked."""
        width, height = request.width, request.height
        if width is None and height is None:
            return None
        allowed = ", ".join(ASPECT_RATIOS)
        if width is None or height is None:
            missing = "width" if width is None else "height"
            raise InvalidRequest(
                f"{missing}: Stability takes an aspect ratio, so give both width and height "
                f"(or neither, for 1:1); allowed ratios: {allowed}",
                field=missing,
                limit=f"width:height one of {allowed}",
                provider=self.name,
            )
        wanted = Fraction(width, height)
        for ratio in ASPECT_RATIOS:
            w, h = ratio.split(":")
            if Fraction(int(w), int(h)) == wanted:
                return ratio
        raise InvalidRequest(
            f"width: Stability takes an aspect ratio, and {width}x{height} is none of the "
            f"allowed ones: {allowed}. Pick a size with one of these ratios exactly (e.g. "
            "1024x1024 for 1:1, 1024x576 for 16:9, 832x1248 for 2:3), or route elsewhere",
            field="width",
            limit=f"width:height one of {allowed}",
            provider=self.name,
        )

    async def _call(
        self,
        path: str,
        fields: dict[str, str],
        uploads: dict[str, tuple[str, bytes, str]],
        headers: dict[str, str],
        deadline: Deadline,
    ) -> GeneratedImage:
        accept = "application/json" if self.config.accept == "json" else "image/*"
        # Every field as a multipart part without a filename: the API takes multipart only.
        parts: dict[str, Any] = {name: (None, value.encode()) for name, value in fields.items()}
        parts.update(uploads)
        resp = await self._http().request(
            "POST",
            path,
            deadline=deadline,
            files=parts,
            headers={**headers, "Accept": accept},
        )
        if not resp.ok:
            raise _map_error(resp, self.name)
        if resp.content_type == "application/json":
            data = expect_json(resp, self.name)
            if not isinstance(data, dict):
                raise _protocol(resp, self.name, "the JSON answer is not an object")
            finish, seed_value, image = data.get("finish_reason"), data.get("seed"), None
            with contextlib.suppress(binascii.Error, TypeError, ValueError):
                image = pybase64.b64decode(str(data.get("image")), validate=True)
        else:
            finish = resp.headers.get("finish-reason")
            seed_value, image = resp.headers.get("seed"), resp.content
        if finish == "CONTENT_FILTERED":
            raise ContentFiltered(
                "Stability generated the image but its filter flagged it (finish_reason "
                "CONTENT_FILTERED; the image is blurred, and billed); change the prompt",
                provider=self.name,
                elapsed_s=round(resp.timings.total_s, 3),
            )
        if not image or not image.startswith(b"\x89PNG\r\n\x1a\n") or image[12:16] != b"IHDR":
            raise _protocol(resp, self.name, "the answer is not a PNG image")
        return GeneratedImage(
            png=image,
            width=int.from_bytes(image[16:20], "big"),
            height=int.from_bytes(image[20:24], "big"),
            seed=_seed(seed_value, int(fields["seed"])),
        )

    # -- plumbing ------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key()}"}

    def _error(self, resp: Response) -> ProviderError:
        return _map_error(resp, self.name)


# --------------------------------------------------------------------------- helpers


def _edit(
    task: str, request: ImageRequest, model: tuple[str, str | None], form: dict[str, str]
) -> tuple[str, dict[str, str], dict[str, tuple[str, bytes, str]]]:
    """(path, form fields, file parts) of an img2img or inpaint call."""
    image = init_image(request)
    uploads: dict[str, tuple[str, bytes, str]] = {
        "image": (filename(image), image.data, image.mime)
    }
    fields = {k: v for k, v in form.items() if k != "aspect_ratio"}
    if task == "inpaint":
        uploads["mask"] = ("mask.png", mask_png(request), "image/png")
        fields = {k: v for k, v in fields.items() if k not in ("model", "cfg_scale")}
        return "/v2beta/stable-image/edit/inpaint", fields, uploads
    fields["strength"] = f"{default_strength(request, DEFAULT_STRENGTH):g}"
    if model[0] == "ultra":
        return "/v2beta/stable-image/generate/ultra", fields, uploads
    fields["mode"] = "image-to-image"
    return "/v2beta/stable-image/generate/sd3", fields, uploads


async def _all(jobs: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``jobs`` together; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(job) for job in jobs]
    except BaseExceptionGroup as group_error:
        raise group_error.exceptions[0] from None
    return [task.result() for task in tasks]


def _seed(value: Any, sent: int) -> int:
    """The seed Stability reports, else the one sent."""
    try:
        seed = int(str(value))
    except ValueError:
        return sent
    return seed if 0 <= seed <= MAX_STABILITY_SEED else sent


def _protocol(resp: Response, provider: str, what: str) -> ProtocolError:
    what = f"{what} ({resp.content_type or 'no content type'})"
    return protocol_error(resp, provider, what, "check the provider's url")


def _map_error(resp: Response, provider: str) -> ProviderError:
    """A non-2xx Stability answer as an error of the tree: the one place statuses are mapped.

    Bodies are ``{"id", "name", "errors": [str]}``. 400/413/422 -> InvalidRequest naming the
    field the first error names; 401 -> AuthError; 402 -> QuotaExceeded; 403
    ``content_moderation`` -> ContentFiltered, other 403 -> AuthError; 429 -> RateLimited
    (60 s, Stability's lockout, unless Retry-After says otherwise); 500 -> UpstreamError.
    """
    body: Any = None
    with contextlib.suppress(ProtocolError):
        body = resp.json()
    name = str(body.get("name") or "") if isinstance(body, dict) else ""
    errors = body.get("errors") if isinstance(body, dict) else None
    errors = errors if isinstance(errors, list) else []
    first = str(errors[0]) if errors else ""
    detail = redact("; ".join(str(e) for e in errors), resp.secrets)[:300]
    where = f"{resp.timings.host}:{resp.timings.port}"
    said = f"{where} answered {resp.status} {name}".rstrip()
    said += f" ({detail or resp.snippet()})"
    kw: dict[str, Any] = {"provider": provider, "elapsed_s": round(resp.timings.total_s, 3)}
    status = resp.status
    if status == 403 and name == "content_moderation":
        return ContentFiltered(f"{said}; Stability's moderation refused the prompt", **kw)
    if status in (401, 403):
        return AuthError(
            f"{said}; check the key in the variable the provider's api_key_env names", **kw
        )
    if status == 402:
        return QuotaExceeded(f"{said}; the account is out of credits: top it up", **kw)
    if status == 429:
        retry_after = parse_retry_after(resp.headers.get("retry-after"))
        return RateLimited(
            f"{said}; over Stability's 150 requests per 10 s: it locks the key out for 60 s",
            retry_after=retry_after if retry_after is not None else LOCKOUT_S,
            **kw,
        )
    if status in (400, 413, 422):
        match = re.match(r"\s*([a-z_]+)\s*:", first)
        field = _FIELDS.get(match.group(1)) if match else None
        return InvalidRequest(
            f"{said}; fix {field or 'the request'} and try again", field=field, **kw
        )
    if status == 500:
        return UpstreamError(f"{said}; Stability failed: try again, or route elsewhere", **kw)
    try:
        raise_for_status(resp, provider)
    except ProviderError as exc:
        return exc
    return UpstreamError(f"{said}; try again", **kw)
