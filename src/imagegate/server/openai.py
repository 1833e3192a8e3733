"""The OpenAI images API: POST /v1/images/generations, /edits and /variations, GET /v1/models.

Works with the official client unchanged. ``model`` names a route (``[routes.NAME]``, or
``route`` / ``default`` for the ``[gateway] route``), a provider (pins it) or a provider's
model. imagegate's own fields ride in the body (``extra_body`` in the client):
negative_prompt, seed, steps, guidance, sampler, scheduler, provider. The request runs as a job
like any other (history, progress, metrics) and the answer waits for it.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

import pybase64
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imagegate.errors import InvalidRequest
from imagegate.inputs import MAX_INPUT_BYTES, MAX_INPUT_IMAGES, InputImage, normalize_mask
from imagegate.request import (
    MAX_N,
    MAX_PROMPT_CHARS,
    ImageRequest,
    ImageResult,
    invalid_request_from,
    parse_size,
)
from imagegate.server.deps import Ctx, ServerContext, base_url, context_of
from imagegate.server.errors import error_responses
from imagegate.server.jobs import run_to_end
from imagegate.server.strictjson import DirectJsonRoute, StrictJsonRoute
from imagegate.server.tenants import CallerDep, caller_of

router = APIRouter(
    route_class=StrictJsonRoute,
    tags=["openai"],
    responses=error_responses(400, 401, 403, 409, 413, 429, 502, 503, 504),
)


class ImageGenerationBody(BaseModel):
    """OpenAI's image generation request, plus imagegate's extension fields. Strict: a number
    or boolean sent as a string (or one as the other) is refused, never converted."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
    model: str | None = Field(
        default=None, description="a route name ('default' or a [routes.NAME]), or a provider"
    )
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = 1
    size: str | None = Field(
        default=None,
        description="'WIDTHxHEIGHT' or 'auto'",
        json_schema_extra={"pattern": r"^(\d{1,5}x\d{1,5}|auto)$"},  # checked (and named) below
    )
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png"] | None = None
    quality: str | None = None
    style: str | None = None
    background: str | None = None
    moderation: str | None = None
    output_compression: int | None = None
    stream: Literal[False] | None = None
    partial_images: Literal[0] | None = None
    user: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    scheduler: str | None = None
    provider: str | None = None


class ImageData(BaseModel):
    """One image: base64 PNG or a URL of the stored image."""

    b64_json: str | None = None
    url: str | None = None


class ImagesResponse(BaseModel):
    """OpenAI's images response."""

    created: int
    data: list[ImageData]
    output_format: str = "png"


class ModelCard(BaseModel):
    """One model in OpenAI's list shape."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    """OpenAI's list of models: the route and each configured provider."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


def to_image_request(ctx: ServerContext, body: ImageGenerationBody, **inputs: Any) -> ImageRequest:
    """The ImageRequest an OpenAI body (and an edit's ``inputs``) asks for; InvalidRequest
    names the field."""
    fields: dict[str, Any] = {
        **inputs,
        "prompt": body.prompt,
        "n": body.n if body.n is not None else 1,
        "negative_prompt": body.negative_prompt,
        "seed": body.seed,
        "steps": body.steps,
        "guidance": body.guidance,
        "sampler": body.sampler,
        "scheduler": body.scheduler,
        "provider": body.provider,
    }
    if body.size is not None and body.size != "auto":
        fields |= parse_size(body.size)
    if body.model is not None:
        picked = ctx.gateway.select(body.model, field="model")
        provider = picked.get("provider")
        if body.provider is not None and provider is not None and body.provider != provider:
            raise InvalidRequest(
                f"provider: {body.provider!r} contradicts model {body.model!r}; send one",
                field="provider",
            )
        if body.provider is not None and "route" in picked:
            raise InvalidRequest(
                f"provider: pins one provider, and model {body.model!r} names a route; "
                "send one of them",
                field="provider",
            )
        fields.update(picked)
    try:
        return ImageRequest.parse({k: v for k, v in fields.items() if v is not None})
    except InvalidRequest as exc:
        if exc.field in ("width", "height"):
            exc.field = "size"
        raise


async def create_images(body: ImageGenerationBody, http: Request) -> Response:
    # the busiest route: the context and the caller are read here, not injected, and a valid
    # JSON body reaches it without FastAPI's dependency solving (DirectJsonRoute)
    ctx = context_of(http)
    request = to_image_request(ctx, body)
    result = await run_to_end(ctx, request, "openai", caller_of(http))
    return await images_response(ctx, http, result, body.response_format)


router.add_api_route(
    "/v1/images/generations",
    create_images,
    methods=["POST"],
    response_model=ImagesResponse,
    summary="Generate images (OpenAI images API)",
    route_class_override=DirectJsonRoute,
)


async def images_response(
    ctx: ServerContext, http: Request, result: ImageResult, response_format: str | None
) -> Response:
    """OpenAI's images answer for ``result``: base64 PNGs, or URLs of the stored images."""
    created = int(time.time())
    if response_format == "url":
        base = await base_url(http)  # only here: building it costs more than the rest
        data = [{"url": ctx.image_url(base, image.id or "")} for image in result.images]
        payload = json.dumps(
            {"created": created, "data": data, "output_format": "png"}, separators=(",", ":")
        ).encode()
    else:
        # base64 needs no JSON escaping: splice the encoded PNGs in rather than have
        # json.dumps scan tens of kilobytes per image
        images = b"},{".join(
            b'"b64_json":"' + pybase64.b64encode(image.png) + b'"' for image in result.images
        )
        payload = b'{"created":%d,"data":[{%b}],"output_format":"png"}' % (created, images)
    return Response(
        payload,
        media_type="application/json",
        headers={
            "x-imagegate-provider": result.provider,
            "x-imagegate-attempts": str(len(result.attempts)),
            "x-imagegate-job": result.job_id or "",
        },
    )


