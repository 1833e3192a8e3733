"""How one process runs jobs: the backplane its config names, the one job handler, the
breakers it shares.

``JobRunner`` owns the life of every job this process takes, on either backplane: the
backplane (local, or PostgreSQL when ``[scale] backplane`` is set) submits, claims, reports
progress, ends (through its ``Recorder``), requeues (``instead_of_requeue``) and reads the
outcome back (``JobOutcome.unsuccessful`` for a failure, whichever process ran it); the
handler here runs each job through the Gateway, with the deadline its caller feels; and the
breakers are shared through the backplane, so every replica and worker sees one opened
anywhere. Its ``WebhookSender`` (when a signing secret is set) posts the ends of jobs with a
webhook from the outbox the backplane's end wrote (``imagegate.backplane.webhooks``). The
server translates HTTP to and from it; ``imagegate worker`` runs it alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from imagegate import tracing
from imagegate.backplane.base import (
    Backplane,
    BreakerSnapshot,
    JobContext,
    Recorder,
    paid_providers,
)
from imagegate.backplane.local import LocalBackplane
from imagegate.backplane.webhooks import WebhookSender
from imagegate.config import Settings
from imagegate.errors import ConfigError, ImagegateError
from imagegate.gateway import Gateway
from imagegate.request import ImageResult

__all__ = ["JobEnded", "JobRunner", "build_backplane"]

log = logging.getLogger("imagegate.jobs")

JobEnded = Callable[[JobContext, ImageResult | None, str, ImagegateError | None, float], None]
"""Told of each job's end: the job, its result, "succeeded" / "failed" / "cancelled", its
error, and the seconds it ran (the server counts these in its metrics)."""


def build_backplane(
    settings: Settings, gateway: Gateway, worker_queues: Sequence[str] | None = None
) -> Backplane:
    """The PostgreSQL backplane when ``[scale] backplane`` names one, else the local one, on
    the Store the Gateway was handed."""
    if gateway.store is None:
        raise ConfigError("running jobs needs the store; create the Gateway with store=True")
    if settings.scale.backplane:
        from imagegate.backplane.postgres import postgres_backplane

        return postgres_backplane(settings, gateway, worker_queues)
    return LocalBackplane(
        gateway.store,
        max_queue=settings.server.max_queue,
        concurrency={name: p.config.concurrency for name, p in gateway.providers.items()},
        paid=paid_providers(gateway.providers),
    )


class JobRunner:
    """This process's jobs: one backplane, one handler, shared breakers."""

    def __init__(
        self,
        gateway: Gateway,
        backplane: Backplane | None = None,
        *,
        worker_queues: Sequence[str] | None = None,
        on_end: JobEnded | None = None,
        webhooks: WebhookSender | None = None,
    ) -> None:
        self.gateway = gateway
        self.backplane = (
            backplane
            if backplane is not None
            else build_backplane(gateway.settings, gateway, worker_queues)
        )
        self.on_end = on_end
        """Told of each job's end (the server counts it in its metrics)."""
        self.webhooks = webhooks
        """Posts the ends of jobs with a webhook (any process's: the outbox is shared)."""
        self._saving: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Restore the breakers others opened, share ours from now on, start the workers."""
        await self._restore_breakers()
        self._share_breakers()
        await self.backplane.start(self._handle)
        if self.webhooks is not None:
            await self.webhooks.start()

    async def stop(self) -> None:
        await self.backplane.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()

    async def _handle(self, job: JobContext) -> ImageResult:
        """Run one job through the gateway; its end is recorded by the job's recorder."""
        started = time.monotonic()
        attributes = {
            "imagegate.job.id": job.job_id,
            "imagegate.job.source": job.source,
            "imagegate.job.queued_s": round(job.queued_s, 6),
        }
        with tracing.span(
            "job", kind="consumer", attributes=attributes, parent=job.traceparent, root=True
        ) as span:
            try:
                result = await self.gateway.execute(
                    job.job_id,
                    job.request,
                    progress=job.progress,
                    recorder=job.recorder,
                    queued_s=job.queued_s,
                    caller_waits=job.caller_waits,
                )
            except ImagegateError as exc:
                if isinstance(job.recorder, Recorder) and job.recorder.requeued:
                    tracing.set_attributes(span, {"imagegate.outcome": "requeued"})
                    raise  # not an end: the job runs again
                tracing.set_attributes(span, {"imagegate.outcome": "failed"})
                tracing.error(span, exc.message)
                self._ended(job, None, "failed", exc, started)
                raise
            except asyncio.CancelledError:
                tracing.set_attributes(span, {"imagegate.outcome": "cancelled"})
                self._ended(job, None, "cancelled", None, started)
                raise
            tracing.set_attributes(
                span, {"imagegate.outcome": "succeeded", "imagegate.provider": result.provider}
            )
        self._ended(job, result, "succeeded", None, started)
        return result

    def _ended(
        self,
        job: JobContext,
        result: ImageResult | None,
        outcome: str,
        error: ImagegateError | None,
        started: float,
    ) -> None:
        if self.webhooks is not None:
            self.webhooks.wake()
        if self.on_end is not None:
            self.on_end(job, result, outcome, error, time.monotonic() - started)

    # -- breakers ------------------------------------------------------------------------------

    def _share_breakers(self) -> None:
        """Save each breaker change to the backplane, and apply the changes others save."""
        router = self.gateway.router

        async def save(name: str) -> None:
            try:
                await self._save_breaker(name)
            except Exception as exc:  # the database may be away: the next change saves again
                log.warning("could not share the breaker of %s: %s", name, type(exc).__name__)

        def changed(name: str) -> None:
            task = asyncio.get_running_loop().create_task(save(name))
            self._saving.add(task)
            task.add_done_callback(self._saving.discard)

        router.on_breaker = changed
        self.backplane.breakers.watch(
            lambda s: router.apply_shared(s.provider, s.state, s.opened_until, s.last_error)
        )

    async def _save_breaker(self, name: str) -> None:
        breaker = self.gateway.router.breakers.get(name)
        if breaker is None:
            return
        until = None
        if breaker.is_open:
            until = datetime.fromtimestamp(
                time.time() + breaker.opened_until - time.monotonic(), UTC
            )
        await self.backplane.breakers.save(
            BreakerSnapshot(
                name, breaker.shared_state, until, breaker.consecutive, breaker.last_error
            )
        )

    async def _restore_breakers(self) -> None:
        """Open the breakers another process saved as open and not yet due for a probe."""
        now = datetime.now(UTC)
        for name, snapshot in (await self.backplane.breakers.load()).items():
            breaker = self.gateway.router.breakers.get(name)
            if breaker is None or snapshot.state != "open" or snapshot.opened_until is None:
                continue
            if snapshot.opened_until > now:
                breaker.open((snapshot.opened_until - now).total_seconds())
                breaker.last_error = snapshot.last_error
