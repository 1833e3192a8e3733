"""A fault kit: real servers on 127.0.0.1 that misbehave on purpose, as pytest fixtures.

Each server binds an ephemeral port on 127.0.0.1, runs in background threads, and stops
within about 0.1 s at teardown. Load it with ``pytest_plugins = ["faults"]``.

Building blocks, for vendor fakes and router tests:

- ``FaultServer(behaviour, tls=...)``: a raw socket server; each connection runs one
  ``Behaviour``. ``server.set(behaviour)`` switches it for the next connections (a host that
  stalls now and recovers later). Behaviours: ``hold``, ``respond``, ``app``, ``hang``,
  ``hang_where`` (hangs the requests a predicate picks, answers the others),
  ``drip``, ``rst_mid_body``, ``cut_body``; as an HTTP proxy: ``tunnel`` (CONNECT, relayed),
  ``intercept(ca)`` (CONNECT, then TLS ended by the proxy with a certificate ``ca`` signed);
  ``respond(403)`` is a proxy that refuses the tunnel.
- ``serve_app(app)`` / ``serve_app(app, cert=leaf)``: an ASGI app (FastAPI, Starlette) on
  uvicorn in a thread, yielding its base URL.
- ``TcpRelay(port)``: a loopback port relayed to another one (a database, a broker); ``cut()``
  drops every relayed connection and refuses new ones, ``restore()`` listens again.

Fixtures: ``ca``, ``client_ssl``, ``server_ssl``, ``tls_stall``, ``bad_cert``, ``wrong_host_cert``,
``tls_ok_server``, ``refused``, ``unresolvable``, ``dns_stall``, ``reset_mid_body``,
``hang_after_request``, ``slow_drip``, ``short_body``, ``truncated_json``,
``wrong_content_type``, ``http_status``, ``fault_server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme
import uvicorn

_POLL_S = 0.05  # how often blocked server threads look at the stop flag
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass
class Request:
    """One HTTP request as a fault server read it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Reply:
    """What ``app`` handlers return: a status, headers and a body."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Reply:
        return cls(status, {"content-type": "application/json"}, json.dumps(obj).encode())


class Stopped(Exception):
    """The server is shutting down; behaviours let this propagate."""


class Conn:
    """One accepted connection, with stop-aware helpers for behaviours."""

    def __init__(self, sock: socket.socket, server: FaultServer) -> None:
        self.sock = sock
        self.server = server
        self.stop = server.stopping
        sock.settimeout(_POLL_S)

    def handshake(self) -> None:
        """Do the TLS handshake when the server has TLS; a no-op for plain HTTP."""
        if self.server.tls is None:
            return
        self.sock = self.server.tls.wrap_socket(
            self.sock, server_side=True, do_handshake_on_connect=False
        )
        while True:
            self._check()
            try:
                self.sock.do_handshake()
            except (TimeoutError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                continue
            return

    def _check(self) -> None:
        if self.stop.is_set():
            raise Stopped

    def recv(self) -> bytes:
        while True:
            self._check()
            try:
                return self.sock.recv(65536)
            except (TimeoutError, ssl.SSLWantReadError):
                continue

    def read_request(self) -> Request | None:
        """The next request (after the TLS handshake); None when the client closed."""
        self.handshake()
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.recv()
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = self.recv()
            if not chunk:
                break
            body += chunk
        request = Request(method, path, headers, body)
        self.server.requests.append(request)
        return request

    def send(self, data: bytes) -> None:
        self._check()
        self.sock.settimeout(5)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.settimeout(_POLL_S)

    def wait(self, seconds: float | None = None) -> None:
        """Sleep ``seconds`` (forever when None), waking at shutdown."""
        if self.stop.wait(seconds):
            raise Stopped

    def reset(self) -> None:
        """Close with RST instead of FIN (SO_LINGER 0)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


Behaviour = Callable[[Conn], None]


