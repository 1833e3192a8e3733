"""Any OpenAI-compatible images API (``type = "openai"``): OpenAI itself, or a compatible server.

One ``POST {url}/images/generations`` per attempt, JSON in and out; ``size`` is sent as
``WxH`` and ``n`` as asked. The answer carries each image as ``b64_json`` or, with
``response_format = "url"``, as a link that is downloaded within the same deadline through
the same transport (the key is sent only to the API's own host, never to a storage host).
Images that are not PNG (jpeg, webp) are re-encoded to PNG.

Seeds: OpenAI's API has no seed. With ``extensions = true`` (for imagegate's own server and
other compatible servers that accept them) the body also carries ``seed``, ``negative_prompt``,
``steps``, ``guidance`` and ``sampler``; the seed sent (random when the request has none) is
reported, image *i* getting seed + i, unless the answer names each image's ``seed``. Without
extensions the seed is not honoured: each image reports the request's seed, or 0 when it had
none, and ``describe()`` says ``"seeds": "not honoured"``.

OpenAI's error body is ``{"error": {"message", "type", "param", "code"}}``. ``_map_error``
turns it into the tree: 400 ``content_policy_violation`` / ``moderation_blocked`` ->
ContentFiltered; other 400, 404, 422 -> InvalidRequest naming ``param``; 401, 403 -> AuthError;
429 ``insufficient_quota`` -> QuotaExceeded, other 429 -> RateLimited (``retry-after-ms`` or
``retry-after``); 503 -> Unavailable; other 5xx -> UpstreamError; a malformed answer ->
ProtocolError. There is no progress and no cancel endpoint: cancelling the task drops the
connection.

Edits (providers.md section 13.1, read from openai-python 3.3.1 ``Images.edit`` /
``create_variation`` and the OpenAPI ``CreateImageEditRequest``): ``POST {url}/images/edits``
as multipart/form-data, one file part ``image`` for one input image and one ``image[]`` part
per image for several (up to 16, GPT image models), each with a file name and its real content
type (OpenAI refuses ``application/octet-stream`` with 400 ``unsupported_file_mimetype``);
``mask`` is a PNG whose fully transparent pixels are edited, so the internal mask (white =
edit) is sent with alpha = 255 - L; the other fields are form fields. OpenAI has no
strength: ``strength`` (and the other extension fields) are sent only with ``extensions``.
``POST {url}/images/variations`` (one ``image`` part, square PNG, dall-e-2 only, no prompt)
serves ``variations``. dall-e-2 takes PNG only: images are re-encoded for it. Capabilities
follow the configured model: dall-e-3 makes no edits; dall-e-2 inpaints (without a mask it
wants an image that is itself transparent, so it declares no img2img) and makes variations;
GPT image models do img2img and inpaint, not variations; a compatible server with no model
named declares all three.
"""

from __future__ import annotations

import binascii
from typing import Any, Literal

import httpx
import pybase64
from PIL import UnidentifiedImageError
from pydantic import Field

from imagegate.errors import (
    AuthError,
    ContentFiltered,
    InvalidRequest,
    ProtocolError,
    ProviderError,
    QuotaExceeded,
    RateLimited,
)
from imagegate.images import to_png
from imagegate.providers.base import (
    Deadline,
    ProgressCallback,
    ProviderConfig,
)
from imagegate.providers.edits import alpha_mask_png, as_png, filename, require
from imagegate.providers.remote import HostedAPIConfig, RemoteProvider
from imagegate.request import GeneratedImage, ImageRequest, InputImage, seed_series
from imagegate.transport import (
    Response,
    Transport,
    parse_retry_after,
    protocol_error,
    raise_for_status,
    redact,
)

__all__ = ["OpenAIConfig", "OpenAIProvider"]

_FILTERED_CODES = frozenset({"content_policy_violation", "moderation_blocked"})
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})
_EXTENSION_FIELDS = ("negative_prompt", "steps", "guidance", "sampler")
_ALWAYS_B64_MODELS = ("gpt-image", "chatgpt-image")  # refuse response_format, answer b64


