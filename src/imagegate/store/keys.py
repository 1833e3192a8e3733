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
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from imagegate.errors import InvalidRequest
from imagegate.store.db import Store
from imagegate.store.models import ApiKey, Job, period_start

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
        spent=0.0,
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


async def standing(
    store: Store, key: KeyRecord, now: datetime
) -> tuple[int, datetime | None, float]:
    """What a key's limits are checked against, in small indexed reads that do not grow with
    its traffic: its jobs in the minute before ``now`` (counted up to its rate, 0 without
    one), the oldest of those, and what it spent in its current budget period (0 without a
    budget; the key row's ``spent``, summed from the jobs again only when a period starts)."""
    minute = now - timedelta(minutes=1)
    mine = (Job.owner == key.name, Job.created_at > minute)
    recent = select(Job.created_at).where(*mine).limit(key.rate_per_min or 0).subquery()
    query = select(  # one round trip: the rate's two figures and the spend on the key's row
        select(func.count()).select_from(recent).scalar_subquery(),
        select(func.min(Job.created_at)).where(*mine).scalar_subquery(),
        ApiKey.spent,
        ApiKey.spent_since,
    ).where(ApiKey.name == key.name)
    async with store.engine.connect() as conn:
        row = (await conn.execute(query)).first()
        if row is None:  # revoked meanwhile
            return 0, None, 0.0
        used = 0.0
        if key.budget is not None and key.period is not None:
            start = period_start(key.period, now)
            fresh = _aware(row[3]) == start
            used = float(row[2]) if fresh else await _sum_spent(conn, key.name, start)
    count = int(row[0]) if key.rate_per_min is not None else 0
    return count, _aware(row[1]), used


async def _sum_spent(conn: AsyncConnection, name: str, start: datetime) -> float:
    """The key's spend since ``start`` summed from its jobs, and kept on its row (which each
    job's end then adds to, Store.end): once a period."""
    total = await conn.scalar(
        select(func.coalesce(func.sum(Job.cost), 0.0)).where(
            Job.owner == name, Job.created_at >= start
        )
    )
    used = float(total or 0.0)
    await conn.execute(
        update(ApiKey).where(ApiKey.name == name).values(spent=used, spent_since=start)
    )
    await conn.commit()
    return used


def _aware(value: Any) -> datetime | None:
    """A timestamp read through an untyped expression (SQLite gives text) as aware UTC."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return None