def head(status: int, headers: dict[str, str] | None = None, length: int | None = None) -> bytes:
    """An HTTP/1.1 status line and headers, with Connection: close."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    merged = {"connection": "close", **{k.lower(): v for k, v in (headers or {}).items()}}
    if length is not None:
        merged.setdefault("content-length", str(length))
    lines += [f"{name}: {value}" for name, value in merged.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def hold() -> Behaviour:
    """Accept TCP and never say anything: not the TLS handshake, not HTTP."""

    def run(conn: Conn) -> None:
        conn.wait()

    return run


def app(handler: Callable[[Request], Reply]) -> Behaviour:
    """Answer one request per connection with whatever ``handler`` returns."""

    def run(conn: Conn) -> None:
        request = conn.read_request()
        if request is None:
            return
        reply = handler(request)
        conn.send(head(reply.status, reply.headers, len(reply.body)) + reply.body)

    return run


def respond(
    status: int = 200,
    headers: dict[str, str] | None = None,
    body: bytes | str | dict[str, Any] | list[Any] = b"",
) -> Behaviour:
    """Answer every request with this status, headers and body (a dict/list as JSON)."""
    if isinstance(body, dict | list):
        reply = Reply.json(body, status)
        reply.headers.update(headers or {})
    else:
        data = body.encode() if isinstance(body, str) else body
        reply = Reply(status, dict(headers or {}), data)
    return app(lambda _request: reply)


def hang() -> Behaviour:
    """Read the request, then never answer."""

    def run(conn: Conn) -> None:
        conn.read_request()
        conn.wait()

    return run


def hang_where(hangs: Callable[[Request], bool], handler: Callable[[Request], Reply]) -> Behaviour:
    """Read the request; never answer the ones ``hangs`` picks, answer the rest by ``handler``.

    A backend whose image endpoint hangs while its metadata endpoint answers.
    """

    def run(conn: Conn) -> None:
        request = conn.read_request()
        if request is None:
            return
        if hangs(request):
            conn.wait()
        reply = handler(request)
        conn.send(head(reply.status, reply.headers, len(reply.body)) + reply.body)

    return run


def drip(interval_s: float, length: int = 100) -> Behaviour:
    """Send the headers at once, then one byte of the body every ``interval_s``."""

    def run(conn: Conn) -> None:
        conn.read_request()
        conn.send(head(200, {"content-type": "application/octet-stream"}, length))
        for _ in range(length):
            conn.send(b"x")
            conn.wait(interval_s)

    return run


def rst_mid_body(sent: int = 100, declared: int = 1000, pause_s: float = 0.1) -> Behaviour:
    """Send the headers and ``sent`` of ``declared`` body bytes, pause, then RST."""

    def run(conn: Conn) -> None:
        conn.read_request()
        conn.send(head(200, {"content-type": "application/json"}, declared) + b"x" * sent)
        conn.wait(pause_s)
        conn.reset()

    return run


def cut_body(sent: int = 40, declared: int = 100) -> Behaviour:
    """Declare ``declared`` bytes, send ``sent``, then close cleanly (FIN)."""

    def run(conn: Conn) -> None:
        conn.read_request()
        conn.send(head(200, {"content-type": "application/json"}, declared) + b"x" * sent)

    return run


def _connect_request(conn: Conn) -> tuple[str, int] | None:
    """Read a CONNECT request and answer 200; the host and port it asks for."""
    request = conn.read_request()
    if request is None or request.method != "CONNECT":
        return None
    host, _, port = request.path.rpartition(":")
    conn.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
    return host.strip("[]"), int(port)


def tunnel() -> Behaviour:
    """An HTTP proxy: CONNECT host:port opens a tunnel that relays both ways."""

    def run(conn: Conn) -> None:
        target = _connect_request(conn)
        if target is None:
            return
        with socket.create_connection(target, timeout=2) as upstream:
            _relay(conn.sock, upstream, conn.stop)

    return run


def intercept(ca: trustme.CA) -> Behaviour:
    """A TLS-inspecting proxy: it answers CONNECT, then ends the TLS handshake itself with a
    certificate for the asked host that ``ca`` signed."""

    def run(conn: Conn) -> None:
        target = _connect_request(conn)
        if target is None:
            return
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(target[0]).configure_cert(context)
        conn.sock.settimeout(2)
        with context.wrap_socket(conn.sock, server_side=True) as tls:  # the client refuses it
            tls.recv(1)

    return run


class FaultServer:
    """A loopback server whose behaviour per connection can change at run time."""

    def __init__(
        self,
        behaviour: Behaviour,
        *,
        tls: ssl.SSLContext | None = None,
        ca: trustme.CA | None = None,
    ) -> None:
        self.behaviour = behaviour
        self.tls = tls
        self.ca = ca
        self.stopping = threading.Event()
        self.accepted = 0
        self.requests: list[Request] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def client_ssl(self) -> ssl.SSLContext:
        """A client context that trusts this server's CA."""
        if self.ca is None:
            raise RuntimeError("this FaultServer was made without a CA")
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def set(self, behaviour: Behaviour) -> None:
        """Use ``behaviour`` for every connection accepted from now on."""
        self.behaviour = behaviour

    def start(self) -> FaultServer:
        self._listener.listen(64)
        self._listener.settimeout(_POLL_S)
        self._acceptor.start()
        return self

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.accepted += 1
                self._socks.append(sock)
                thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
                self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        conn = Conn(sock, self)
        try:
            self.behaviour(conn)
        except (Stopped, OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.sock.close()
            sock.close()

    def stop(self) -> None:
        self.stopping.set()
        if self._acceptor.is_alive():
            self._acceptor.join(2)
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(2)
        for sock in self._socks:
            sock.close()
        self._listener.close()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TcpRelay:
    """127.0.0.1:<port> relayed to 127.0.0.1:``target``, until ``cut``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpRelay:
        """Listen (on the same port as before, after a ``cut``)."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(_POLL_S)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()
        return self

    restore = start

    def cut(self) -> None:
        """Drop every relayed connection and refuse new ones (the port stops listening)."""
        listener, self._listener = self._listener, None
        if self._acceptor is not None:
            self._acceptor.join(2)  # its accept() holds the port until it returns
        if listener is not None:
            listener.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._socks += [client, upstream]
            threading.Thread(target=_relay, args=(client, upstream), daemon=True).start()

    def __enter__(self) -> TcpRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cut()


def _relay(a: socket.socket, b: socket.socket, stop: threading.Event | None = None) -> None:
    """Copy bytes both ways between ``a`` and ``b`` until one side closes (or ``stop``)."""
    ends = {a: b, b: a}
    try:
        while stop is None or not stop.is_set():
            ready, _, _ = select.select(list(ends), [], [], _POLL_S)
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                ends[sock].sendall(data)
    except (OSError, ValueError):  # a side was closed under us (TcpRelay.cut)
        return
    finally:
        for sock in (a, b):
            with contextlib.suppress(OSError, ValueError):
                sock.shutdown(socket.SHUT_RDWR)


class _AppServer(uvicorn.Server):
    """uvicorn that, after its graceful wait, aborts connections still open.

    A TLS keep-alive connection whose client never answers close_notify would otherwise
    outlive the server's event loop and leak its socket.
    """

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        for connection in list(self.server_state.connections):
            connection.transport.abort()
        await asyncio.sleep(0)


@contextlib.contextmanager
def serve_app(app: Any, *, cert: trustme.LeafCert | None = None, ws: str = "none") -> Iterator[str]:
    """Run an ASGI app on uvicorn in a thread; yield its base URL (https with ``cert``).

    ``ws = "websockets-sansio"`` serves the app's WebSocket routes too (needs ``websockets``).
    """
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP; without
    # it every answer written in two parts waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    with contextlib.ExitStack() as stack:
        tls: dict[str, Any] = {}
        if cert is not None:
            pem = stack.enter_context(cert.private_key_and_cert_chain_pem.tempfile())
            tls = {"ssl_certfile": pem, "ssl_keyfile": pem}
        config = uvicorn.Config(
            app,
            log_config=None,
            log_level="warning",
            ws=ws,
            http="h11",
            loop="asyncio",
            lifespan="auto",
            **tls,
        )
        # Wait this long for open requests at shutdown; typed int, any number works.
        config.timeout_graceful_shutdown = 0.2  # type: ignore[assignment]
        server = _AppServer(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            started = time.monotonic()
            while not server.started:
                if not thread.is_alive() or time.monotonic() - started > 10:
                    raise RuntimeError("uvicorn did not start")
                time.sleep(0.01)
            yield f"{'https' if cert else 'http'}://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(5)
            sock.close()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A throwaway certificate authority the test clients trust."""
    return trustme.CA()


@pytest.fixture(scope="session")
def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    """A client SSL context that trusts only ``ca``."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture(scope="session")
def server_ssl(ca: trustme.CA) -> ssl.SSLContext:
    """A server SSL context with a ``ca``-signed certificate for 127.0.0.1 and localhost."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture
def fault_server() -> Iterator[Callable[..., FaultServer]]:
    """A factory: ``fault_server(behaviour, tls=ctx)`` starts a FaultServer, stopped after."""
    servers: list[FaultServer] = []

    def make(behaviour: Behaviour, **kwargs: Any) -> FaultServer:
        server = FaultServer(behaviour, **kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def tls_stall(fault_server: Callable[..., FaultServer], server_ssl: ssl.SSLContext) -> str:
    """An https URL whose server accepts TCP and never answers the ClientHello."""
    return fault_server(hold(), tls=server_ssl).url


def _tls_server(fault_server: Callable[..., FaultServer], ca: trustme.CA, *names: str) -> str:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return fault_server(respond(200, body={"ok": True}), tls=ctx).url


@pytest.fixture
def bad_cert(fault_server: Callable[..., FaultServer]) -> str:
    """An https URL whose certificate is signed by a CA that ``client_ssl`` does not trust."""
    return _tls_server(fault_server, trustme.CA(), "127.0.0.1", "localhost")


@pytest.fixture
def wrong_host_cert(fault_server: Callable[..., FaultServer], ca: trustme.CA) -> str:
    """An https URL whose trusted certificate names another host (other.example)."""
    return _tls_server(fault_server, ca, "other.example")


@pytest.fixture
def tls_ok_server(
    fault_server: Callable[..., FaultServer], server_ssl: ssl.SSLContext, ca: trustme.CA
) -> FaultServer:
    """A healthy https server answering ``{"ok": true}``; ``.set()`` changes it, ``.ca``."""
    return fault_server(respond(200, body={"ok": True}), tls=server_ssl, ca=ca)


@pytest.fixture
def refused() -> Iterator[str]:
    """A URL on a port held bound but not listening, so every connect is refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def _fake_getaddrinfo(
    monkeypatch: pytest.MonkeyPatch, suffix: str, fake: Callable[[str], Any]
) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name.endswith(suffix):
            return fake(name)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def unresolvable(monkeypatch: pytest.MonkeyPatch) -> str:
    """A URL under .invalid; lookups of such names fail locally, no query leaves the host."""

    def fail(name: str) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    _fake_getaddrinfo(monkeypatch, ".invalid", fail)
    return "http://imagegate-test.invalid:8080"


@pytest.fixture
def dns_stall(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A URL whose host name lookup hangs (up to 5 s, released at teardown)."""
    release = threading.Event()

    def stall(name: str) -> Any:
        release.wait(5)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    _fake_getaddrinfo(monkeypatch, ".dns-stall.invalid", stall)
    yield "http://slow.dns-stall.invalid:8080"
    release.set()


@pytest.fixture
def reset_mid_body(fault_server: Callable[..., FaultServer]) -> str:
    """A URL that sends headers and 100 of 1000 body bytes, then resets (RST)."""
    return fault_server(rst_mid_body()).url


@pytest.fixture
def hang_after_request(fault_server: Callable[..., FaultServer]) -> str:
    """A URL whose server reads the request and never answers."""
    return fault_server(hang()).url


@pytest.fixture
def slow_drip(fault_server: Callable[..., FaultServer]) -> str:
    """A URL that sends headers, then one body byte per second."""
    return fault_server(drip(1.0)).url


@pytest.fixture
def short_body(fault_server: Callable[..., FaultServer]) -> str:
    """A URL that declares 100 body bytes, sends 40 and closes cleanly."""
    return fault_server(cut_body()).url


@pytest.fixture
def truncated_json(fault_server: Callable[..., FaultServer]) -> str:
    """A URL answering 200 application/json whose JSON stops halfway."""
    return fault_server(
        respond(200, {"content-type": "application/json"}, b'{"data": [{"b64_json": "iVBOR')
    ).url


@pytest.fixture
def wrong_content_type(fault_server: Callable[..., FaultServer]) -> str:
    """A URL answering 200 text/html (a login portal) where JSON is expected."""
    return fault_server(
        respond(200, {"content-type": "text/html"}, b"<html><body>Sign in</body></html>")
    ).url


@pytest.fixture
def http_status(
    fault_server: Callable[..., FaultServer],
) -> Callable[..., str]:
    """A factory: ``http_status(503, {"retry-after": "7"}, body)`` returns a URL answering so."""

    def make(
        code: int,
        headers: dict[str, str] | None = None,
        body: bytes | str | dict[str, Any] = b"",
    ) -> str:
        return fault_server(respond(code, headers, body)).url

    return make
