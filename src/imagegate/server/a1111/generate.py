"""Run an A1111 request as a job and answer as A1111 does (txt2img and img2img alike)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pybase64

from imagegate.errors import Cancelled
from imagegate.request import ImageRequest, ImageResult
from imagegate.server.a1111 import answers
from imagegate.server.a1111.models import Txt2ImgBody, Txt2ImgResponse
from imagegate.server.deps import ServerContext
from imagegate.server.jobs import run_to_end
from imagegate.server.tenants import Caller

__all__ = ["generate"]


async def generate(
    ctx: ServerContext, body: Txt2ImgBody, request: ImageRequest, caller: Caller | None
) -> Txt2ImgResponse:
    """Run ``request`` as an A1111 job and answer as A1111 does; an interrupted job answers
    200 with what was made so far (nothing, where its provider cannot stop early)."""
    started = datetime.now(UTC)
    interrupted = False
    try:
        result = await run_to_end(ctx, request, "a1111", caller)
    except Cancelled:
        interrupted = True
        result = ImageResult(
            images=[], provider="", model="", attempts=[], elapsed_s=0.0, request=request
        )
    info = answers.info_of(ctx, body, result, started_at=started, interrupted=interrupted)
    return Txt2ImgResponse(
        images=[pybase64.b64encode_as_string(image.png) for image in result.images],
        parameters=answers.parameters_of(body, result),
        info=json.dumps(info),
    )
