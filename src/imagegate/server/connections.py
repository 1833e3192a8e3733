"""Bounded connections for ``imagegate serve``: what uvicorn is told, and what it lacks.

uvicorn's default HTTP parser (httptools) reads request headers without a size limit, and no
uvicorn parser times out a client that connects and then sends nothing (or a byte a minute):
the keep-alive timer only starts after a first answer. So the server runs
:class:`BoundedHttpToolsProtocol`, uvicorn's httptools protocol (the cheaper parser: it costs
about a third of h11's per request) with the missing bounds added, which

* answers 400 and closes the connection when the request line plus headers pass
  ``max_header_bytes`` (counted as they arrive, so a head that never ends is cut off too),
* closes a connection whose request head has not fully arrived ``header_timeout_s`` after it
  opened or after its previous answer (slow-loris and silent connections), and
* keeps at most ``max_connections`` open (at most half the file-descriptor limit): one over
  that closes the connection that has waited longest for a request head (usually the newcomer
  or an idle keep-alive one), never one whose request is being served, so silent connections
  cannot use up the file descriptors or lock out clients that send their requests promptly.

Where httptools is missing, :class:`BoundedH11Protocol` does the same on h11, whose
``max_incomplete_event_size`` caps the head.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from imagegate.config import ServerSettings

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class _HeadTimer:
    """The request-head timeout and the connection cap, for either of uvicorn's protocols."""

    header_timeout_s: float = 10.0
    max_connections: int = 512

    _head_timer: asyncio.TimerHandle | None = None
    _waiting_since: float = 0.0
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    connections: set[Any]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]  # the protocol, next in the MRO
        self._opened()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def waiting_for_head(self) -> bool:
        """True while no request is being read or answered on this connection."""
        raise NotImplementedError

    def _opened(self) -> None:
        self._wait_for_head()
        if len(self.connections) > self.max_connections:
            self._shed()

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
            c for c in self.connections if isinstance(c, _HeadTimer) and c.waiting_for_head()
        ]
        if waiting:
            oldest = min(waiting, key=lambda c: c._waiting_since)
            oldest.transport.close()


class BoundedH11Protocol(_HeadTimer, H11Protocol):
    """uvicorn's h11 protocol with a request-head timeout and a cap on open connections (the
    head's size is capped by h11's ``max_incomplete_event_size``)."""

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._wait_for_head()

    def waiting_for_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()


class HeadTooLarge(Exception):
    """A request head past ``max_header_bytes`` (httptools turns it into a 400)."""


if HttpToolsProtocol is not None:

    class BoundedHttpToolsProtocol(_HeadTimer, HttpToolsProtocol):
        """uvicorn's httptools protocol with a cap on the request head's size, a request-head
        timeout and a cap on open connections.

        The head is counted as it arrives: every chunk received while a head is incomplete
        counts whole (a chunk that also ends the previous request's body may count a little
        more), and a head completed in a chunk counts its request target and headers.
        """

        max_header_bytes: int = 64 * 1024

        _in_head = True  # no complete request head since the connection opened or answered
        _head_bytes = 0  # bytes of the chunks received while the current head is incomplete
        _head_seen = 0  # its request target and headers, as parsed
        _began = False  # a request began in the chunk being parsed

        def data_received(self, data: bytes) -> None:
            self._began = False
            super().data_received(data)
            if not self._in_head or self.transport.is_closing():
                return
            self._head_bytes = len(data) if self._began else self._head_bytes + len(data)
            if self._head_bytes > self.max_header_bytes:
                self.send_400_response("Request headers too large.")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes, self._head_seen, self._began = True, 0, 0, True

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            pipelined = bool(self.pipeline)
            super().on_response_complete()
            if self.transport.is_closing():
                return
            if not pipelined:
                self._in_head = True
            self._wait_for_head()

        def waiting_for_head(self) -> bool:
            return self._in_head and not self.transport.is_closing()

        def _count(self, size: int) -> None:
            self._head_seen += size
            if self._head_seen > self.max_header_bytes:
                raise HeadTooLarge(f"the request head passed {self.max_header_bytes} bytes")


Bounded = type[BoundedH11Protocol] | type["BoundedHttpToolsProtocol"]


def connection_cap(server: ServerSettings) -> int:
    """``server.max_connections``, lowered to half the process's file-descriptor limit (the other
    half stays for the database, upstream connections and image files), at least 8."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return server.max_connections
    return max(8, min(server.max_connections, soft // 2))


def bounded_protocol(server: ServerSettings, parser: str = "httptools") -> Bounded:
    """The protocol class carrying ``server``'s head size cap, header timeout and connection
    cap, on ``parser`` ("httptools", or "h11"; h11 also where httptools is missing)."""
    base: Bounded = BoundedH11Protocol
    if parser == "httptools" and HttpToolsProtocol is not None:
        base = BoundedHttpToolsProtocol
    return type(
        base.__name__,
        (base,),
        {
            "header_timeout_s": server.header_timeout_s,
            "max_connections": connection_cap(server),
            "max_header_bytes": server.max_header_bytes,
        },
    )


def uvicorn_config(
    app: Any, server: ServerSettings, host: str, port: int, *, parser: str = "httptools"
) -> uvicorn.Config:
    """The uvicorn configuration ``imagegate serve`` runs ``app`` with."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=bounded_protocol(server, parser),
        h11_max_incomplete_event_size=server.max_header_bytes,
        timeout_keep_alive=server.keep_alive_s,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