@router.get("/v1/models", response_model=ModelList, summary="The routes and the providers")
async def list_models(ctx: Ctx) -> ModelList:
    cards = [ModelCard(id="route", owned_by="imagegate")]
    cards += [ModelCard(id=name, owned_by="imagegate:route") for name in ctx.gateway.policies]
    cards += [
        ModelCard(id=name, owned_by=f"imagegate:{provider.type}")
        for name, provider in ctx.gateway.providers.items()
    ]
    return ModelList(data=cards)


# -- edits and variations (multipart, as the official client sends them) -----------------------

EDIT_FIELDS = frozenset(ImageGenerationBody.model_fields) - {"stream", "partial_images"}
"""The form fields an edit takes as an image generation's (the rest of OpenAI's edit fields,
``input_fidelity`` and the like, are accepted and not used)."""
IGNORED_EDIT_FIELDS = frozenset({"input_fidelity", "stream", "partial_images"})


@router.post(
    "/v1/images/edits",
    response_model=ImagesResponse,
    summary="Edit images (OpenAI images API: image or image[], optional mask)",
    openapi_extra={"requestBody": {"content": {"multipart/form-data": {}}}},
)
async def edit_images(ctx: Ctx, http: Request, caller: CallerDep) -> Response:
    """``image`` (or ``image[]``, up to 16) and an optional ``mask`` (transparent = edit,
    OpenAI's convention), ``prompt`` and the generation fields, imagegate's extensions
    (``strength`` among them) included."""
    form, images, mask = await _edit_form(http, masked=True)
    body = _form_body(form, ("strength", "mask_blur"))
    extra = {k: form[k] for k in ("strength", "mask_blur") if isinstance(form.get(k), str)}
    request = to_image_request(ctx, body, images=images, mask=mask, **extra)
    result = await run_to_end(ctx, request, "openai", caller)
    return await images_response(ctx, http, result, body.response_format)


@router.post(
    "/v1/images/variations",
    response_model=ImagesResponse,
    summary="Variations of an image (OpenAI images API)",
    openapi_extra={"requestBody": {"content": {"multipart/form-data": {}}}},
)
async def image_variations(ctx: Ctx, http: Request, caller: CallerDep) -> Response:
    """``image`` (one PNG), ``n``, ``size``, ``response_format``, ``model``."""
    form, images, _ = await _edit_form(http, masked=False)
    body = _form_body({**form, "prompt": form.get("prompt") or VARIATION_PROMPT}, ())
    request = to_image_request(ctx, body, images=images[:1], variation=True)
    result = await run_to_end(ctx, request, "openai", caller)
    return await images_response(ctx, http, result, body.response_format)


VARIATION_PROMPT = "a variation of the image"
"""The prompt a variation carries (OpenAI's variations take none; providers ignore it)."""


async def _edit_form(
    http: Request, *, masked: bool
) -> tuple[dict[str, Any], tuple[InputImage, ...], InputImage | None]:
    """The text fields, the input images and the mask (the internal form) of a multipart
    edit; InvalidRequest naming the field for anything that is not right."""
    if not http.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest(
            "image: an edit is sent as multipart/form-data with the image as a file part",
            field="image",
            limit="multipart/form-data",
        )
    async with http.form(max_files=MAX_INPUT_IMAGES + 1, max_part_size=MAX_INPUT_BYTES) as form:
        uploads = [*form.getlist("image"), *form.getlist("image[]")]
        files = [part for part in uploads if not isinstance(part, str)]
        if not files:
            raise InvalidRequest("image: required, as a file part", field="image", limit="1")
        if len(files) > MAX_INPUT_IMAGES:
            raise InvalidRequest(
                f"image: at most {MAX_INPUT_IMAGES} images; got {len(files)}",
                field="image",
                limit=f"at most {MAX_INPUT_IMAGES}",
            )
        images = tuple([InputImage.from_bytes(await p.read(), field="image") for p in files])
        mask = None
        raw_mask = form.get("mask")
        if masked and raw_mask is not None and not isinstance(raw_mask, str):
            given = InputImage.from_bytes(await raw_mask.read(), field="mask")
            mask = normalize_mask(given, images[0], convention="alpha-transparent")
        text = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    return text, images, mask


def _form_body(form: dict[str, Any], own: tuple[str, ...]) -> ImageGenerationBody:
    """The generation body of an edit's text fields; unknown ones are refused by name."""
    unknown = (
        set(form) - EDIT_FIELDS - IGNORED_EDIT_FIELDS - set(own) - {"image", "image[]", "mask"}
    )
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidRequest(f"{name}: is not a known field", field=name, limit="a known field")
    fields = {k: v for k, v in form.items() if k in EDIT_FIELDS and v != ""}
    try:
        return ImageGenerationBody.model_validate(fields, strict=False)  # form text is text
    except ValidationError as exc:
        raise invalid_request_from(exc) from None
