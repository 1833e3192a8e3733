"""The /sdapi/v1 routes: txt2img as a job like any other, and the lists A1111 clients read."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query

from imagegate.deadline import finish_early
from imagegate.server.a1111 import answers, catalog
from imagegate.server.a1111.generate import generate
from imagegate.server.a1111.img2img import Img2ImgBody, img2img
from imagegate.server.a1111.models import (
    ProgressResponse,
    ProgressState,
    Txt2ImgBody,
    Txt2ImgResponse,
    checkpoint,
    to_request,
)
from imagegate.server.deps import Ctx
from imagegate.server.errors import A1111_RESPONSES
from imagegate.server.strictjson import StrictJsonRoute
from imagegate.server.tenants import CallerDep, only_owner

router = APIRouter(
    route_class=StrictJsonRoute, prefix="/sdapi/v1", tags=["a1111"], responses=A1111_RESPONSES
)

_EMPTY_LISTS = (
    "sd-vae", "loras", "prompt-styles", "hypernetworks", "face-restorers", "realesrgan-models",
    "latent-upscale-modes", "script-info",
)  # fmt: skip


@router.post("/txt2img", response_model=Txt2ImgResponse, summary="Text to image (A1111)")
async def txt2img(body: Txt2ImgBody, ctx: Ctx, caller: CallerDep) -> Txt2ImgResponse:
    return await generate(ctx, body, to_request(ctx, body), caller)


@router.post(
    "/img2img", response_model=Txt2ImgResponse, summary="Image to image and inpainting (A1111)"
)
async def img2img_route(body: Img2ImgBody, ctx: Ctx, caller: CallerDep) -> Txt2ImgResponse:
    return await img2img(ctx, body, caller)


@router.get("/sd-models", summary="Checkpoints: the routes and providers")
async def sd_models(ctx: Ctx) -> list[dict[str, Any]]:
    return answers.checkpoints(ctx)


@router.post("/refresh-checkpoints", summary="Nothing to rescan: checkpoints are the config")
async def refresh_checkpoints() -> None:
    return None


@router.get("/samplers", summary="The samplers the selected checkpoint's providers run")
async def samplers(ctx: Ctx) -> list[dict[str, Any]]:
    return catalog.samplers(ctx)


@router.get("/schedulers", summary="The schedulers the selected checkpoint's providers run")
async def schedulers(ctx: Ctx) -> list[dict[str, Any]]:
    return catalog.schedulers(ctx)


@router.get("/upscalers", summary="Upscalers (none but A1111's 'None')")
async def upscalers() -> list[dict[str, Any]]:
    return catalog.upscalers()


def _empty_list() -> list[Any]:
    return []


for _name in _EMPTY_LISTS:
    router.add_api_route(
        f"/{_name}",
        _empty_list,
        methods=["GET"],
        summary=f"{_name} (none in imagegate)",
        operation_id=f"a1111_{_name.replace('-', '_')}",
    )


@router.get("/embeddings", summary="Embeddings (none)")
async def embeddings() -> dict[str, Any]:
    return {"loaded": {}, "skipped": {}}


@router.get("/scripts", summary="Scripts (none)")
async def scripts() -> dict[str, list[str]]:
    return {"txt2img": [], "img2img": []}


@router.get("/memory", summary="This host's memory")
async def memory() -> dict[str, Any]:
    return catalog.memory()


@router.get("/cmd-flags", summary="A1111's flags, as a server run with --api --nowebui")
async def cmd_flags(ctx: Ctx) -> dict[str, Any]:
    return catalog.cmd_flags(str(ctx.settings.data_dir))


@router.get("/options", summary="A1111's options; sd_model_checkpoint is the route or provider")
async def get_options(ctx: Ctx) -> dict[str, Any]:
    title = answers.checkpoint_title(ctx)
    entry = next((e for e in answers.checkpoints(ctx) if e["title"] == title), None)
    return {
        **catalog.default_options(),
        "sd_model_checkpoint": title,
        "sd_checkpoint_hash": entry["sha256"]
        if entry
        else answers.checkpoint_hash("route", title, ",".join(ctx.settings.gateway.route)),
        "samples_format": "png",
    }


@router.post("/options", summary="Set options; only sd_model_checkpoint is kept")
async def set_options(options: dict[str, Any], ctx: Ctx) -> None:
    """sd_model_checkpoint selects a route or pins a provider; other options are
    acknowledged and ignored, as A1111 ignores the ones it does not know."""
    if "sd_model_checkpoint" in options:
        ctx.a1111_checkpoint = checkpoint(ctx, options["sd_model_checkpoint"])


@router.get("/progress", response_model=ProgressResponse, summary="Progress of the current job")
async def progress(
    ctx: Ctx, caller: CallerDep, skip_current_image: bool = Query(default=False)
) -> ProgressResponse:
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


@router.post("/interrupt", summary="Stop the running A1111 jobs: they answer what they made")
async def interrupt(ctx: Ctx, caller: CallerDep) -> dict[str, Any]:
    """A running job whose provider can stop early (a1111, diffusers) ends with the image made
    so far; others, and queued ones, are cancelled (their txt2img answers no image)."""
    for job in await ctx.backplane.store.list_jobs(limit=50, owner=only_owner(caller)):
        if job.source != "a1111" or job.status not in ("running", "queued"):
            continue
        if job.status == "queued" or not finish_early(job.id):
            await ctx.backplane.jobs.cancel(job.id)
    return {}


@router.post("/skip", summary="Same as interrupt")
async def skip(ctx: Ctx, caller: CallerDep) -> dict[str, Any]:
    return await interrupt(ctx, caller)
