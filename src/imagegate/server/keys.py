"""The admin API for managed keys: POST/GET /v1/keys, DELETE /v1/keys/{name}.

Only admin keys (the environment's, or a managed key created with ``admin``) may use it; any
other key gets a 403. A new key is in the POST answer once and never again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from imagegate.errors import InvalidRequest
from imagegate.server.auth import keys_from_env
from imagegate.server.deps import Ctx, ServerContext
from imagegate.server.errors import error_responses
from imagegate.server.tenants import Caller, CallerDep, Refused
from imagegate.store import Store
from imagegate.store.keys import create_key, list_keys, revoke_key
from imagegate.transport.guard import check_url

router = APIRouter(tags=["keys"], responses=error_responses(400, 401, 403))


class KeyCreate(BaseModel):
    """A new managed key's name and limits."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=64)]
    admin: bool = False
    routes: list[str] | None = Field(default=None, description="routes or providers it may use")
    rate_per_min: Annotated[int, Field(ge=1, le=100_000)] | None = None
    budget: Annotated[float, Field(ge=0)] | None = None
    period: Literal["day", "month"] | None = None
    webhook_url: str | None = Field(
        default=None, description="where its jobs' ends are posted when a job names none"
    )


class KeyView(BaseModel):
    """A managed key, without the key."""

    name: str
    admin: bool
    routes: list[str] | None
    rate_per_min: int | None
    budget: float | None
    period: str | None
    created_at: datetime
    webhook_url: str | None = None


class KeyCreated(KeyView):
    """A new key: ``key`` is shown this once."""

    key: str


class KeyList(BaseModel):
    data: list[KeyView]


def _store(ctx: ServerContext, caller: Caller | None) -> Store:
    if caller is not None and not caller.admin:
        raise Refused(403, "admin_key_required", "managing keys needs an admin key")
    if ctx.gateway.store is None:
        raise InvalidRequest("the server has no store", field="name")
    return ctx.gateway.store


def check_routes(ctx: ServerContext, routes: list[str] | None) -> None:
    """Every name in ``routes`` is a route or a provider; InvalidRequest naming them else."""
    allowed = [*ctx.gateway.route_names(), *ctx.gateway.providers]
    for name in routes or []:
        if name not in allowed:
            raise InvalidRequest(
                f"routes: {name!r} is neither a route nor a provider (allowed: "
                f"{', '.join(allowed)})",
                field="routes",
                limit=f"names from {', '.join(allowed)}",
            )


@router.post("/v1/keys", status_code=201, response_model=KeyCreated, summary="Create a key")
async def create(body: KeyCreate, ctx: Ctx, caller: CallerDep) -> KeyCreated:
    store = _store(ctx, caller)
    check_routes(ctx, body.routes)
    if body.webhook_url is not None:
        check_url(body.webhook_url, allow_private=ctx.settings.webhooks.allow_private)
    key, record = await create_key(
        store,
        body.name,
        admin=body.admin,
        routes=body.routes,
        rate_per_min=body.rate_per_min,
        budget=body.budget,
        period=body.period,
        webhook_url=body.webhook_url,
    )
    return KeyCreated(key=key, **record.model_dump())


@router.get("/v1/keys", response_model=KeyList, summary="The managed keys (never the keys)")
async def listing(ctx: Ctx, caller: CallerDep) -> KeyList:
    records = await list_keys(_store(ctx, caller))
    return KeyList(data=[KeyView(**r.model_dump()) for r in records])


@router.delete("/v1/keys/{name}", status_code=204, summary="Revoke a key")
async def revoke(name: str, ctx: Ctx, caller: CallerDep, http: Request) -> Response:
    store = _store(ctx, caller)
    env_admins = len(keys_from_env(ctx.settings.server.api_keys_env))
    await revoke_key(store, name, env_admins=env_admins)
    http.app.state.key_cache.clear()  # other replicas stop accepting it within CACHE_S
    return Response(status_code=204)
