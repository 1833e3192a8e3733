"""The native jobs API: submit (202), look up, list, cancel, and follow events over SSE."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from imagegate.backplane import JobOutcome
from imagegate.errors import ConnectError, ImagegateError, InvalidRequest
from imagegate.request import ImageRequest, ImageResult
from imagegate.server.deps import BaseUrl, Ctx, ServerContext
from imagegate.server.errors import MADE, error_responses, http_error, openai_error
from imagegate.server.strictjson import StrictJsonRoute
from imagegate.server.tenants import Caller, CallerDep, Refused, admit, only_owner, sees
from imagegate.store.records import JobRecord
from imagegate.transport import safe_url
from imagegate.transport.guard import check_url, resolve

RESOLVE_S = 2.0
"""How long a submit waits for a webhook host name to resolve (to check where it leads)."""

router = APIRouter(route_class=StrictJsonRoute, tags=["jobs"], responses=error_responses(400, 401))

MAX_LIST = 200


class JobAccepted(BaseModel):
    """What POST /v1/jobs answers: the job is on disk and queued."""

    id: str
    status: str
    position: int | None


class JobImage(BaseModel):
    """One image of a job."""

    id: str
    url: str
    seed: int
    width: int
    height: int


class JobSubmit(ImageRequest):
    """What POST /v1/jobs takes: a generation, and where to post its end. Strict: a number or
    boolean sent as a string (or one as the other) is refused, never converted."""

    model_config = ConfigDict(**ImageRequest.model_config, strict=True)

    webhook_url: str | None = Field(
        default=None,
        description="an http(s) URL the job's end is posted to, signed per Standard Webhooks "
        "(default: the key's webhook URL); at most 2048 characters, on a public address",
    )

    def image_request(self) -> ImageRequest:
        """The generation alone (what the job stores and runs)."""
        fields = {name: getattr(self, name) for name in ImageRequest.model_fields}
        return ImageRequest.model_construct(self.model_fields_set - {"webhook_url"}, **fields)


class WebhookView(BaseModel):
    """A job's webhook: where (without query string) and how delivery goes."""

    url: str
    status: str
    """``waiting`` (the job has not ended), ``pending``, ``delivered`` or ``failed``."""
    attempts: list[dict[str, Any]]
    next_attempt_at: datetime | None
    delivered_at: datetime | None


class JobView(BaseModel):
    """One job, as GET /v1/jobs/{id} shows it."""

    id: str
    status: str
    progress: float
    step: int | None
    steps: int | None
    position: int | None
    request: dict[str, Any]
    provider: str | None
    model: str | None
    images: list[JobImage]
    error: dict[str, Any] | None
    attempts: list[dict[str, Any]]
    cost: float
    owner: str | None = None
    source: str
    retries: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    elapsed_s: float | None
    webhook: WebhookView | None = None


class JobList(BaseModel):
    """A page of jobs, newest first; pass ``next_before`` as ``before`` for the next page."""

    data: list[JobView]
    next_before: str | None


def job_view(ctx: ServerContext, job: JobRecord, base: str) -> JobView:
    return JobView(
        id=job.id,
        status=job.status,
        progress=job.progress,
        step=job.step,
        steps=job.steps,
        position=ctx.backplane.jobs.position(job.id) if job.status == "queued" else None,
        request=job.request,
        provider=job.provider,
        model=job.model,
        images=[
            JobImage(
                id=img.id,
                url=ctx.image_url(base, img.id),
                seed=img.seed,
                width=img.width,
                height=img.height,
            )
            for img in job.images
        ],
        error=_error_view(job),
        attempts=job.attempts,
        cost=job.cost,
        owner=job.owner,
        source=job.source,
        retries=job.retries,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        elapsed_s=job.elapsed_s,
        webhook=_webhook_view(job),
    )


def _webhook_view(job: JobRecord) -> WebhookView | None:
    if job.webhook is None:
        return None
    url = safe_url(httpx.URL(str(job.webhook.get("url", ""))))
    delivery = job.delivery
    if delivery is None:
        return WebhookView(
            url=url, status="waiting", attempts=[], next_attempt_at=None, delivered_at=None
        )
    return WebhookView(
        url=url,
        status=delivery.status,
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_at if delivery.status == "pending" else None,
        delivered_at=delivery.delivered_at,
    )


