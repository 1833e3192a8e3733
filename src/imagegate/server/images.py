"""Stored images: GET /v1/images/{id} (the PNG, metadata chunks included) and the history."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel

from imagegate.server.deps import BaseUrl, Ctx
from imagegate.server.errors import error_responses, openai_error
from imagegate.server.tenants import CallerDep, only_owner, sees

log = logging.getLogger("imagegate.server")

router = APIRouter(tags=["images"], responses=error_responses(400, 401))


class ImageView(BaseModel):
    """One stored image and where to fetch it."""

    id: str
    url: str
    job_id: str
    sha256: str
    width: int
    height: int
    seed: int
    provider: str
    model: str
    prompt: str
    created_at: datetime


class ImageList(BaseModel):
    """The newest images first."""

    data: list[ImageView]


@router.get(
    "/v1/images/{image_id}",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "description": "the PNG with its metadata chunks",
        },
        **error_responses(404),
    },
    summary="A stored PNG, with its A1111 parameters and imagegate provenance chunks",
)
async def get_image(image_id: str, ctx: Ctx, caller: CallerDep) -> Response:
    record = await ctx.backplane.store.image(image_id)
    store = ctx.gateway.store
    if record is not None and only_owner(caller) is not None:  # a tenant: its own only
        job = await ctx.backplane.store.get(record.job_id)
        if job is None or not sees(caller, job.owner):
            record = None
    if record is None or store is None:
        return openai_error(404, "not_found_error", f"no image {image_id!r}", param="id")
    headers = {
        "x-imagegate-provider": record.provider,
        "x-imagegate-job": record.job_id,
        "cache-control": "private, max-age=31536000, immutable",
    }
    try:
        data = await store.images.read(record.sha256)
    except FileNotFoundError:
        return _missing(image_id)
    if not data:
        return _missing(image_id)
    actual = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    if actual != record.sha256:
        log.error(
            "image %s (job %s) fails its integrity check: stored sha256 %s, bytes hash to %s",
            image_id,
            record.job_id,
            record.sha256,
            actual,
        )
        return openai_error(
            500,
            "server_error",
            f"the stored file of image {image_id!r} is corrupted: its bytes no longer match "
            f"its sha256 {record.sha256}; not served",
            param="id",
            code="image_corrupted",
        )
    return Response(data, media_type="image/png", headers=headers)


def _missing(image_id: str) -> Response:
    return openai_error(
        404, "not_found_error", f"the file of image {image_id!r} is missing", param="id"
    )


@router.get("/v1/images", response_model=ImageList, summary="Recent images, newest first")
async def list_images(
    ctx: Ctx, base: BaseUrl, caller: CallerDep, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> ImageList:
    records = await ctx.backplane.store.list_images(limit=limit, owner=only_owner(caller))
    return ImageList(
        data=[
            ImageView(url=ctx.image_url(base, r.id), **r.model_dump(exclude={"path"}))
            for r in records
        ]
    )
