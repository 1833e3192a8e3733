"""Liveness, readiness, Prometheus metrics and the providers with their breakers."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel

from imagegate.errors import StorageError
from imagegate.router import configured_timeouts
from imagegate.server.deps import Ctx
from imagegate.server.errors import error_responses

router = APIRouter(tags=["health"])
log = logging.getLogger("imagegate.server")


class Health(BaseModel):
    status: str


class BreakerView(BaseModel):
    state: str
    opened_until: datetime | None
    last_error: str | None
    last_probe_at: datetime | None
    last_probe_ok: bool | None
    last_probe_kind: str | None = None
    next_probe_kind: str | None = None


class QuantilesView(BaseModel):
    samples: int
    p50_s: float
    p95_s: float
    p99_s: float


class LearnedView(BaseModel):
    """What the router learned of one request shape, and the waits it uses for it."""

    shape: str
    total: QuantilesView | None
    first_byte: QuantilesView | None
    hedge_after_s: float | None
    first_byte_timeout_s: float | None
    first_byte_timeout_learned: bool
    why: str | None


class StageView(BaseModel):
    name: str
    ok: bool
    elapsed_s: float | None
    detail: str


class DoctorView(BaseModel):
    """``imagegate doctor``'s stages for this provider, run on request (``?doctor=true``)."""

    ok: bool
    stages: list[StageView]
    cause: str | None
    fix: str | None
    notes: list[str] = []
    """Where what the router learned differs from the config (a learned first-byte limit)."""


class ProviderView(BaseModel):
    name: str
    type: str
    model: str
    paid: bool
    concurrency: int
    route_position: int | None
    breaker: BreakerView
    last_ok_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    recent_latency_p50_s: float | None
    recent_samples: int
    timeouts: dict[str, float | None] = {}
    """The configured budgets (seconds) of each stage; a learned first-byte limit is per shape
    in ``learned``."""
    learned: list[LearnedView] = []
    """Per request shape (this server process): p50 / p95 / p99 and the effective waits."""
    doctor: DoctorView | None = None


class ProviderList(BaseModel):
    route: list[str]
    data: list[ProviderView]


@router.get("/healthz", response_model=Health, summary="Liveness (never needs a key)")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"description": "the store does not answer"}, **error_responses(401)},
    summary="Readiness: the store answers",
)
async def readyz(ctx: Ctx) -> Response:
    try:
        await ctx.backplane.store.ping()
    except StorageError as exc:  # the store answers but would lose what it is given
        log.warning("readyz: %s", exc.message)
        return JSONResponse({"status": "unavailable", "reason": exc.message}, status_code=503)
    except Exception as exc:  # any failure to reach the store means not ready
        log.warning("readyz: the store does not answer: %s", type(exc).__name__)
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **error_responses(401)},
    summary="Prometheus metrics",
)
async def metrics(ctx: Ctx) -> Response:
    breakers = {name: b.is_open for name, b in ctx.gateway.router.breakers.items()}
    jobs = await ctx.backplane.store.counts()
    body = ctx.metrics.render(breakers=breakers, queue_depth=ctx.backplane.jobs.depth(), jobs=jobs)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _wall(monotonic_at: float) -> datetime | None:
    if monotonic_at <= 0:
        return None
    return datetime.now(UTC) + timedelta(seconds=monotonic_at - time.monotonic())


@router.get(
    "/v1/providers",
    response_model=ProviderList,
    responses=error_responses(400, 401),
    summary="Providers and their breakers",
)
async def providers(ctx: Ctx, doctor: bool = False) -> ProviderList:
    """``doctor=true`` also runs the doctor's stages (no generation) on every provider."""
    route = ctx.settings.gateway.route
    checked: dict[str, DoctorView] = {}
    if doctor:
        from imagegate.doctor import check_providers

        reports = await check_providers(
            ctx.gateway.providers, close=False, router=ctx.gateway.router
        )
        checked = {r.name: DoctorView.model_validate(r.to_json()) for r in reports}
    views = []
    for name, provider in ctx.gateway.providers.items():
        breaker = ctx.gateway.router.breakers[name]
        stats = ctx.stats.get(name)
        views.append(
            ProviderView(
                name=name,
                type=provider.type,
                model=provider.model,
                paid=provider.paid,
                concurrency=provider.config.concurrency,
                route_position=route.index(name) + 1 if name in route else None,
                breaker=BreakerView(
                    state=breaker.state,
                    opened_until=_wall(breaker.opened_until) if breaker.is_open else None,
                    last_error=breaker.last_error,
                    last_probe_at=breaker.last_probe_at,
                    last_probe_ok=breaker.last_probe_ok,
                    last_probe_kind=breaker.last_probe_kind,
                    next_probe_kind=breaker.probe_kind if breaker.is_open else None,
                ),
                last_ok_at=stats.last_ok_at if stats else None,
                last_error=stats.last_error if stats else None,
                last_error_at=stats.last_error_at if stats else None,
                recent_latency_p50_s=stats.p50() if stats else None,
                recent_samples=len(stats.latencies) if stats else 0,
                timeouts=configured_timeouts(provider.config),
                learned=[
                    LearnedView.model_validate(row) for row in ctx.gateway.router.learned(name)
                ],
                doctor=checked.get(name),
            )
        )
    return ProviderList(route=list(route), data=views)