def webhook_document(ctx: ServerContext, job: JobRecord) -> dict[str, Any]:
    """What a job's webhook posts: ``type`` (``job.succeeded``, ``job.failed``,
    ``job.cancelled``), ``timestamp`` (its end) and ``data``, the job as GET /v1/jobs/{id}
    shows it (image URLs on the server it was submitted to)."""
    base = str((job.webhook or {}).get("base", ""))
    data = job_view(ctx, job, base).model_dump(mode="json", exclude={"webhook"})
    ended = job.finished_at or job.created_at
    return {"type": f"job.{job.status}", "timestamp": ended.isoformat(), "data": data}


async def _webhook_for(
    ctx: ServerContext, url: str | None, caller: Caller | None, base: str
) -> dict[str, str] | None:
    """The job's webhook (``url``, ``base``): the body's URL, else the key's default; a
    URL that is not http(s), too long or (unless allowed) private is a 400 naming it."""
    if url is None and caller is not None and caller.key is not None:
        url = caller.key.webhook_url
    if url is None:
        return None
    if not ctx.webhooks:
        env = ctx.settings.webhooks.secret_env
        raise InvalidRequest(
            f"webhook_url: this server sends no webhooks: {env} (its signing secret) is unset",
            field="webhook_url",
            fix=f"submit without webhook_url, or have the operator set {env}",
        )
    allow = ctx.settings.webhooks.allow_private
    parsed = check_url(url, allow_private=allow)
    if not allow:
        with contextlib.suppress(ConnectError):  # unresolvable now: each send checks again
            await resolve(parsed, allow_private=False, timeout_s=RESOLVE_S)
    return {"url": url, "base": base}


def _error_view(job: JobRecord) -> dict[str, Any] | None:
    """The row's error, plus how the synchronous routes answer it: the same ``status``,
    ``param``, ``code``, ``retry_after`` (Retry-After's seconds) and ``should_retry``."""
    if not job.error:
        return job.error
    outcome = JobOutcome.unsuccessful(job)
    assert outcome.error is not None
    error = http_error(outcome.error)
    return {
        **job.error,
        "status": error.status,
        "param": error.param,
        "code": error.code,
        "fix": error.fix,
        "retry_after": error.retry_after,
        "should_retry": error.should_retry,
    }


async def run_to_end(
    ctx: ServerContext, request: ImageRequest, source: str, caller: Caller | None = None
) -> ImageResult:
    """Queue ``request`` as a job, wait for it, and return its result or raise its error.

    A managed key's routes, rate and budget are checked first (``tenants.admit``)."""
    outcome = await _submit_and_wait(ctx, request, source, caller)
    if outcome.status == "succeeded" and outcome.result is not None:
        MADE.set(outcome.job_id)
        return outcome.result
    raise outcome.error or ImagegateError(f"the job ended {outcome.status}")


async def _submit_and_wait(
    ctx: ServerContext, request: ImageRequest, source: str, caller: Caller | None
) -> JobOutcome:
    route = _route(ctx, request)
    owner = await _admit(ctx, caller, request)
    return await ctx.backplane.jobs.run(
        request, route=route, source=source, queue=route[0], owner=owner
    )


async def _admit(ctx: ServerContext, caller: Caller | None, request: ImageRequest) -> str | None:
    store = ctx.gateway.store
    if store is None or caller is None:
        return None
    key = caller.name or "-"
    try:
        owner = await admit(store, caller, request)
    except Refused as refused:
        ctx.metrics.key_requests.labels(key, refused.code).inc()
        raise
    ctx.metrics.key_requests.labels(key, "admitted").inc()
    return owner


def _route(ctx: ServerContext, request: ImageRequest) -> list[str]:
    route = ctx.gateway.route_for(request)
    if not route:
        raise InvalidRequest(
            "no enabled provider is on the route; enable one or pin one with provider",
            field="provider",
        )
    return route


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=JobAccepted,
    responses=error_responses(403, 413, 429),
    summary="Queue a generation; answers once the job is on disk",
)
async def submit_job(body: JobSubmit, ctx: Ctx, base: BaseUrl, caller: CallerDep) -> JSONResponse:
    request = body.image_request()
    route = _route(ctx, request)
    webhook = await _webhook_for(ctx, body.webhook_url, caller, base)
    owner = await _admit(ctx, caller, request)
    submitted = await ctx.backplane.jobs.submit(
        request, route=route, source="jobs", queue=route[0], owner=owner, webhook=webhook
    )
    accepted = JobAccepted(id=submitted.job_id, status="queued", position=submitted.position)
    return JSONResponse(
        accepted.model_dump(),
        status_code=202,
        headers={"location": f"{base}/v1/jobs/{submitted.job_id}"},
    )


