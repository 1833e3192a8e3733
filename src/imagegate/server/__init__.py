"""The HTTP server: ``create_app()`` builds a FastAPI app around a Gateway and a Backplane.

One router per surface: ``openai`` (/v1/images/generations, /v1/models), ``a1111`` (/sdapi/v1),
``jobs`` (/v1/jobs), ``images`` (/v1/images), ``health`` (/healthz, /readyz, /metrics,
/v1/providers) and ``web`` (/). Every generation runs as a job on the backplane, so the OpenAI
and A1111 routes share the queue, history, progress and metrics with /v1/jobs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI

from imagegate.backplane import Backplane, BreakerSnapshot, JobContext, JobHandler, LocalBackplane
from imagegate.config import Settings, load_config
from imagegate.errors import ConfigError, ImagegateError
from imagegate.gateway import Gateway
from imagegate.providers.base import Provider
from imagegate.request import ImageResult
from imagegate.server import a1111, errors, health, images, jobs, openai, web
from imagegate.server.auth import AuthMiddleware, keys_from_env
from imagegate.server.deps import ServerContext
from imagegate.server.limits import BodyLimitMiddleware
from imagegate.server.metrics import Metrics

__all__ = ["create_app"]


def create_app(
    settings: Settings | None = None,
    *,
    gateway: Gateway | None = None,
    providers: Mapping[str, Provider] | None = None,
    backplane: Backplane | None = None,
) -> FastAPI:
    """The app, on ``settings`` (default: ``load_config()``).

    The lifespan builds the Gateway (with ``providers`` instead of the configured ones when
    given) and closes it at shutdown; a ``gateway`` passed in is opened but left open. The
    backplane defaults to the local one on the gateway's store. API keys are read now, from
    the variable ``server.api_keys_env`` names.
    """
    if settings is None:
        settings = gateway.settings if gateway is not None else load_config()
    metrics = Metrics()
    keys = keys_from_env(settings.server.api_keys_env)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gw = gateway if gateway is not None else Gateway(settings, providers=providers)
        await gw.open()
        bp = backplane if backplane is not None else local_backplane(settings, gw)
        ctx = ServerContext(settings=settings, gateway=gw, backplane=bp, metrics=metrics)
        app.state.ctx = ctx
        await _restore_breakers(ctx)
        await bp.start(job_handler(ctx))
        try:
            yield
        finally:
            await bp.stop()
            if gateway is None:
                await gw.aclose()

    app = FastAPI(
        title="imagegate",
        summary="A provider-neutral text-to-image gateway",
        version=_version(),
        lifespan=lifespan,
    )
    errors.install(app)
    for surface in (openai, a1111, jobs, images, health, web):
        app.include_router(surface.router)
    web.mount_ui(app)
    app.add_middleware(BodyLimitMiddleware, limit=settings.server.max_body_bytes)
    if keys:  # added last, so it runs first: nothing is read before the key is checked
        app.add_middleware(AuthMiddleware, keys=keys)
    return app


def local_backplane(settings: Settings, gateway: Gateway) -> LocalBackplane:
    """The default backplane on the gateway's store; refuses a scale-out config for now."""
    if settings.scale.backplane:
        raise ConfigError(
            "a distributed backplane is not available in this version; remove it to run "
            "with the local one",
            file=settings.source,
            key="scale.backplane",
        )
    if gateway.store is None:
        raise ConfigError("the server needs the store; create the Gateway with store=True")
    return LocalBackplane(
        gateway.store,
        max_queue=settings.server.max_queue,
        concurrency={name: p.config.concurrency for name, p in gateway.providers.items()},
        paid=[name for name, p in gateway.providers.items() if p.paid],
    )


def job_handler(ctx: ServerContext) -> JobHandler:
    """Run one job through the gateway, and count it in the metrics and provider stats."""

    async def handle(job: JobContext) -> ImageResult:
        started = time.monotonic()
        try:
            result = await ctx.gateway.execute(
                job.job_id, job.request, progress=job.progress, recorder=job.recorder
            )
        except ImagegateError as exc:
            _finished(ctx, None, "failed", exc, started)
            raise
        except asyncio.CancelledError:
            ctx.metrics.finished(None, "cancelled", [], time.monotonic() - started)
            raise
        _finished(ctx, result, "succeeded", None, started)
        await _save_breakers(ctx, [a.provider for a in result.attempts])
        return result

    return handle


def _finished(
    ctx: ServerContext,
    result: ImageResult | None,
    outcome: str,
    error: ImagegateError | None,
    started: float,
) -> None:
    attempts = result.attempts if result is not None else (error.attempts if error else [])
    ctx.record_attempts(attempts, datetime.now(UTC))
    if result is None:
        ctx.metrics.finished(None, outcome, attempts, time.monotonic() - started)
        return
    provider = ctx.gateway.providers.get(result.provider)
    cost = provider.config.cost_per_image * len(result.images) if provider else 0.0
    ctx.metrics.finished(
        result.provider,
        outcome,
        attempts,
        time.monotonic() - started,
        images=len(result.images),
        cost=cost,
    )


async def _save_breakers(ctx: ServerContext, names: list[str]) -> None:
    for name in dict.fromkeys(names):
        breaker = ctx.gateway.router.breakers.get(name)
        if breaker is None:
            continue
        until = None
        if breaker.is_open:
            until = datetime.fromtimestamp(
                time.time() + breaker.opened_until - time.monotonic(), UTC
            )
        await ctx.backplane.breakers.save(
            BreakerSnapshot(name, breaker.state, until, breaker.consecutive, breaker.last_error)
        )


async def _restore_breakers(ctx: ServerContext) -> None:
    """Open the breakers another process saved as open and not yet due for a probe."""
    now = datetime.now(UTC)
    for name, snapshot in (await ctx.backplane.breakers.load()).items():
        breaker = ctx.gateway.router.breakers.get(name)
        if breaker is None or snapshot.state != "open" or snapshot.opened_until is None:
            continue
        if snapshot.opened_until > now:
            breaker.open((snapshot.opened_until - now).total_seconds())
            breaker.last_error = snapshot.last_error


def _version() -> str:
    from imagegate import __version__

    return __version__
