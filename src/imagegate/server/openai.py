"""The OpenAI images API: POST /v1/images/generations and GET /v1/models.

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
from pydantic import BaseModel, ConfigDict, Field

from imagegate.errors import InvalidRequest
from imagegate.request import MAX_N, MAX_PROMPT_CHARS, ImageRequest, parse_size
from imagegate.server.deps import Ctx, ServerContext, base_url
from imagegate.server.errors import error_responses
from imagegate.server.jobs import run_to_end
from imagegate.server.tenants import CallerDep

router = APIRouter(
    tags=["openai"], responses=error_responses(400, 401, 403, 409, 413, 429, 502, 503, 504)
)


class ImageGenerationBody(BaseModel):
    """OpenAI's image generation request, plus imagegate's extension fields."""

    model_config = ConfigDict(extra="forbid")

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


def to_image_request(ctx: ServerContext, body: ImageGenerationBody) -> ImageRequest:
    """The ImageRequest an OpenAI body asks for; InvalidRequest names the field."""
    fields: dict[str, Any] = {
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


@router.post(
    "/v1/images/generations",
    response_model=ImagesResponse,
    summary="Generate images (OpenAI images API)",
)
async def create_images(
    body: ImageGenerationBody, ctx: Ctx, http: Request, caller: CallerDep
) -> Response:
    request = to_image_request(ctx, body)
    result = await run_to_end(ctx, request, "openai", caller)
    created = int(time.time())
    if body.response_format == "url":
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
