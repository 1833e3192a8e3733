"""Who is calling, and may they: managed keys' routes, rate and budget, checked before a job.

The auth middleware puts a :class:`Caller` in the request's state: an environment key is an
admin with no name and no limits; a managed key (``imagegate keys create``) carries its name
and limits. :func:`admit` runs before any job is queued, so a refused request never reaches a
provider: a route the key may not use is a 403, over its rate a 429 ``rate_limit_exceeded``
with Retry-After, over its budget a 429 ``insufficient_quota``. Rate and spend are counted from
the jobs table, which every replica shares when scaled out.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from imagegate.request import ImageRequest
from imagegate.server.errors import openai_error
from imagegate.store import Store
from imagegate.store.keys import KeyRecord, find_key, standing

CACHE_S = 5.0
"""How long a key lookup is reused: a revoked key stops working within this."""


@dataclass(frozen=True)
class Caller:
    """The key a request came with."""

    name: str | None
    admin: bool
    key: KeyRecord | None = None


ADMIN = Caller(name=None, admin=True)


class KeyCache:
    """Managed-key lookups by hash, kept ``CACHE_S`` seconds (misses too)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, Caller | None]] = {}

    def clear(self) -> None:
        """Forget every lookup (a key was revoked here)."""
        self._entries.clear()

    async def caller(self, store: Store, digest: str) -> Caller | None:
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        record = await find_key(store, digest)
        found = None if record is None else Caller(record.name, record.admin, record)
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[digest] = (now + CACHE_S, found)
        return found


class Refused(Exception):
    """A request a key's limits refuse; answered in OpenAI's error shape."""

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


async def _refused(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Refused)
    headers = None
    if exc.retry_after is not None:
        headers = {"retry-after": str(max(1, math.ceil(exc.retry_after)))}
    kind = "permission_error" if exc.status == 403 else "rate_limit_error"
    return openai_error(exc.status, kind, exc.message, code=exc.code, headers=headers)


def install(app: FastAPI) -> None:
    """Answer :class:`Refused` with its status, code and Retry-After."""
    app.add_exception_handler(Refused, _refused)


def caller_of(request: Request) -> Caller | None:
    """The request's caller (None with auth off)."""
    caller = request.scope.get("state", {}).get("caller")
    return caller if isinstance(caller, Caller) else None


async def get_caller(request: Request) -> Caller | None:
    """:func:`caller_of`, as a dependency."""
    return caller_of(request)


CallerDep = Annotated[Caller | None, Depends(get_caller)]


def only_owner(caller: Caller | None) -> str | None:
    """Whose history a caller sees: a tenant's own name; None (everyone's) for admins and
    with auth off."""
    if caller is None or caller.admin or caller.key is None:
        return None
    return caller.name


def sees(caller: Caller | None, owner: str | None) -> bool:
    """Whether ``caller`` may see a job (or its images and events) owned by ``owner``."""
    mine = only_owner(caller)
    return mine is None or mine == owner


def owner_of(caller: Caller | None) -> str | None:
    """The name a job is recorded under: a managed key's; None for environment keys."""
    return None if caller is None else caller.name


async def admit(store: Store, caller: Caller | None, request: ImageRequest) -> str | None:
    """Check a managed key's routes, rate and budget; the job's owner when admitted."""
    if caller is None or caller.key is None:
        return owner_of(caller)
    key = caller.key
    if key.routes is not None:
        wanted = request.provider or request.route or "default"
        if wanted not in key.routes:
            raise Refused(
                403,
                "route_not_allowed",
                f"the key {key.name!r} may not use {wanted!r}; it may use: {', '.join(key.routes)}",
            )
    now = datetime.now(UTC)
    if key.rate_per_min is None and key.budget is None:
        return key.name
    count, oldest, used = await standing(store, key, now)
    if key.rate_per_min is not None and count >= key.rate_per_min:
        wait = 60.0 - (now - oldest).total_seconds() if oldest is not None else 60.0
        raise Refused(
            429,
            "rate_limit_exceeded",
            f"the key {key.name!r} may submit {key.rate_per_min} requests a minute; "
            f"retry after {max(1, math.ceil(wait))} s",
            retry_after=max(1.0, wait),
        )
    if key.budget is not None and key.period is not None and used >= key.budget:
        raise Refused(
            429,
            "insufficient_quota",
            f"the key {key.name!r} has used its budget of {key.budget:.2f} this "
            f"{key.period} ({used:.2f}); raise it or wait for the next {key.period}",
        )
    return key.name