class OpenAIConfig(HostedAPIConfig):
    """Settings of an OpenAI-compatible images API."""

    type: Literal["openai"] = Field(
        default="openai", description="Any OpenAI-compatible images API."
    )
    url: str | None = Field(
        default="https://api.openai.com/v1",
        min_length=1,
        description="The API's base URL, up to and including /v1.",
    )
    api_key_env: str | None = Field(
        default="OPENAI_API_KEY",
        description="The environment variable holding the key (sent as a Bearer token); none = "
        "no key.",
    )
    model: str | None = Field(
        default=None,
        description="The model to ask for; none = the server's default (dall-e-2 at OpenAI).",
    )
    response_format: Literal["b64_json", "url"] = Field(
        default="b64_json",
        description="b64_json = images in the answer; url = links fetched within the deadline.",
    )
    extensions: bool = Field(
        default=False,
        description="Send imagegate's extension fields (seed, negative_prompt, steps, "
        "guidance, sampler).",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="More body fields sent as they are (quality, style, moderation, ...).",
    )


class OpenAIProvider(RemoteProvider):
    """An OpenAI-compatible ``/images/generations`` endpoint."""

    type = "openai"
    Config = OpenAIConfig
    config: OpenAIConfig
    describes_key = False
    json_any_content_type = True  # compatible servers are loose about the content type
    capabilities = frozenset({"txt2img", "img2img", "inpaint", "variations"})

    def __init__(self, name: str, config: ProviderConfig) -> None:
        super().__init__(name, config)
        # What the configured model can do (an instance value: it depends on the config).
        setattr(self, "capabilities", _capabilities(self.config.model))  # noqa: B010

    # ------------------------------------------------------------------ protocol

    async def generate(
        self, request: ImageRequest, deadline: Deadline, progress: ProgressCallback | None
    ) -> list[GeneratedImage]:
        """One generation request; ``url`` answers are downloaded before the deadline."""
        transport, headers = self._connect()
        seed = request.seed
        body: dict[str, Any] = {**self.config.extra_body, "prompt": request.prompt, "n": request.n}
        model = request.model or self.config.model
        if model:
            body["model"] = model
        size = _size(request, self.name)
        if size:
            body["size"] = size
        if not str(model or "").startswith(_ALWAYS_B64_MODELS):
            body.setdefault("response_format", self.config.response_format)
        if self.config.extensions:
            seed = request.seeds()[0]
            body["seed"] = seed
            for key in _EXTENSION_FIELDS:
                value = getattr(request, key)
                if value not in (None, ""):
                    body[key] = value
            if request.images and request.strength is not None:
                body["strength"] = request.strength
        most = 1 if request.variation else _max_images(model)
        task = require(self.name, self.capabilities, request, max_images=most)
        if task == "txt2img":
            resp = await transport.request(
                "POST", "images/generations", deadline=deadline, json=body, headers=headers
            )
        else:
            path, form, files = _edit_parts(task, request, body, str(model or ""))
            resp = await transport.request(
                "POST", path, deadline=deadline, data=form, files=files, headers=headers
            )
        payload = self._json(resp)
        if deadline.control is not None and isinstance(payload, dict):
            deadline.control.usage = token_usage(payload.get("usage"))
        items = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(items, list) or len(items) < request.n:
            count = len(items) if isinstance(items, list) else "no"
            raise self._protocol(resp, f"{count} images in 'data' where {request.n} were asked")
        images = []
        for i, item in enumerate(items[: request.n]):
            data = await self._image_bytes(item, deadline, resp)
            reported = item.get("seed") if isinstance(item, dict) else None
            if isinstance(reported, int) and not isinstance(reported, bool):
                image_seed = reported
            elif self.config.extensions and seed is not None:
                image_seed = seed_series(seed, request.n)[i]
            else:
                image_seed = seed if seed is not None else 0
            images.append(_to_png(data, image_seed, resp, self.name))
        return images

    def effective_params(self, request: ImageRequest) -> dict[str, Any]:
        """Steps, sampler and guidance reach the server only as extensions."""
        if self.config.extensions:
            return super().effective_params(request)
        return {"steps": None, "sampler": None, "guidance": None}

    async def probe(self, deadline: Deadline) -> str | None:
        """``GET {url}/models``: the key is accepted and the API answers; "N models"."""
        transport, headers = self._connect()
        resp = await transport.request("GET", "models", deadline=deadline, headers=headers)
        payload = self._json(resp)
        models = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(models, list):
            raise self._protocol(resp, "no 'data' list in the model list")
        return f"{len(models)} models"

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(
            response_format=self.config.response_format,
            seeds="sent as an extension" if self.config.extensions else "not honoured",
        )
        return info

    # ------------------------------------------------------------------ helpers

    def _connect(self) -> tuple[Transport, dict[str, str]]:
        """The transport, and the Authorization header with the key read now."""
        secret = self._read_key()
        return self._http(secret), ({"authorization": f"Bearer {secret}"} if secret else {})

    def _error(self, resp: Response) -> ProviderError:
        return _map_error(resp, self.name)

    def _protocol(self, resp: Response, what: str) -> ProtocolError:
        fix = (
            "the url may not be an OpenAI-compatible images API: check the provider's url and model"
        )
        return protocol_error(resp, self.name, what, fix)

    async def _image_bytes(self, item: Any, deadline: Deadline, resp: Response) -> bytes:
        """The image of one ``data`` entry: decoded base64, or downloaded from its url."""
        if not isinstance(item, dict):
            raise self._protocol(resp, "an entry of 'data' is not an object")
        b64 = item.get("b64_json")
        if isinstance(b64, str) and b64:
            if "," in b64:  # a data URL: the base64 follows the first comma
                b64 = b64.split(",", 1)[-1]
            try:
                return pybase64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                raise self._protocol(resp, "'b64_json' is not valid base64") from None
        url = item.get("url")
        if not isinstance(url, str) or not url:
            raise self._protocol(resp, "an image has neither 'b64_json' nor 'url'")
        transport, headers = self._connect()
        target = httpx.URL(resp.url).join(url)
        api = httpx.URL(resp.url)
        same_origin = (target.scheme, target.host, target.port) == (api.scheme, api.host, api.port)
        download = await transport.request(
            "GET", str(target), deadline=deadline, headers=headers if same_origin else None
        )
        if not download.ok:
            raise _map_error(download, self.name)
        return download.content