@router.get("/v1/jobs", response_model=JobList, summary="Recent jobs, newest first")
async def list_jobs(
    ctx: Ctx,
    base: BaseUrl,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 20,
    before: Annotated[
        str | None, Query(max_length=64, description="a job id or an ISO 8601 time")
    ] = None,
) -> JobList:
    cutoff = await _cutoff(ctx, before)
    jobs = await ctx.backplane.store.list_jobs(limit=limit, before=cutoff, owner=only_owner(caller))
    next_before = jobs[-1].id if len(jobs) == limit else None
    return JobList(data=[job_view(ctx, job, base) for job in jobs], next_before=next_before)


async def _cutoff(ctx: ServerContext, before: str | None) -> datetime | None:
    if before is None:
        return None
    job = await ctx.backplane.store.get(before)
    if job is not None:
        return job.created_at
    try:
        return datetime.fromisoformat(before)
    except ValueError:
        raise InvalidRequest(
            f"before: must be a job id or an ISO 8601 time; got {before!r}", field="before"
        ) from None


def _not_found(job_id: str) -> JSONResponse:
    return openai_error(404, "not_found_error", f"no job {job_id!r}", param="id")


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobView,
    responses=error_responses(404),
    summary="One job: status, progress, images, error, attempts",
)
async def get_job(job_id: str, ctx: Ctx, base: BaseUrl, caller: CallerDep) -> Response:
    job = await ctx.backplane.store.get(job_id)
    if job is None or not sees(caller, job.owner):
        return _not_found(job_id)
    return JSONResponse(job_view(ctx, job, base).model_dump(mode="json"))


@router.post(
    "/v1/jobs/{job_id}/cancel",
    response_model=JobView,
    responses=error_responses(404, 409),
    summary="Cancel a queued job at once, or stop a running one",
)
async def cancel_job(job_id: str, ctx: Ctx, base: BaseUrl, caller: CallerDep) -> Response:
    job = await ctx.backplane.store.get(job_id)
    if job is None or not sees(caller, job.owner):
        return _not_found(job_id)
    if job.status in ("succeeded", "failed"):
        return openai_error(
            409, "conflict_error", f"the job already {job.status}; nothing to cancel", param="id"
        )
    after = await ctx.backplane.jobs.cancel(job_id)
    return JSONResponse(job_view(ctx, after or job, base).model_dump(mode="json"))


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "server-sent events"},
        **error_responses(404, 429),
    },
    summary="Server-sent events: queued, started, progress, succeeded, failed, cancelled",
)
async def job_events(
    job_id: str,
    ctx: Ctx,
    caller: CallerDep,
    last_event_id: Annotated[int | None, Header(ge=0)] = None,
    after: Annotated[int | None, Query(ge=0, description="resume after this event id")] = None,
) -> Response:
    job = await ctx.backplane.store.get(job_id)
    if job is None or not sees(caller, job.owner):
        return _not_found(job_id)
    start = max(last_event_id or 0, after or 0)
    limit = ctx.settings.server.max_event_streams
    stream_key = caller.name if caller is not None else None
    open_now = ctx.event_streams.get(stream_key, 0)
    if open_now >= limit:
        return openai_error(
            429,
            "rate_limit_error",
            f"{open_now} event streams are open for this key; at most {limit} "
            "(server.max_event_streams)",
            code="too_many_streams",
            headers={"retry-after": "1"},
        )
    ctx.event_streams[stream_key] = open_now + 1

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 1000\n\n"
            async for event in ctx.backplane.events.subscribe(job_id, start):
                data = json.dumps({"job_id": job_id, **event.data}, separators=(",", ":"))
                yield f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n".encode()
        finally:
            left = ctx.event_streams.get(stream_key, 1) - 1
            if left > 0:
                ctx.event_streams[stream_key] = left
            else:
                ctx.event_streams.pop(stream_key, None)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )
