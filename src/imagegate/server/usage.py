"""GET /v1/usage: jobs, images, seconds and cost by key, route, provider or day.

A managed key sees its own usage only; admin keys see everyone's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from imagegate.errors import InvalidRequest
from imagegate.server.deps import Ctx
from imagegate.server.errors import error_responses
from imagegate.server.tenants import CallerDep, only_owner
from imagegate.store.usage import check_group, usage, window

router = APIRouter(tags=["usage"], responses=error_responses(400, 401))


class UsageReport(BaseModel):
    """Totals per group over ``[from, to)``."""

    start: datetime
    end: datetime
    group_by: str
    data: list[dict[str, Any]]


@router.get("/v1/usage", response_model=UsageReport, summary="Usage and cost per group")
async def get_usage(
    ctx: Ctx,
    caller: CallerDep,
    start: Annotated[
        str | None, Query(alias="from", max_length=64, description="ISO 8601; default: 1st")
    ] = None,
    end: Annotated[str | None, Query(alias="to", max_length=64, description="default: now")] = None,
    group_by: Annotated[
        str, Query(max_length=16, description="key, route, provider or day")
    ] = "key",
) -> UsageReport:
    check_group(group_by)
    begin, finish = window(start, end, datetime.now(UTC))
    store = ctx.gateway.store
    if store is None:
        raise InvalidRequest("the server has no store", field="from")
    rows = await usage(store, start=begin, end=finish, group_by=group_by, owner=only_owner(caller))
    return UsageReport(
        start=begin, end=finish, group_by=group_by, data=[r.to_json(group_by) for r in rows]
    )