def token_usage(usage: Any) -> dict[str, int] | None:
    """The token counts of an Images API ``usage`` object (``input_tokens``, ``output_tokens``,
    ``total_tokens`` and the ``*_details`` breakdowns, flattened as ``input_tokens_details.
    image_tokens``); None when the upstream sent none (DALL-E models and most compatible
    servers do not)."""
    if not isinstance(usage, dict):
        return None
    counts: dict[str, int] = {}
    for key, value in usage.items():
        if isinstance(value, dict):
            for sub, count in value.items():
                if isinstance(count, int) and not isinstance(count, bool):
                    counts[f"{key}.{sub}"] = count
        elif isinstance(value, int) and not isinstance(value, bool):
            counts[str(key)] = value
    return counts or None


def _capabilities(model: str | None) -> frozenset[str]:
    """What ``model`` can do at OpenAI; everything when none is named (a compatible server)."""
    name = (model or "").lower()
    if name.startswith("dall-e-3"):
        return frozenset({"txt2img"})
    if name.startswith("dall-e-2"):
        return frozenset({"txt2img", "inpaint", "variations"})
    if name.startswith(_ALWAYS_B64_MODELS):
        return frozenset({"txt2img", "img2img", "inpaint"})
    return frozenset({"txt2img", "img2img", "inpaint", "variations"})


def _max_images(model: str | None) -> int:
    """Input images one edit takes: 1 for dall-e-2 (and variations), 16 for GPT image models."""
    return 1 if (model or "").lower().startswith("dall-e") else 16


_FilePart = tuple[str, tuple[str, bytes, str]]


def _edit_parts(
    task: str, request: ImageRequest, body: dict[str, Any], model: str
) -> tuple[str, dict[str, str], list[_FilePart]]:
    """(path, form fields, file parts) of an edit or a variation, as openai-python sends them."""
    png_only = model.startswith("dall-e-2") or task == "variations"

    def part(name: str, image: InputImage, stem: str) -> _FilePart:
        if png_only or image.mime not in ("image/png", "image/jpeg", "image/webp"):
            return name, (f"{stem}-{image.sha256[:16]}.png", as_png(image), "image/png")
        return name, (filename(image, stem), image.data, image.mime)

    skip = ("prompt", "negative_prompt") if task == "variations" else ()  # no prompt there
    form = {
        key: _form_value(value)
        for key, value in body.items()
        if value is not None and not isinstance(value, dict | list) and key not in skip
    }
    if task == "variations":
        return "images/variations", form, [part("image", request.images[0], "image")]
    name = "image" if len(request.images) == 1 else "image[]"
    files = [part(name, image, f"image{i}") for i, image in enumerate(request.images)]
    if request.mask is not None:
        files.append(("mask", ("mask.png", alpha_mask_png(request.mask), "image/png")))
    return "images/edits", form, files


