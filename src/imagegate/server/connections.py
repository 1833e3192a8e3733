"""Bounded connections for ``imagegate serve``: what uvicorn is told, and the one thing it lacks.

uvicorn's default HTTP parser (httptools) reads request headers without a size limit, and no
uvicorn parser times out a client that connects and then sends nothing (or a byte a minute):
the keep-alive timer only starts after a first answer. So the server runs the h11 parser, whose
``max_incomplete_event_size`` caps the request line plus headers (more is a 400 and the
connection closes), with :class:`BoundedH11Protocol` on top, which

* closes a connection whose request head has not fully arrived ``header_timeout_s`` after it
  opened or after its previous answer (slow-loris and silent connections), and
* keeps at most ``max_connections`` open (at most half the file-descriptor limit): one over
  that closes the connection that has waited longest for a request head (usually the newcomer
  or an idle keep-alive one), never one whose request is being served, so silent connections
  cannot use up the file descriptors or lock out clients that send their requests promptly.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from imagegate.config import ServerSettings


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head timeout and a cap on open connections."""

    header_timeout_s: float = 10.0
    max_connections: int = 512

    _head_timer: asyncio.TimerHandle | None = None
    _waiting_since: float = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for_head()
        if len(self.connections) > self.max_connections:
            self._shed()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._wait_for_head()

    def waiting_for_head(self) -> bool:
        """True while no request is being read or answered on this connection."""
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _wait_for_head(self) -> None:
        self._stop_head_timer()
        self._waiting_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.waiting_for_head():
            self.transport.close()

    def _shed(self) -> None:
        waiting = [
            c
            for c in self.connections
            if isinstance(c, BoundedH11Protocol) and c.waiting_for_head()
        ]
        if waiting:
            oldest = min(waiting, key=lambda c: c._waiting_since)
            oldest.transport.close()


def connection_cap(server: ServerSettings) -> int:
    """``server.max_connections``, lowered to half the process's file-descriptor limit (the other
    half stays for the database, upstream connections and image files), at least 8."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return server.max_connections
    return max(8, min(server.max_connections, soft // 2))


def bounded_protocol(server: ServerSettings) -> type[BoundedH11Protocol]:
    """The protocol class carrying ``server``'s header timeout and connection cap."""
    return type(
        "BoundedH11Protocol",
        (BoundedH11Protocol,),
        {
            "header_timeout_s": server.header_timeout_s,
            "max_connections": connection_cap(server),
        },
    )


def uvicorn_config(app: Any, server: ServerSettings, host: str, port: int) -> uvicorn.Config:
    """The uvicorn configuration ``imagegate serve`` runs ``app`` with."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=bounded_protocol(server),
        h11_max_incomplete_event_size=server.max_header_bytes,
        timeout_keep_alive=server.keep_alive_s,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
