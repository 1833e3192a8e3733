"""Managed API keys (tenants): create, list, revoke, look up, and what each has used.

A key is ``ig-`` and 32 random bytes (URL-safe base64); only its SHA-256 is stored (a key that
random needs no slow hash), so a database dump reveals none. The same table serves SQLite and
PostgreSQL, so limits computed from it (rate, budget) hold across every replica.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Select, case, delete, func, select
from sqlalchemy.exc import IntegrityError

from imagegate.errors import InvalidRequest
from imagegate.store.db import Store
from imagegate.store.models import ApiKey, Job

KEY_PREFIX = "ig-"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
PERIODS = ("day", "month")
Period = Literal["day", "month"]


class KeyRecord(BaseModel):
    """A managed key as stored: its name and limits, never the key."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    name: str
    admin: bool
    routes: list[str] | None
    rate_per_min: int | None
    budget: float | None
    period: str | None
    created_at: datetime
    webhook_url: str | None = None
    """Where the end of its jobs is posted when a job names no ``webhook_url``."""


def key_hash(key: str | bytes) -> str:
    """The stored form of a key."""
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).hexdigest()


def check_name(name: str) -> str:
    """A key name: 1-64 letters, digits, ``_ . -``, starting with a letter or digit."""
    if not NAME.fullmatch(name):
        raise InvalidRequest(
            f"name: must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter or "
            f"digit); got {name!r}",
            field="name",
            limit="1-64 of [A-Za-z0-9_.-]",
        )
    return name


async def create_key(
    store: Store,
    name: str,
    *,
    admin: bool = False,
    routes: Sequence[str] | None = None,
    rate_per_min: int | None = None,
    budget: float | None = None,
    period: str | None = None,
    webhook_url: str | None = None,
) -> tuple[str, KeyRecord]:
    """Store a new key named ``name``; the key itself is returned once, here, and never again."""
    check_name(name)
    if budget is not None and period not in PERIODS:
        raise InvalidRequest(
            f"period: a budget needs a period, one of {', '.join(PERIODS)}; got {period!r}",
            field="period",
            limit="one of day, month",
        )
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        name=name,
        hash=key_hash(key),
        admin=admin,
        routes=list(routes) if routes else None,
        rate_per_min=rate_per_min,
        budget=budget,
        period=period if budget is not None else None,
        created_at=datetime.now(UTC),
        webhook_url=webhook_url,
    )
    record = KeyRecord.model_validate(row)
    try:
        async with store.engine.begin() as conn:
            await conn.execute(
                ApiKey.__table__.insert().values(  # type: ignore[attr-defined]
                    **{c.name: getattr(row, c.name) for c in ApiKey.__table__.columns}
                )
            )
    except IntegrityError:
        raise InvalidRequest(
            f"name: a key named {name!r} exists already; revoke it first or pick another name",
            field="name",
        ) from None
    return key, record


async def list_keys(store: Store) -> list[KeyRecord]:
    """Every managed key, by name."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(ApiKey).order_by(ApiKey.name))).all()
    return [KeyRecord.model_validate(row, from_attributes=True) for row in rows]


async def find_key(store: Store, digest: str) -> KeyRecord | None:
    """The key whose hash is ``digest``, or None."""
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(ApiKey).where(ApiKey.hash == digest))).first()
    return None if row is None else KeyRecord.model_validate(row, from_attributes=True)


async def revoke_key(store: Store, name: str, *, env_admins: int = 0) -> None:
    """Delete the key ``name``; refused for the last admin key (``env_admins`` counts the
    admin keys that live in the environment, which count as admins too)."""
    async with store.engine.begin() as conn:
        row = (await conn.execute(select(ApiKey).where(ApiKey.name == name))).first()
        if row is None:
            names = (await conn.execute(select(ApiKey.name).order_by(ApiKey.name))).scalars()
            allowed = ", ".join(names) or "none"
            raise InvalidRequest(
                f"name: no key named {name!r} (keys: {allowed})",
                field="name",
                limit=f"one of {allowed}",
            )
        if row.admin:
            admins = await conn.scalar(
                select(func.count()).select_from(ApiKey).where(ApiKey.admin.is_(True))
            )
            if int(admins or 0) + env_admins <= 1:
                raise InvalidRequest(
                    f"name: {name!r} is the last admin key; create another admin key first",
                    field="name",
                )
        await conn.execute(delete(ApiKey).where(ApiKey.name == name))


def period_start(period: str, now: datetime) -> datetime:
    """The start of the current budget period (UTC)."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


async def spent(store: Store, owner: str, since: datetime) -> float:
    """What ``owner``'s jobs created since ``since`` cost."""
    async with store.engine.connect() as conn:
        total = await conn.scalar(
            select(func.coalesce(func.sum(Job.cost), 0.0)).where(
                Job.owner == owner, Job.created_at >= since
            )
        )
    return float(total or 0.0)


async def standing(
    store: Store, owner: str, now: datetime, period: str | None
) -> tuple[int, datetime | None, float]:
    """In one query: ``owner``'s jobs in the minute before ``now``, the oldest of them, and
    what its jobs since the start of ``period`` cost (0 without a period)."""
    minute = now - timedelta(minutes=1)
    since = period_start(period, now) if period is not None else minute
    recent = Job.created_at > minute
    row = await _one(
        store,
        select(
            func.count(case((recent, 1))),
            func.min(case((recent, Job.created_at))),
            func.coalesce(func.sum(case((Job.created_at >= since, Job.cost))), 0.0),
        ).where(Job.owner == owner, Job.created_at >= min(since, minute)),
    )
    oldest = row[1]
    if isinstance(oldest, str):  # SQLite hands back text through an untyped CASE
        oldest = datetime.fromisoformat(oldest)
    if isinstance(oldest, datetime) and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return int(row[0]), oldest if isinstance(oldest, datetime) else None, float(row[2] or 0.0)


async def _one(store: Store, query: Select[Any]) -> tuple[Any, ...]:
    async with store.engine.connect() as conn:
        return tuple((await conn.execute(query)).one())
