"""The HTTP server: ``create_app()`` builds a FastAPI app around a Gateway and a Backplane.

One router per surface: ``openai`` (/v1/images/generations, /v1/models), ``a1111`` (/sdapi/v1),
``jobs`` (/v1/jobs), ``images`` (/v1/images), ``health`` (/healthz, /readyz, /metrics,
/v1/providers) and ``web`` (/). Every generation runs as a job on the backplane, so the OpenAI
and A1111 routes share the queue, history, progress and metrics with /v1/jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI

from imagegate import tracing
from imagegate.backplane import Backplane, JobContext
from imagegate.backplane.runner import JobRunner
from imagegate.backplane.webhooks import WebhookSender, signing_secret
from imagegate.config import Settings, load_config
from imagegate.errors import ImagegateError
from imagegate.gateway import Gateway
from imagegate.providers.base import Provider
from imagegate.redaction import install_log_redaction
from imagegate.request import ImageResult
from imagegate.server import a1111, errors, health, images, jobs, openai, tenants, usage, web
from imagegate.server import keys as keys_api
from imagegate.server.auth import AuthMiddleware, keys_from_env
from imagegate.server.browsers import BrowserGuardMiddleware
from imagegate.server.deps import ServerContext
from imagegate.server.limits import BodyLimitMiddleware
from imagegate.server.metrics import Metrics
from imagegate.server.presign import UrlSigner, load_secret
from imagegate.server.telemetry import TraceMiddleware

__all__ = ["create_app", "run_worker"]

log = logging.getLogger("imagegate.server")


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
    install_log_redaction()
    if settings is None:
        settings = gateway.settings if gateway is not None else load_config()
    metrics = Metrics()
    keys = keys_from_env(settings.server.api_keys_env)
    signer = _signer(settings, keys)
    webhook_secret = signing_secret(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gw = gateway if gateway is not None else _gateway(settings, providers)
        await gw.open()
        runner = JobRunner(gw, backplane)
        ctx = ServerContext(
            settings=settings,
            gateway=gw,
            backplane=runner.backplane,
            metrics=metrics,
            signer=signer,
            webhooks=webhook_secret is not None,
        )
        runner.on_end = functools.partial(_finished, ctx)
        runner.webhooks = _webhook_sender(ctx, webhook_secret)
        app.state.ctx = ctx
        await runner.start()
        sweeper = _start_retention(gw)
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            await runner.stop()
            if gateway is None:
                await gw.aclose()
            tracing.flush()

    app = FastAPI(
        title="imagegate",
        summary="A provider-neutral text-to-image gateway",
        version=_version(),
        lifespan=lifespan,
        # operation ids are the route functions' names: `submit_job`, not
        # `submit_job_v1_jobs_post`, in a generated client
        generate_unique_id_function=lambda route: route.name,
    )
    errors.install(app)
    tenants.install(app)
    app.state.key_cache = tenants.KeyCache()
    errors.document_errors(app)
    for surface in (openai, a1111, jobs, images, keys_api, usage, health, web):
        app.include_router(surface.router)
    web.mount_ui(app)
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.server.max_body_bytes,
        edit_limit=settings.server.max_edit_body_bytes,
    )
    if keys:  # added after the rest, so it runs before: nothing is read before the key is checked
        app.add_middleware(AuthMiddleware, keys=keys, signer=signer, cache=app.state.key_cache)
    app.add_middleware(  # before the key check: a refused Host or page never reaches it
        BrowserGuardMiddleware, keys_on=bool(keys), allowed_hosts=settings.server.allowed_hosts
    )
    if tracing.setup_from_env():  # outermost: the request's span covers the key check too
        app.add_middleware(TraceMiddleware)
    return app


async def run_worker(
    settings: Settings,
    queue: str,
    *,
    providers: Mapping[str, Provider] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """``imagegate worker``: run the jobs of one queue until SIGTERM/SIGINT (or ``stop``)."""
    import signal

    from imagegate.backplane.postgres import shared_store

    gw = Gateway(settings, providers=providers, store=shared_store(settings))
    await gw.open()
    webhook_secret = signing_secret(settings)
    runner = JobRunner(gw, worker_queues=[queue])
    ctx = ServerContext(
        settings=settings,
        gateway=gw,
        backplane=runner.backplane,
        metrics=Metrics(),
        signer=_signer(settings, keys_from_env(settings.server.api_keys_env)),
        webhooks=webhook_secret is not None,
    )
    runner.on_end = functools.partial(_finished, ctx)
    runner.webhooks = _webhook_sender(ctx, webhook_secret)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tracing.setup_from_env()
    await runner.start()
    try:
        await stop.wait()
    finally:
        await runner.stop()
        await gw.aclose()
        tracing.shutdown()


def _signer(settings: Settings, keys: Collection[bytes]) -> UrlSigner | None:
    """Signs image URLs when auth is on (``keys``)."""
    if not keys:
        return None
    secret = load_secret(settings.server.url_secret_env, settings.data_dir)
    return UrlSigner(secret, settings.server.url_expiry_s)


def _webhook_sender(ctx: ServerContext, secret: str | None) -> WebhookSender | None:
    """The sender of this process's webhooks; None without a signing secret or a store."""
    store = ctx.gateway.store
    if secret is None or store is None:
        return None
    document = functools.partial(jobs.webhook_document, ctx)
    return WebhookSender(store, ctx.settings.webhooks, secret, document)


def _gateway(settings: Settings, providers: Mapping[str, Provider] | None) -> Gateway:
    """The server's Gateway, handed the shared Store when scaled out."""
    if not settings.scale.backplane:
        return Gateway(settings, providers=providers)
    from imagegate.backplane.postgres import shared_store

    return Gateway(settings, providers=providers, store=shared_store(settings))


def _start_retention(gateway: Gateway) -> asyncio.Task[None] | None:
    """The background retention sweep, when ``keep_days`` or ``max_store_gb`` is set."""
    settings = gateway.settings.gateway
    if gateway.store is None or (settings.keep_days is None and settings.max_store_gb is None):
        return None
    from imagegate.store.retention import sweep_forever

    return asyncio.get_running_loop().create_task(sweep_forever(gateway.store, settings))


def _finished(
    ctx: ServerContext,
    job: JobContext,
    result: ImageResult | None,
    outcome: str,
    error: ImagegateError | None,
    elapsed_s: float,
) -> None:
    """Count a job's end in the metrics (by key: a managed key's name, ``-`` for admin keys
    when auth is on) and the providers' recent stats."""
    attempts = result.attempts if result is not None else (error.attempts if error else [])
    ctx.record_attempts(attempts, datetime.now(UTC))
    if result is None:
        ctx.metrics.finished(None, outcome, attempts, elapsed_s)
        return
    provider = ctx.gateway.providers.get(result.provider)
    sizes = [(image.width, image.height) for image in result.images]
    cost = provider.config.cost_of(sizes) if provider else 0.0
    ctx.metrics.finished(
        result.provider, outcome, attempts, elapsed_s, images=len(result.images), cost=cost
    )
    if job.owner is not None or ctx.signer is not None:
        key = job.owner or "-"
        ctx.metrics.key_images.labels(key).inc(len(result.images))
        ctx.metrics.key_cost.labels(key).inc(cost)


def _version() -> str:
    from imagegate import __version__

    return __version__
