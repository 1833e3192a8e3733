"""Webhooks: each ended job with a ``webhook_url`` is posted there, signed, at least once.

The job's end goes into the outbox (``imagegate.store.outbox``) in the transaction that ends
the job, on either backplane. Every process that runs a :class:`JobRunner` (each ``serve``
replica, each ``worker``) runs a :class:`WebhookSender`: it looks for due events every
``poll_s`` (at once when a job ends in this process), holds one for the length of an attempt,
and posts the job document signed per Standard Webhooks (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``, with the ``standardwebhooks`` package). A 2xx answer delivers it; any
other answer, a redirect (never followed) or a transport error is recorded on the job and
retried after ``backoff_s``, doubling up to ``max_backoff_s``, until ``retry_for_s`` after the
job ended, when it is given up as ``failed``. A process killed mid-send loses nothing: its hold
runs out and another process (or it, restarted) sends the event again.

Each send resolves the destination, refuses a non-public address unless ``allow_private``
(``imagegate.transport.guard``), and goes to that address through the one HTTP layer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from imagegate import redaction
from imagegate.config import Settings, WebhookSettings
from imagegate.deadline import Deadline
from imagegate.errors import ConfigError, ImagegateError, InvalidRequest
from imagegate.store import outbox
from imagegate.store.records import JobRecord
from imagegate.transport import StageBudgets, Transport
from imagegate.transport.guard import check_url, pinned, resolve

if TYPE_CHECKING:
    from standardwebhooks import Webhook

    from imagegate.store import Store

__all__ = ["Document", "WebhookSender", "signing_secret"]

log = logging.getLogger("imagegate.webhooks")

Document = Callable[[JobRecord], Mapping[str, Any]]
"""The payload posted for an ended job (the server's job document)."""

LEASE_MARGIN_S = 5.0
"""A send holds its event this much longer than the attempt's timeout."""
MAX_SENDING = 16
"""Events one process posts at once."""
SECRET_BYTES = (24, 64)


def signing_secret(settings: Settings) -> str | None:
    """The signing secret from the variable ``webhooks.secret_env`` names; None when unset.

    It must be ``whsec_`` and base64 of 24 to 64 bytes (what Standard Webhooks prescribes);
    anything else is a ConfigError naming the variable (never its value).
    """
    name = settings.webhooks.secret_env
    secret = os.environ.get(name, "").strip()
    if not secret:
        return None
    redaction.remember(secret)
    try:
        raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not SECRET_BYTES[0] <= len(raw) <= SECRET_BYTES[1]:
        raise ConfigError(
            f"{name} must hold a Standard Webhooks secret: 'whsec_' and the base64 of "
            f"{SECRET_BYTES[0]} to {SECRET_BYTES[1]} random bytes",
            key="webhooks.secret_env",
            fix=f'set {name}="whsec_$(openssl rand -base64 32)"',
        )
    return secret


class WebhookSender:
    """Posts the due events of the outbox (see the module doc); ``wake`` looks at once."""

    def __init__(
        self, store: Store, settings: WebhookSettings, secret: str, document: Document
    ) -> None:
        from standardwebhooks import Webhook

        self.store = store
        self.settings = settings
        self.document = document
        self._webhook: Webhook = Webhook(secret)
        budget = settings.timeout_s
        self._transport = Transport(
            "webhook",
            StageBudgets(budget, budget, budget, budget, budget, attempt_s=budget),
            trust_env=False,  # the address is checked here: no proxy may reach another
            max_connections=MAX_SENDING,
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sending: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop looking and sending; events being sent stay held until their lease ends."""
        tasks = [t for t in (self._task, *self._sending.values()) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        await self._transport.aclose()

    def wake(self) -> None:
        """Look for due events now (a job just ended in this process)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.send_due()
            except Exception as exc:  # the database may be away: look again next time
                log.warning("webhook outbox unreadable: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.poll_s):
                    await self._wake.wait()

    async def send_due(self) -> None:
        """Hold and start sending every due event, up to ``MAX_SENDING`` at once."""
        room = MAX_SENDING - len(self._sending)
        if room <= 0:
            return
        now = datetime.now(UTC)
        lease = timedelta(seconds=self.settings.timeout_s + LEASE_MARGIN_S)
        for job_id in await outbox.due(self.store, now, limit=room):
            if job_id in self._sending or not await outbox.claim(
                self.store, job_id, now, now + lease
            ):
                continue
            task = asyncio.get_running_loop().create_task(self._deliver(job_id))
            self._sending[job_id] = task
            task.add_done_callback(functools.partial(self._sent, job_id))

    def _sent(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._sending.pop(job_id, None)
        if not task.cancelled() and task.exception() is not None:  # its hold runs out: retried
            error = task.exception()
            log.warning("webhook of job %s not sent: %s: %s", job_id, type(error).__name__, error)

    async def _deliver(self, job_id: str) -> None:
        job = await self.store.get_job(job_id)
        if job is None or job.webhook is None or job.delivery is None:
            return
        started = time.monotonic()
        at = datetime.now(UTC)
        status: int | None = None
        error: str | None = None
        give_up = False
        try:
            status = await self._post(job)
        except asyncio.CancelledError:  # stopping: another sender may take it at once
            with contextlib.suppress(Exception):
                await asyncio.shield(outbox.release(self.store, job_id))
            raise
        except InvalidRequest as exc:  # the destination is not allowed (any more)
            error, give_up = f"refused: {exc.message}", True
        except ImagegateError as exc:
            error = f"{type(exc).__name__}: {exc.message}"
        else:
            if not 200 <= status < 300:
                error = f"HTTP {status}" + (
                    " (a redirect: redirects are not followed)" if 300 <= status < 400 else ""
                )
        attempt = {
            "at": at.isoformat(),
            "status": status,
            "error": error,
            "elapsed_s": round(time.monotonic() - started, 4),
        }
        if error is None:
            await outbox.record_attempt(
                self.store, job_id, attempt, status="delivered", delivered_at=datetime.now(UTC)
            )
            return
        failures = 1 + sum(1 for a in job.delivery.attempts if a.get("error"))
        wait = min(self.settings.max_backoff_s, self.settings.backoff_s * 2 ** (failures - 1))
        next_at = datetime.now(UTC) + timedelta(seconds=wait)
        ends = job.delivery.created_at + timedelta(seconds=self.settings.retry_for_s)
        if give_up or next_at > ends:
            await outbox.record_attempt(self.store, job_id, attempt, status="failed")
            log.warning("webhook of job %s given up after %d attempts", job_id, failures)
            return
        await outbox.record_attempt(self.store, job_id, attempt, status="pending", next_at=next_at)

    async def _post(self, job: JobRecord) -> int:
        """Post the job's document to its webhook; the HTTP status of the answer."""
        assert job.webhook is not None
        allow = self.settings.allow_private
        url = check_url(str(job.webhook.get("url", "")), allow_private=allow)
        address = await resolve(url, allow_private=allow, timeout_s=self.settings.timeout_s)
        target, headers, extensions = pinned(url, address)
        body = json.dumps(self.document(job), separators=(",", ":"), default=str)
        now = datetime.now(UTC)
        message_id = f"msg_{job.id}"
        headers |= {
            "content-type": "application/json",
            "user-agent": "imagegate-webhooks",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._webhook.sign(message_id, now, body),
        }
        answer = await self._transport.request(
            "POST",
            str(target),
            deadline=Deadline(self.settings.timeout_s),
            content=body.encode(),
            headers=headers,
            extensions=extensions,
        )
        return answer.status
