"""Usage and cost per key, route, provider or day, summed from the jobs table.

Every job records who submitted it (``owner``, a managed key's name; shown as ``-`` for the
environment's admin keys and with auth off), the route it asked for (``default`` unless it
named one), the provider that answered, its images, seconds and cost (``cost_per_image`` plus
``cost_per_megapixel`` at the time it ran), and the tokens an upstream reported for the attempt
that answered (OpenAI's ``usage`` object, kept on the job's attempts).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from imagegate.errors import InvalidRequest
from imagegate.store.db import Store
from imagegate.store.models import Image, Job

GROUPS = ("key", "route", "provider", "day")


@dataclass
class UsageRow:
    """One group's totals."""

    group: str
    jobs: int = 0
    succeeded: int = 0
    images: int = 0
    seconds: float = 0.0
    cost: float = 0.0
    tokens: int = 0
    """Upstream-reported tokens (``total_tokens`` of OpenAI's ``usage``), 0 where none."""

    def to_json(self, group_by: str) -> dict[str, Any]:
        data = asdict(self)
        data[group_by] = data.pop("group")
        data["seconds"] = round(self.seconds, 3)
        data["cost"] = round(self.cost, 6)
        return data


def _tokens(attempts: Any) -> int:
    """The tokens the upstreams reported over a job's attempts (``total_tokens``)."""
    total = 0
    for attempt in attempts if isinstance(attempts, list) else ():
        usage = attempt.get("usage") if isinstance(attempt, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("total_tokens"), int):
            total += usage["total_tokens"]
    return total


def check_group(group_by: str) -> str:
    """``group_by`` when it is one of :data:`GROUPS`; InvalidRequest naming them otherwise."""
    if group_by not in GROUPS:
        raise InvalidRequest(
            f"group_by: must be one of {', '.join(GROUPS)}; got {group_by!r}",
            field="group_by",
            limit=f"one of {', '.join(GROUPS)}",
        )
    return group_by


async def usage(
    store: Store,
    *,
    start: datetime,
    end: datetime,
    group_by: str,
    owner: str | None = None,
) -> list[UsageRow]:
    """Totals of the jobs created in ``[start, end)`` by ``group_by`` (only ``owner``'s when
    given), largest cost first."""
    check_group(group_by)
    images = (
        select(Image.job_id, func.count().label("n")).group_by(Image.job_id).subquery("counted")
    )
    query = (
        select(
            Job.owner,
            Job.request,
            Job.provider,
            Job.status,
            Job.elapsed_s,
            Job.cost,
            Job.created_at,
            Job.attempts,
            func.coalesce(images.c.n, 0),
        )
        .outerjoin(images, images.c.job_id == Job.id)
        .where(Job.created_at >= start, Job.created_at < end)
    )
    if owner is not None:
        query = query.where(Job.owner == owner)
    rows: dict[str, UsageRow] = {}
    async with store.engine.connect() as conn:
        result = await conn.stream(query)
        async for job_owner, request, provider, status, elapsed, cost, created, tried, n in result:
            key = {
                "key": job_owner or "-",
                "route": (request or {}).get("route") or "default",
                "provider": provider or "-",
                "day": created.date().isoformat() if created is not None else "-",
            }[group_by]
            row = rows.setdefault(key, UsageRow(key))
            row.jobs += 1
            row.succeeded += status == "succeeded"
            row.images += int(n)
            row.seconds += float(elapsed or 0.0)
            row.cost += float(cost or 0.0)
            row.tokens += _tokens(tried)
    return sorted(rows.values(), key=lambda r: (-r.cost, r.group))


def parse_time(text: str | None, field: str) -> datetime | None:
    """An ISO 8601 date or time (UTC when it names no zone); InvalidRequest naming ``field``."""
    if text is None or text == "":
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"{field}: must be an ISO 8601 date or time, e.g. 2026-12-01; got {text!r}",
            field=field,
            limit="ISO 8601",
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def window(start: str | None, end: str | None, now: datetime) -> tuple[datetime, datetime]:
    """``[from, to)``: by default from the start of this month (UTC) to now."""
    first = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    begin = parse_time(start, "from") or first
    finish = parse_time(end, "to") or now
    if finish <= begin:
        raise InvalidRequest("to: must be after from", field="to", limit="after from")
    return begin, finish
