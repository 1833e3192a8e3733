"""What every route needs, as named dependencies: ``ctx: Ctx`` in a route's signature."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request

from imagegate.backplane import Backplane
from imagegate.config import Settings
from imagegate.gateway import Gateway
from imagegate.request import Attempt
from imagegate.server.metrics import Metrics
from imagegate.server.presign import UrlSigner

RECENT_LATENCIES = 50


@dataclass
class ProviderStats:
    """What /v1/providers shows beyond the breaker: recent latency and the last outcome."""

    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_LATENCIES))
    last_ok_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None

    def p50(self) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[len(ordered) // 2]


@dataclass
class ServerContext:
    """The gateway, the backplane and the server's own state, one per app."""

    settings: Settings
    gateway: Gateway
    backplane: Backplane
    metrics: Metrics
    stats: dict[str, ProviderStats] = field(default_factory=dict)
    signer: UrlSigner | None = None
    """Signs image URLs (auth on); None = plain URLs."""
    a1111_checkpoint: dict[str, str] = field(default_factory=dict)
    """The A1111 checkpoint set by POST /sdapi/v1/options: ``{"route"|"provider": NAME}``."""
    a1111_options: dict[str, Any] = field(default_factory=dict)
    webhooks: bool = False
    """Whether a webhook signing secret is set (else ``webhook_url`` is refused)."""
    event_streams: dict[str | None, int] = field(default_factory=dict)
    """Job event streams open now, per key name (None = callers without a named key)."""

    def image_url(self, base: str, image_id: str) -> str:
        """Where an image is fetched: presigned (expiry + signature) when auth is on."""
        url = f"{base}/v1/images/{image_id}"
        return url if self.signer is None else f"{url}?{self.signer.query(image_id)}"

    def record_attempts(self, attempts: list[Attempt], when: datetime) -> None:
        """Keep each provider's recent latency and last error."""
        for attempt in attempts:
            stats = self.stats.setdefault(attempt.provider, ProviderStats())
            if attempt.outcome == "ok":
                stats.latencies.append(attempt.elapsed_s)
                stats.last_ok_at = when
            elif attempt.outcome == "error" and attempt.error is not None:
                stats.last_error = f"{attempt.error.type}: {attempt.error.message}"
                stats.last_error_at = when


def context_of(request: Request) -> ServerContext:
    """The app's ServerContext (set by create_app's lifespan)."""
    ctx: ServerContext = request.app.state.ctx
    return ctx


async def get_ctx(request: Request) -> ServerContext:
    """:func:`context_of`, as a dependency.

    Async on purpose, as every dependency here: FastAPI runs a plain ``def`` dependency in a
    worker thread, two thread hops a request for what is an attribute lookup.
    """
    return context_of(request)


Ctx = Annotated[ServerContext, Depends(get_ctx)]


async def base_url(request: Request) -> str:
    """The server's base URL as the caller reached it, without a trailing slash."""
    return str(request.base_url).rstrip("/")


BaseUrl = Annotated[str, Depends(base_url)]
