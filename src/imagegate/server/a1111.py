"""The AUTOMATIC1111 API subset that ``webuiapi`` and A1111 scripts use.

Checkpoints are the named routes and the configured providers: ``sd_model_checkpoint`` (POST
/sdapi/v1/options, or ``override_settings`` in one request) selects a route or pins a provider;
``route`` restores the default route.
txt2img runs as a job like any other and answers A1111's shape: base64 PNGs that carry the
``parameters`` chunk, the parsed request, and ``info`` as a JSON string.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import pybase64
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from imagegate.errors import InvalidRequest
from imagegate.providers.base import effective_params
from imagegate.request import MAX_N, ImageRequest, ImageResult
from imagegate.server.deps import Ctx, ServerContext
from imagegate.server.errors import A1111_RESPONSES
from imagegate.server.jobs import run_to_end
from imagegate.server.tenants import CallerDep, only_owner
from imagegate.store.pngmeta import imagegate_version, infotext

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"], responses=A1111_RESPONSES)

ROUTE_CHECKPOINT = "route"
SAMPLERS = (
    "Euler a", "Euler", "LMS", "LMS Karras", "Heun", "DPM2", "DPM2 a", "DPM++ 2M",
    "DPM++ 2M Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras", "DPM++ SDE", "DDIM", "PLMS",
    "UniPC", "LCM",
)  # fmt: skip


class Txt2ImgBody(BaseModel):
    """A1111's txt2img request; fields imagegate does not use are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None
    batch_size: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    n_iter: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    override_settings: dict[str, Any] = Field(default_factory=dict)


class Txt2ImgResponse(BaseModel):
    """A1111's answer: base64 PNGs, the parsed request, and ``info`` as a JSON string."""

    images: list[str]
    parameters: dict[str, Any]
    info: str