def _form_value(value: Any) -> str:
    """A form field's text as openai-python writes it: true/false, numbers with str()."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _size(request: ImageRequest, provider: str) -> str | None:
    """``WxH`` from the request; None when it names neither side."""
    if request.width is None and request.height is None:
        return None
    if request.width is None or request.height is None:
        missing = "width" if request.width is None else "height"
        raise InvalidRequest(
            f"{missing}: an OpenAI images API takes a size as WIDTHxHEIGHT, so give both "
            "width and height, or neither for the server's default",
            field=missing,
            limit="both width and height, or neither",
            provider=provider,
        )
    return f"{request.width}x{request.height}"


def _to_png(data: bytes, seed: int, resp: Response, provider: str) -> GeneratedImage:
    """One image as PNG (re-encoded when the server sent jpeg or webp)."""
    try:
        png, width, height = to_png(data, decode_png=False)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        host = f"{resp.timings.host}:{resp.timings.port}"
        raise ProtocolError(
            f"{host} sent an image that could not be read ({type(exc).__name__}, "
            f"{len(data)} bytes); the server or a proxy garbled it: try again, and check the "
            "server",
            provider=provider,
            stage="read",
        ) from exc
    return GeneratedImage(png=png, width=width, height=height, seed=seed)


def _map_error(resp: Response, provider: str) -> ProviderError:
    """The one place an OpenAI error answer becomes an error of the tree."""
    error: dict[str, Any] = {}
    try:
        body = resp.json()
    except ProtocolError:
        body = None
    if isinstance(body, dict):
        raw = body.get("error")
        if isinstance(raw, dict):
            error = raw
        elif isinstance(raw, str):
            error = {"message": raw}
        elif isinstance(body.get("detail"), str):
            error = {"message": body["detail"]}
    code = str(error.get("code") or "")
    param = error.get("param") if isinstance(error.get("param"), str) else None
    message = redact(str(error.get("message") or resp.snippet() or "no message"), resp.secrets)
    host = f"{resp.timings.host}:{resp.timings.port}"
    said = f"{host} answered {resp.status}" + (f" ({code})" if code else "") + f": {message}"
    kw: dict[str, Any] = {"provider": provider, "elapsed_s": round(resp.timings.total_s, 3)}
    status = resp.status
    if status == 400 and code in _FILTERED_CODES:
        return ContentFiltered(
            f"{said}; the provider's safety system refused the prompt: change the prompt", **kw
        )
    if status in (400, 404, 422) and error:
        field = param or ("model" if "model" in code else None)
        fix = f"change {field} and try again" if field else "fix the request and try again"
        if status == 404 and field is None:
            fix = "check that the provider's url ends with the API's base (such as /v1)"
            field = "url"
        return InvalidRequest(f"{said}; {fix}", field=field, **kw)
    if status in (401, 403):
        return AuthError(
            f"{said}; the key was refused: check the environment variable that api_key_env "
            "names, and the key's access to this model",
            **kw,
        )
    if status == 429:
        if code in _QUOTA_CODES or error.get("type") in _QUOTA_CODES:
            return QuotaExceeded(
                f"{said}; the account is out of quota: check the plan and billing", **kw
            )
        wait = _retry_after(resp)
        hint = f" (retry after {wait:g} s)" if wait is not None else ""
        return RateLimited(
            f"{said}{hint}; slow down, or lower the provider's concurrency",
            retry_after=wait,
            **kw,
        )
    try:
        raise_for_status(resp, provider)
    except ProviderError as exc:
        if error:
            exc.message = f"{said}; {exc.message.rsplit('; ', 1)[-1]}"
        return exc
    return ProtocolError(f"{said}; unexpected", **kw)  # pragma: no cover - only for non-2xx


def _retry_after(resp: Response) -> float | None:
    """Seconds to wait: OpenAI's ``retry-after-ms`` first, then ``retry-after``."""
    millis = resp.headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    return parse_retry_after(resp.headers.get("retry-after"))
