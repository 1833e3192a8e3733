"""A1111 1.10's request and answer bodies, with its field types and defaults.

``Txt2ImgBody`` holds every field A1111's ``StableDiffusionTxt2ImgProcessingAPI`` has, with
A1111's defaults (CFG 7, ``sampler_index`` "Euler", ``override_settings`` null...), so the
``parameters`` echo has A1111's 55 keys. Fields imagegate cannot act on (hires fix, scripts,
face restoration, tiling, variation seeds) are accepted and named in ``info`` as ignored.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from imagegate.errors import InvalidRequest
from imagegate.request import MAX_N, ImageRequest
from imagegate.server.deps import ServerContext

__all__ = [
    "ROUTE_CHECKPOINT",
    "ProgressResponse",
    "ProgressState",
    "Txt2ImgBody",
    "Txt2ImgResponse",
    "checkpoint",
    "ignored_fields",
    "to_request",
]

ROUTE_CHECKPOINT = "route"
MAX_CHECKPOINT_CHARS = 256


class Txt2ImgBody(BaseModel):
    """A1111's txt2img request: its fields, types and defaults; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    n_iter: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    steps: int | None = None
    cfg_scale: float = 7.0
    width: int | None = None
    height: int | None = None
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    sampler_index: str = "Euler"
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None


class Txt2ImgResponse(BaseModel):
    """A1111's answer: base64 PNGs, the parsed request, and ``info`` as a JSON string."""

    images: list[str]
    parameters: dict[str, Any]
    info: str


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
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


def checkpoint(ctx: ServerContext, title: object) -> dict[str, str]:
    """What a checkpoint title selects: ``{"route": NAME}``, ``{"provider": NAME}`` or
    ``{}`` (the default route); InvalidRequest naming the allowed titles otherwise. A title
    may carry A1111's " [hash]" suffix."""
    if title in (None, ""):
        return {}
    if not isinstance(title, str) or len(title) > MAX_CHECKPOINT_CHARS:
        allowed = ", ".join(
            [ROUTE_CHECKPOINT, *ctx.gateway.policies, *sorted(ctx.gateway.providers)]
        )
        shown = repr(title) if len(repr(title)) <= 60 else repr(title)[:57] + "..."
        raise InvalidRequest(
            f"sd_model_checkpoint: {shown} is not a checkpoint here (allowed: {allowed})",
            field="sd_model_checkpoint",
            limit=f"one of {allowed}",
        )
    return ctx.gateway.select(title.split(" [", 1)[0], field="sd_model_checkpoint")


def _sampler(body: Txt2ImgBody) -> str | None:
    """``sampler_name``, else a ``sampler_index`` the client sent (A1111's order); else the
    provider's default sampler."""
    if body.sampler_name:
        return body.sampler_name
    if "sampler_index" in body.model_fields_set and body.sampler_index:
        return body.sampler_index
    return None


def to_request(ctx: ServerContext, body: Txt2ImgBody, **fields: Any) -> ImageRequest:
    """The ImageRequest an A1111 body asks for (``fields`` adds to it: img2img's images);
    InvalidRequest names the field."""
    selected = ctx.a1111_checkpoint
    override = body.override_settings or {}
    if "sd_model_checkpoint" in override:
        selected = checkpoint(ctx, override["sd_model_checkpoint"])
    n = body.batch_size * body.n_iter
    if n > MAX_N:
        raise InvalidRequest(
            f"batch_size: batch_size x n_iter must be at most {MAX_N}; got {n}",
            field="batch_size",
            limit=f"at most {MAX_N} images",
        )
    scheduler = body.scheduler
    values: dict[str, Any] = {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "seed": None if body.seed == -1 else body.seed,
        "sampler": _sampler(body),
        "scheduler": scheduler or None,
        "steps": body.steps,
        "guidance": body.cfg_scale,
        "width": body.width,
        "height": body.height,
        "n": n,
        **selected,
        **fields,
    }
    return ImageRequest.parse({k: v for k, v in values.items() if v is not None})


def ignored_fields(body: Txt2ImgBody) -> list[str]:
    """The fields set to something imagegate does not do (named in ``info``)."""
    ignored = [
        name
        for name, active in (
            ("enable_hr", body.enable_hr),
            ("restore_faces", bool(body.restore_faces)),
            ("tiling", bool(body.tiling)),
            ("subseed_strength", body.subseed_strength > 0),
            ("styles", bool(body.styles)),
            ("script_name", body.script_name is not None),
            ("alwayson_scripts", bool(body.alwayson_scripts)),
            ("refiner_checkpoint", body.refiner_checkpoint is not None),
        )
        if active
    ]
    other = sorted(set(body.override_settings or {}) - {"sd_model_checkpoint"})
    return ignored + [f"override_settings.{name}" for name in other]