class SdModel(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    job: str = ""
    job_count: int
    job_timestamp: str
    job_no: int = 0
    sampling_step: int
    sampling_steps: int


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class ScriptsResponse(BaseModel):
    txt2img: list[str]
    img2img: list[str]


def _checkpoint(ctx: ServerContext, title: object) -> dict[str, str]:
    """What a checkpoint title selects: ``{"route": NAME}``, ``{"provider": NAME}`` or
    ``{}`` (the default route); InvalidRequest naming the allowed titles otherwise."""
    if title in (None, ""):
        return {}
    if not isinstance(title, str):
        allowed = ", ".join(
            [ROUTE_CHECKPOINT, *ctx.gateway.policies, *sorted(ctx.gateway.providers)]
        )
        raise InvalidRequest(
            f"sd_model_checkpoint: {title!r} is not a checkpoint here (allowed: {allowed})",
            field="sd_model_checkpoint",
            limit=f"one of {allowed}",
        )
    return ctx.gateway.select(title.split(" [", 1)[0], field="sd_model_checkpoint")


def _to_request(ctx: ServerContext, body: Txt2ImgBody) -> ImageRequest:
    selected = ctx.a1111_checkpoint
    if "sd_model_checkpoint" in body.override_settings:
        selected = _checkpoint(ctx, body.override_settings["sd_model_checkpoint"])
    n = body.batch_size * body.n_iter
    if n > MAX_N:
        raise InvalidRequest(
            f"batch_size: batch_size x n_iter must be at most {MAX_N}; got {n}",
            field="batch_size",
            limit=f"at most {MAX_N} images",
        )
    fields: dict[str, Any] = {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "seed": None if body.seed == -1 else body.seed,
        "sampler": body.sampler_name or body.sampler_index,
        "steps": body.steps,
        "guidance": body.cfg_scale,
        "width": body.width,
        "height": body.height,
        "n": n,
        **selected,
    }
    return ImageRequest.parse({k: v for k, v in fields.items() if v is not None})


def _info(ctx: ServerContext, body: Txt2ImgBody, result: ImageResult) -> dict[str, Any]:
    request = result.request
    effective = effective_params(ctx.gateway.providers.get(result.provider), request)
    steps, sampler, guidance = effective["steps"], effective["sampler"], effective["guidance"]
    images = result.images
    texts = [
        infotext(
            request,
            seed=image.seed,
            width=image.width,
            height=image.height,
            model=result.model,
            steps=steps,
            sampler=sampler,
            guidance=guidance,
        )
        for image in images
    ]
    first = images[0] if images else None
    return {
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * len(images),
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * len(images),
        "seed": first.seed if first else -1,
        "all_seeds": [image.seed for image in images],
        "subseed": -1,
        "all_subseeds": [-1] * len(images),
        "subseed_strength": 0,
        "width": first.width if first else body.width,
        "height": first.height if first else body.height,
        "sampler_name": sampler,
        "cfg_scale": guidance,
        "steps": steps,
        "batch_size": body.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": result.model,
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": None,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": texts,
        "styles": [],
        "job_timestamp": datetime.now(UTC).strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": f"imagegate {imagegate_version()}",
        "provider": result.provider,
        "job_id": result.job_id,
        "attempts": [attempt.model_dump(mode="json") for attempt in result.attempts],
    }


@router.post("/txt2img", response_model=Txt2ImgResponse, summary="Text to image (A1111)")
async def txt2img(body: Txt2ImgBody, ctx: Ctx, caller: CallerDep) -> Txt2ImgResponse:
    request = _to_request(ctx, body)
    result = await run_to_end(ctx, request, "a1111", caller)
    return Txt2ImgResponse(
        images=[pybase64.b64encode_as_string(image.png) for image in result.images],
        parameters=body.model_dump(),
        info=json.dumps(_info(ctx, body, result)),
    )


@router.get(
    "/sd-models", response_model=list[SdModel], summary="Checkpoints: the routes and providers"
)
async def sd_models(ctx: Ctx) -> list[SdModel]:
    routes = [
        SdModel(title=name, model_name=name, filename=f"route:{','.join(policy.route)}")
        for name, policy in ctx.gateway.policies.items()
    ]
    return routes + [
        SdModel(title=name, model_name=name, filename=provider.model)
        for name, provider in ctx.gateway.providers.items()
    ]


@router.get("/samplers", response_model=list[Sampler], summary="Sampler names")
async def samplers() -> list[Sampler]:
    return [Sampler(name=name, aliases=[], options={}) for name in SAMPLERS]


@router.get("/scripts", response_model=ScriptsResponse, summary="Scripts (none)")
async def scripts() -> ScriptsResponse:
    return ScriptsResponse(txt2img=[], img2img=[])


@router.get("/options", summary="Options; sd_model_checkpoint is the pinned provider")
async def get_options(ctx: Ctx) -> dict[str, Any]:
    return {
        **ctx.a1111_options,
        "sd_model_checkpoint": next(iter(ctx.a1111_checkpoint.values()), ROUTE_CHECKPOINT),
        "samples_format": "png",
    }


@router.post("/options", summary="Set options; sd_model_checkpoint pins a provider")
async def set_options(options: dict[str, Any], ctx: Ctx) -> dict[str, Any]:
    if "sd_model_checkpoint" in options:
        ctx.a1111_checkpoint = _checkpoint(ctx, options["sd_model_checkpoint"])
    ctx.a1111_options.update(
        {key: value for key, value in options.items() if key != "sd_model_checkpoint"}
    )
    return {}


@router.get("/progress", response_model=ProgressResponse, summary="Progress of the current job")
async def progress(ctx: Ctx, caller: CallerDep) -> ProgressResponse:
    """The caller's own running job (a managed key sees only its own; admins see all)."""
    counts = await ctx.backplane.store.counts()
    recent = await ctx.backplane.store.list_jobs(limit=20, owner=only_owner(caller))
    running = [job for job in recent if job.status == "running"]
    current = running[0] if running else None
    fraction = current.progress if current else 0.0
    eta = 0.0
    if current is not None and current.started_at is not None and 0 < fraction < 1:
        elapsed = (datetime.now(UTC) - current.started_at).total_seconds()
        eta = max(0.0, elapsed / fraction - elapsed)
    return ProgressResponse(
        progress=fraction,
        eta_relative=round(eta, 3),
        state=ProgressState(
            job=current.id if current else "",
            job_count=counts.get("queued", 0) + counts.get("running", 0),
            job_timestamp=(current.started_at or current.created_at).strftime("%Y%m%d%H%M%S")
            if current
            else "0",
            sampling_step=current.step or 0 if current else 0,
            sampling_steps=current.steps or 0 if current else 0,
        ),
        textinfo=None if current is None else f"{current.status} {current.id}",
    )


@router.post("/interrupt", summary="Stop the running A1111 jobs")
async def interrupt(ctx: Ctx, caller: CallerDep) -> dict[str, Any]:
    for job in await ctx.backplane.store.list_jobs(limit=50, owner=only_owner(caller)):
        if job.source == "a1111" and job.status in ("running", "queued"):
            await ctx.backplane.jobs.cancel(job.id)
    return {}


@router.post("/skip", summary="Same as interrupt")
async def skip(ctx: Ctx, caller: CallerDep) -> dict[str, Any]:
    return await interrupt(ctx, caller)
