"""A1111's answers built from imagegate's results and settings, reusable by every route.

``parameters_of`` (the echo of the parsed request), ``info_of`` (the ``info`` object) and
``infotexts_of`` (each image's ``parameters`` text, as stored in its PNG) make a txt2img (or
img2img) answer; ``checkpoints`` lists the routes and providers as A1111 lists checkpoints.
"""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime
from typing import Any

from imagegate.providers.base import Provider, effective_params
from imagegate.request import MAX_SEED, ImageResult
from imagegate.server.a1111.models import ROUTE_CHECKPOINT, Txt2ImgBody, ignored_fields
from imagegate.server.deps import ServerContext
from imagegate.store.pngmeta import imagegate_version, infotext, read_metadata

__all__ = [
    "checkpoint_hash",
    "checkpoint_title",
    "checkpoints",
    "info_of",
    "infotexts_of",
    "parameters_of",
]


def checkpoint_hash(kind: str, name: str, model: str) -> str:
    """A stable sha256 standing for a route or provider (A1111 hashes the file)."""
    return hashlib.sha256(f"imagegate:{kind}:{name}:{model}".encode()).hexdigest()


def checkpoints(ctx: ServerContext) -> list[dict[str, Any]]:
    """The named routes, then the providers, as ``/sdapi/v1/sd-models`` entries."""
    entries = [
        ("route", name, f"route:{','.join(policy.route)}")
        for name, policy in ctx.gateway.policies.items()
    ] + [("provider", name, provider.model) for name, provider in ctx.gateway.providers.items()]
    answer = []
    for kind, name, model in entries:
        sha256 = checkpoint_hash(kind, name, model)
        answer.append(
            {
                "title": name,
                "model_name": name,
                "hash": sha256[:10],
                "sha256": sha256,
                "filename": model,
                "config": None,
            }
        )
    return answer


def checkpoint_title(ctx: ServerContext) -> str:
    """The title of the checkpoint POST /options selected ("route" for the default)."""
    return next(iter(ctx.a1111_checkpoint.values()), ROUTE_CHECKPOINT)


def _model_hash(provider: Provider | None, result: ImageResult) -> str:
    reported = next((i.reported for i in result.images if i.reported is not None), None)
    if reported is not None and reported.model_hash:
        return reported.model_hash
    model = provider.model if provider is not None else result.model
    return checkpoint_hash("provider", result.provider, model)[:10]


def infotexts_of(ctx: ServerContext, result: ImageResult) -> list[str]:
    """Each image's A1111 ``parameters`` text: the one stored in its PNG (the backend's own
    where it wrote one), else built from what ran."""
    provider = ctx.gateway.providers.get(result.provider)
    effective = effective_params(provider, result.request)
    texts = []
    for image in result.images:
        stored: str | None = None
        try:
            stored, _ = read_metadata(image.png)
        except (OSError, ValueError):
            stored = None
        texts.append(
            stored
            or infotext(
                result.request,
                seed=image.seed,
                width=image.width,
                height=image.height,
                model=result.model,
                steps=effective["steps"],
                sampler=effective["sampler"],
                scheduler=effective["scheduler"],
                guidance=effective["guidance"],
                model_hash=_model_hash(provider, result),
            )
        )
    return texts


def parameters_of(body: Txt2ImgBody, result: ImageResult | None) -> dict[str, Any]:
    """A1111's echo of the parsed request: every field with A1111's default, and the steps
    and size that ran where the client left them to the provider."""
    echo = body.model_dump()
    if result is not None:
        request = result.request
        first = result.images[0] if result.images else None
        echo["steps"] = body.steps if body.steps is not None else request.steps
        echo["width"] = body.width if body.width is not None else (first and first.width)
        echo["height"] = body.height if body.height is not None else (first and first.height)
    return echo


def info_of(
    ctx: ServerContext,
    body: Txt2ImgBody,
    result: ImageResult,
    *,
    started_at: datetime | None = None,
    interrupted: bool = False,
) -> dict[str, Any]:
    """A1111's ``info`` for ``result``: its keys and types, what really ran (as the backend
    reported it where it did), plus imagegate's provider, job and attempts, and the fields
    it ignored."""
    request = result.request
    provider = ctx.gateway.providers.get(result.provider)
    effective = effective_params(provider, request)
    reported = next((i.reported for i in result.images if i.reported is not None), None)
    images = result.images
    first = images[0] if images else None
    subseed = body.subseed if body.subseed != -1 else random.randint(0, MAX_SEED)
    info: dict[str, Any] = {
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * len(images),
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * len(images),
        "seed": first.seed if first else body.seed,
        "all_seeds": [image.seed for image in images],
        "subseed": subseed,
        "all_subseeds": [(subseed + i) % (MAX_SEED + 1) for i in range(len(images))],
        "subseed_strength": body.subseed_strength,
        "width": first.width if first else body.width,
        "height": first.height if first else body.height,
        "sampler_name": (reported and reported.sampler) or effective["sampler"],
        "cfg_scale": (reported and reported.guidance) or effective["guidance"],
        "steps": (reported and reported.steps) or effective["steps"],
        "batch_size": body.batch_size,
        "restore_faces": bool(body.restore_faces),
        "face_restoration_model": None,
        "sd_model_name": result.model,
        "sd_model_hash": _model_hash(provider, result),
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": body.seed_resize_from_w,
        "seed_resize_from_h": body.seed_resize_from_h,
        "denoising_strength": body.denoising_strength,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts_of(ctx, result),
        "styles": body.styles or [],
        "job_timestamp": (started_at or datetime.now(UTC)).strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": f"imagegate {imagegate_version()}",
        "provider": result.provider,
        "job_id": result.job_id,
        "attempts": [attempt.model_dump(mode="json") for attempt in result.attempts],
        "ignored": ignored_fields(body),
    }
    if interrupted:
        info["interrupted"] = True
    return info
