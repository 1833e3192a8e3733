"""The send gate: how the router races two providers' handshakes without sending twice.

When a provider's connect and TLS handshake lag (``hedge_connect_after_s``), the router starts
the next provider on the route as well. Each attempt runs with its own ``SendGate`` in a
context variable; the transport calls ``ready()`` once its connection is up, just before the
first byte of a request goes out, and waits there until the router grants it. The router
grants the first to arrive and cancels the other, so no request body is ever sent twice: this
is safe even for paid providers. The gate also tracks the stage the attempt is in, so the
loser of a race can be reported as "stalled in tls".
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import Literal

HandshakeStage = Literal["dns", "connect", "tls"]


class SendGate:
    """Holds an attempt at the moment its connection is ready, until the router lets it send."""

    def __init__(self, *, granted: bool = False) -> None:
        self.connected = asyncio.Event()
        self.granted = asyncio.Event()
        if granted:
            self.grant()
        self.stage: HandshakeStage = "connect"

    def grant(self) -> None:
        """Let the attempt send (now, or as soon as it connects)."""
        self.granted.set()

    async def ready(self) -> None:
        """Called by the transport when connected: report it, then wait for the grant."""
        self.connected.set()
        await self.granted.wait()


current_gate: ContextVar[SendGate | None] = ContextVar("imagegate_send_gate", default=None)
