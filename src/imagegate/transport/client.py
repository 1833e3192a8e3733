"""The one HTTP layer every remote provider uses: per-stage budgets, stage detection, errors.

httpx folds DNS, TCP connect and the TLS handshake into one connect timeout. A caller of
imagegate must never hang on a provider, and the doctor must say *which* stage stalled, so
this module watches each stage itself:

- ``dns``: the host name is resolved first (``loop.getaddrinfo``) within ``dns_s``; skipped
  for IP literals, when a proxy resolves the name, and for a minute after a success.
- ``connect``, ``tls``: httpcore's ``trace`` extension reports when the TCP connect and the
  TLS handshake start and finish; each gets its own budget.
- ``first_byte``: from the first byte of the request going out until the response headers
  are in (for a synchronous image API, the generation time; includes uploading the body).
- ``read``: the longest gap allowed between two chunks of the body.
- ``total``: the whole attempt, capped by ``attempt_s`` and by the caller's deadline.

One ``asyncio.timeout`` scope wraps each attempt; every stage change reschedules it to the
earlier of "this stage's budget" and "the attempt's cap", so exactly the stage that ran over
is named. httpx's own timeouts stay on a second later, as a backstop.

Every lower exception is translated into the error tree in exactly one place,
``_map_exception``, and raised ``from`` the original. Choices made there:

- refused -> ``ConnectError(connect)``; unresolvable name -> ``ConnectError(dns)``;
- a rejected certificate -> ``ConnectError(tls)`` that says "rejected", never "stalled";
  a TLS handshake that does not finish -> ``Timeout(tls)``;
- a connection reset (RST) while the body arrives -> ``ConnectError(read)``: the transport
  broke, the answer was not wrong, so trying again may work; a reset or close before any
  answer -> ``ConnectError(first_byte)``;
- a body that ends cleanly but early (fewer bytes than Content-Length, broken chunking) ->
  ``ProtocolError(read)``; malformed or truncated JSON -> ``ProtocolError(read)``.

Messages name the host and port, never the query string, a header or a secret, and end with
the fix.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import ipaddress
import socket
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, cast

import httpx

from imagegate import tracing
from imagegate.deadline import Deadline
from imagegate.errors import (
    ConnectError,
    InvalidRequest,
    ProtocolError,
    ProviderError,
    Stage,
    Timeout,
)
from imagegate.hedging import AttemptControl, HangLimit, SendGate
from imagegate.transport.budgets import Phase, RemoteConfig, StageBudgets
from imagegate.transport.response import (
    Response,
    StageTimings,
    check_content_type,
    redact,
)
from imagegate.transport.trust import trust_context

__all__ = ["StreamResponse", "Transport", "cause_of", "env_proxy", "safe_url"]

_DNS_CACHE_S = 60.0  # a resolved name is not checked again for this long
_BACKSTOP_S = 1.0  # httpx's own timeouts fire this much later than ours, only if ours failed
_TARGETS_KEPT = 256  # absolute URLs kept per transport (parsing one costs more than the rest)
_TRACED = frozenset({
    "connect_tcp.started", "connect_tcp.complete", "start_tls.started", "start_tls.complete",
    "send_request_headers.started", "receive_response_headers.complete",
})  # fmt: skip
"""The httpcore trace events (after their ``connection.`` or ``http11.`` prefix) that move
an attempt from one stage to the next."""


class StreamResponse:
    """An answer whose body is read chunk by chunk, each gap within ``read_s``."""

    def __init__(self, resp: httpx.Response, tracker: _Tracker) -> None:
        self._resp = resp
        self._tracker = tracker
        self.status = resp.status_code
        self.headers: Mapping[str, str] = resp.headers

    @property
    def timings(self) -> StageTimings:
        return self._tracker.timings()

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body's chunks; time the caller spends between chunks is not a read gap."""
        async for chunk in self._tracker.body(self._resp):
            self._tracker.enter("idle")
            yield chunk
            self._tracker.enter("read")

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body decoded as UTF-8, one line at a time without its line ending."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        async for chunk in self.aiter_bytes():
            pending += decoder.decode(chunk)
            lines = pending.splitlines(keepends=True)
            pending = lines.pop() if lines and not lines[-1].endswith(("\n", "\r")) else ""
            for line in lines:
                yield line.rstrip("\r\n")
        pending += decoder.decode(b"", final=True)
        if pending:
            yield pending

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self._tracker.body(self._resp)])


# --------------------------------------------------------------------------- stage tracking


class _Tracker:
    """Follows one attempt from stage to stage and keeps its timeout scope on the right one."""

    def __init__(
        self,
        provider: str,
        budgets: StageBudgets,
        deadline: Deadline,
        url: httpx.URL,
        proxy: str | None = None,
    ) -> None:
        self.provider = provider
        self.budgets = budgets
        self.host = url.host
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.proxy = proxy
        self.started = time.monotonic()
        remaining = deadline.remaining()
        if budgets.attempt_s is not None and budgets.attempt_s < remaining:
            self.cap_s, self.cap_is_deadline = budgets.attempt_s, False
        else:
            self.cap_s, self.cap_is_deadline = remaining, True
        self.cap_at = self.started + self.cap_s
        self.phase: Phase = "pool"
        self.phase_started = self.started
        self.durations: dict[str, float] = {}
        self.body_started: float | None = None
        self.body_done: float | None = None
        self.received = 0
        self.connected = False
        self.stage_fired = False  # which limit the scope was last set to
        self.fired = False  # the scope ran out: a TimeoutError is ours
        self._scope: asyncio.Timeout | None = None
        # The TCP stream while its TLS handshake runs. httpcore closes it when the handshake
        # fails but not when it is cancelled (our TLS budget), so ``release`` does; closing
        # it twice is harmless.
        self._raw: Any = None
        # What the router handed this attempt on its deadline (imagegate.hedging): the send
        # gate of a handshake race, and a learned first-byte limit tighter than the config's.
        self.control: AttemptControl | None = deadline.control
        self.gate: SendGate | None = deadline.control.gate if deadline.control else None
        self.hang: HangLimit | None = deadline.control.hang if deadline.control else None

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def bind(self, scope: asyncio.Timeout) -> None:
        self._scope = scope
        self._arm()

    def unbind(self) -> None:
        self._scope = None

    def enter(self, phase: Phase) -> None:
        now = time.monotonic()
        self.phase, self.phase_started = phase, now
        if self.gate is not None and (phase == "dns" or phase == "connect" or phase == "tls"):
            self.gate.stage = phase
        if phase == "read" and self.body_started is None:
            self.body_started = now
        self._arm()

    def finish(self, stage: str) -> None:
        self.durations[stage] = time.monotonic() - self.phase_started

    def budget(self, phase: Phase) -> float | None:
        """The budget of ``phase``: the configured one, or a learned hang limit below it."""
        budget = self.budgets.of(phase)
        if phase == "first_byte" and self.hang is not None and budget is not None:
            return min(budget, self.hang.limit_s)
        return budget

    def hang_fired(self) -> bool:
        """Whether the first-byte budget that ran out was the learned hang limit."""
        return self.hang is not None and self.hang.limit_s < self.budgets.first_byte_s

    def _arm(self) -> None:
        if self._scope is None:
            return
        budget = self.budget(self.phase)
        stage_end = self.phase_started + budget if budget is not None else float("inf")
        self.stage_fired = stage_end < self.cap_at
        when = min(stage_end, self.cap_at)
        loop = asyncio.get_running_loop()
        self._scope.reschedule(loop.time() + (when - time.monotonic()))

    async def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """httpcore's ``trace`` extension: "connection.connect_tcp.started" and the like."""
        if event[event.find(".") + 1 :] not in _TRACED:  # most events of a request
            return
        if event.endswith("connect_tcp.started"):
            self.connected = True
            self.enter("connect")
        elif event.endswith("connect_tcp.complete"):
            self.finish("connect")
            self._raw = info.get("return_value")
        elif event.endswith("start_tls.started"):
            self.body_started = None  # behind a proxy, CONNECT's answer came before
            self.enter("tls")
        elif event.endswith("start_tls.complete"):
            self.finish("tls")
            self._raw = None
        elif event.endswith("send_request_headers.started"):
            if self.gate is not None and not self.gate.granted.is_set():
                self.enter("gate")  # connected; the router decides whether we send
                await self.gate.ready()
            self.enter("first_byte")
        elif event.endswith("receive_response_headers.complete"):
            self.finish("first_byte")
            if self.control is not None:
                self.control.saw_first_byte(self.durations["first_byte"])
            self.enter("read")

    async def body(self, resp: httpx.Response) -> AsyncIterator[bytes]:
        """The body's decoded chunks, each one restarting the read budget."""
        self.enter("read")
        try:
            async for chunk in resp.aiter_bytes():
                self.received += len(chunk)
                yield chunk
                if self.phase == "read":
                    self.enter("read")
        except (httpx.HTTPError, OSError) as exc:
            raise _map_exception(exc, self) from exc
        self.body_done = time.monotonic()

    async def release(self) -> None:
        """Close a TCP stream orphaned by cancelling its TLS handshake."""
        raw, self._raw = self._raw, None
        if raw is not None and self.phase == "tls":
            with contextlib.suppress(Exception):
                await raw.aclose()

    def stage_seconds(self) -> dict[str, float]:
        """Seconds per stage so far; a stage still running (where it failed) up to now."""
        stages = {k: round(v, 6) for k, v in self.durations.items()}
        if self.phase in ("dns", "connect", "tls", "first_byte") and self.phase not in stages:
            stages[self.phase] = round(time.monotonic() - self.phase_started, 6)
        if self.body_started is not None:
            stages["read"] = round((self.body_done or time.monotonic()) - self.body_started, 6)
        return stages

    def timings(self) -> StageTimings:
        read = None
        if self.body_started is not None:
            read = (self.body_done or time.monotonic()) - self.body_started
        return StageTimings(
            host=self.host,
            port=self.port,
            dns_s=self.durations.get("dns"),
            connect_s=self.durations.get("connect"),
            tls_s=self.durations.get("tls"),
            first_byte_s=self.durations.get("first_byte"),
            read_s=read,
            total_s=self.elapsed(),
            reused=not self.connected,
            proxy=self.proxy,
        )


# --------------------------------------------------------------------------- the transport


class Transport:
    """One provider's HTTP client: one connection pool, budgets per stage, errors mapped.

    ``verify`` is True (the system's CAs, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``), False,
    a CA bundle path or an ``ssl.SSLContext``. Proxies come from the environment
    (``HTTPS_PROXY``, ``NO_PROXY``). httpx never retries: retries are the router's.
    ``secrets`` are scrubbed from every message this transport writes.
    """

    def __init__(
        self,
        provider: str,
        budgets: StageBudgets,
        *,
        verify: ssl.SSLContext | str | bool = True,
        base_url: str = "",
        headers: Mapping[str, str] | None = None,
        secrets: Sequence[str] = (),
        trust_env: bool = True,
        max_connections: int = 20,
    ) -> None:
        self.provider = provider
        self.budgets = budgets
        self.secrets = tuple(s for s in secrets if s)
        self._trust_env = trust_env
        if isinstance(verify, ssl.SSLContext):
            self._ssl = verify
        elif verify is False:
            self._ssl = httpx.create_ssl_context(verify=False)
        else:
            self._ssl = trust_context(
                verify if isinstance(verify, str) else None, trust_env=trust_env
            )
        backstop = httpx.Timeout(
            connect=max(budgets.connect_s, budgets.tls_s) + _BACKSTOP_S,
            read=max(budgets.first_byte_s, budgets.read_s) + _BACKSTOP_S,
            write=budgets.first_byte_s + _BACKSTOP_S,
            pool=None,
        )
        limits = httpx.Limits(max_connections=max_connections)
        # The client builds every request and sends the rare ones (auth flows, redirects,
        # proxies from the environment); a plain request goes straight to a connection pool
        # of its own (see ``_exchange``). The client keeps its own default pool: given one,
        # httpx would ignore HTTPS_PROXY.
        self._pool = httpx.AsyncHTTPTransport(verify=self._ssl, limits=limits)
        self._client = httpx.AsyncClient(
            verify=self._ssl,
            trust_env=trust_env,
            timeout=backstop,
            base_url=base_url,
            headers=headers,
            limits=limits,
            follow_redirects=False,
        )
        self._resolved: dict[tuple[str, int], float] = {}
        # the absolute URL of each url a provider passes, and its safe text (see ``_build``)
        self._targets: dict[str, tuple[httpx.URL, str]] = {}
        # httpx read the proxy settings once, when the client was made; so do we, per host
        self._proxies: dict[tuple[str, str], str | None] = {}

    @classmethod
    def for_config(
        cls,
        provider: str,
        cfg: RemoteConfig,
        *,
        verify: ssl.SSLContext | str | bool | None = None,
        secrets: Sequence[str] = (),
    ) -> Transport:
        """A transport with the budgets, base url and CA file of a remote provider's config."""
        return cls(
            provider,
            StageBudgets.from_config(cfg),
            verify=verify if verify is not None else (cfg.ca_file or True),
            base_url=cfg.url or "",
            secrets=secrets,
            # the router lets ``concurrency`` attempts run at once: each needs a connection
            max_connections=max(20, cfg.concurrency),
        )

    async def __aenter__(self) -> Transport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._client.aclose()
        await self._pool.aclose()

    async def request(
        self,
        method: str,
        url: str,
        *,
        deadline: Deadline,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        files: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
        expect: str | None = None,
        follow_redirects: bool = False,
        extensions: Mapping[str, Any] | None = None,
    ) -> Response:
        """Send one request and read the whole answer, each stage within its budget.

        Any status comes back as a Response: map it with the provider's own rules, then
        ``raise_for_status``. ``expect`` (e.g. "application/json", "image/") makes a 2xx
        answer of another content type a ProtocolError. ``extensions`` are httpx's request
        extensions (``sni_hostname`` for a request pinned to an address).
        """
        req, shown = self._build(
            method, url, deadline, json=json, data=data, files=files, content=content,
            headers=headers, params=params, extensions=dict(extensions or {}),
        )  # fmt: skip
        async with self._exchange(req, deadline, auth, follow_redirects) as (resp, tracker):
            body = b"".join([chunk async for chunk in tracker.body(resp)])
        answer = Response(
            status=resp.status_code,
            headers=resp.headers,
            content=body,
            url=shown if resp.request is req else safe_url(resp.url),
            timings=tracker.timings(),
            provider=self.provider,
            secrets=self.secrets,
        )
        if expect is not None and answer.ok:
            check_content_type(answer, expect, self.provider)
        return answer

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        deadline: Deadline,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        auth: httpx.Auth | tuple[str, str] | None = None,
    ) -> AsyncIterator[StreamResponse]:
        """Send one request and read the answer as it comes (for SSE).

        The attempt's cap covers the whole block; the read budget covers each wait for the
        next chunk. Errors raised inside the block by this layer are already in the tree.
        """
        req, _ = self._build(
            method, url, deadline, json=json, data=data, files=None, content=None,
            headers=headers, params=params,
        )  # fmt: skip
        async with self._exchange(req, deadline, auth, False) as (resp, tracker):
            yield StreamResponse(resp, tracker)

    def _build(
        self, method: str, url: str, deadline: Deadline, **kw: Any
    ) -> tuple[httpx.Request, str]:
        """The request and its url safe to show; ``url`` is joined and parsed once, then kept."""
        try:
            target = self._targets.get(url)
            if target is None:
                absolute = self._client.build_request(method, url).url
                if len(self._targets) >= _TARGETS_KEPT:
                    self._targets.clear()
                target = self._targets[url] = (absolute, safe_url(absolute))
            return self._client.build_request(method, target[0], **kw), target[1]
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            probe = _Tracker(self.provider, self.budgets, deadline, httpx.URL("http://invalid"))
            raise _map_exception(exc, probe) from exc

    @contextlib.asynccontextmanager
    async def _exchange(
        self,
        request: httpx.Request,
        deadline: Deadline,
        auth: httpx.Auth | tuple[str, str] | None,
        follow_redirects: bool,
    ) -> AsyncIterator[tuple[httpx.Response, _Tracker]]:
        """Send ``request`` under one timeout scope that follows the stages; map errors."""
        proxy = self._proxy_for(request.url)
        tracker = _Tracker(self.provider, self.budgets, deadline, request.url, proxy)
        request.extensions["trace"] = tracker.trace
        attributes = _span_attributes(request, self.provider) if tracing.enabled() else None
        with tracing.span(request.method, kind="client", attributes=attributes) as span:
            tracing.inject(request.headers)  # the upstream continues our trace
            try:
                async with _attempt(tracker):
                    if proxy is None:
                        await self._check_dns(tracker)
                    if auth is None and not follow_redirects and proxy is None:
                        # what ``AsyncClient.send`` adds (auth flow, redirects, cookie jar,
                        # event hooks) does nothing for such a request and costs ~0.3 ms of
                        # CPU each
                        resp = await self._pool.handle_async_request(request)
                        resp.request = request
                    else:
                        resp = await self._client.send(
                            request, stream=True, auth=auth, follow_redirects=follow_redirects
                        )
                    tracing.set_attributes(span, {"http.response.status_code": resp.status_code})
                    try:
                        yield resp, tracker
                    finally:
                        await resp.aclose()
            except ProviderError as exc:
                tracing.provider_failed(span, exc)
                raise
            finally:
                if tracker.control is not None or span is not None:
                    stages = tracker.stage_seconds()
                    if tracker.control is not None:
                        tracker.control.stages = stages
                    tracing.set_attributes(span, {f"imagegate.{k}_s": v for k, v in stages.items()})

    async def _check_dns(self, tracker: _Tracker) -> None:
        """Resolve the host within the DNS budget, unless it is an IP or resolved lately."""
        key = (tracker.host, tracker.port)
        if _is_ip(tracker.host) or time.monotonic() - self._resolved.get(key, -1e9) < _DNS_CACHE_S:
            return
        tracker.enter("dns")
        await asyncio.get_running_loop().getaddrinfo(*key, type=socket.SOCK_STREAM)
        tracker.finish("dns")
        self._resolved[key] = time.monotonic()
        tracker.enter("pool")

    def _proxy_for(self, url: httpx.URL) -> str | None:
        """The proxy (without credentials) the environment names for ``url``, if any."""
        if not self._trust_env:
            return None
        key = (url.scheme, url.host)
        if key not in self._proxies:
            self._proxies[key] = env_proxy(url)
        return self._proxies[key]

    async def connect_only(self, url: str, deadline: Deadline) -> StageTimings:
        """Open TCP (and TLS for https) to ``url``'s host, time each stage, and close.

        No request is sent. Behind a proxy only the TCP connection to the proxy is timed.
        Raises the same errors as ``request`` for each stage.
        """
        target = self._client.build_request("GET", url).url
        proxy = self._proxy_for(target)
        tracker = _Tracker(self.provider, self.budgets, deadline, target, proxy)
        host, port = tracker.host, tracker.port
        if proxy is not None:
            proxy_url = httpx.URL(proxy)
            host, port = proxy_url.host, proxy_url.port or 80
        writer: asyncio.StreamWriter | None = None
        try:
            async with _attempt(tracker):
                tracker.enter("dns")
                loop = asyncio.get_running_loop()
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                tracker.finish("dns")
                tracker.connected = True
                tracker.enter("connect")
                writer = await _open_first(infos)
                tracker.finish("connect")
                if target.scheme == "https" and proxy is None:
                    tracker.enter("tls")
                    await writer.start_tls(self._ssl, server_hostname=tracker.host)
                    tracker.finish("tls")
        finally:
            if writer is not None:
                writer.transport.abort()
        return tracker.timings()


@contextlib.asynccontextmanager
async def _attempt(tracker: _Tracker) -> AsyncIterator[None]:
    """One timeout scope that follows ``tracker``'s stages; every failure mapped once."""
    try:
        async with asyncio.timeout(None) as scope:
            tracker.bind(scope)
            try:
                yield
            finally:
                tracker.unbind()
                tracker.fired = scope.expired()
    except ProviderError:
        raise
    except (TimeoutError, httpx.HTTPError, OSError) as exc:
        await tracker.release()
        if isinstance(exc, TimeoutError) and not tracker.fired:
            raise
        raise _map_exception(exc, tracker) from exc
    except BaseException:  # the caller cancelled us
        await tracker.release()
        raise


async def _open_first(infos: Sequence[Any]) -> asyncio.StreamWriter:
    """A TCP connection to the first address of ``infos`` that accepts one."""
    error: OSError = OSError("the host name resolved to no address")
    for family, _, _, _, sockaddr in infos:
        try:
            _, writer = await asyncio.open_connection(
                host=sockaddr[0], port=sockaddr[1], family=family
            )
        except OSError as exc:
            error = exc
        else:
            return writer
    raise error


# --------------------------------------------------------------------------- error mapping


def cause_of(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type ``kind`` in ``exc``'s chain of causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.0f} ms"


_DOING = {
    "pool": "waiting for a free connection",
    "dns": "resolving the host name",
    "connect": "connecting",
    "tls": "in the TLS handshake",
    "first_byte": "waiting for the answer",
    "read": "reading the answer",
    "idle": "streaming the answer",
}


def _stage_timeout(t: _Tracker, phase: Phase, stage_fired: bool) -> Timeout:
    """The Timeout for the stage (or the attempt's cap) that ran out."""
    kw: dict[str, Any] = {"provider": t.provider, "elapsed_s": round(t.elapsed(), 3)}
    budget = t.budget(phase)
    if not stage_fired or budget is None:
        if t.cap_is_deadline:
            fix = "raise gateway.deadline_s, or put a faster provider first on the route"
            what = "the request deadline"
        else:
            fix = "raise the provider's timeout_s"
            what = "the attempt's timeout_s"
        return Timeout(
            f"{what} ran out after {t.cap_s:.1f} s while {_DOING[phase]} with {t.where}; " + fix,
            stage="total",
            **kw,
        )
    if phase == "first_byte" and t.hang is not None and t.hang_fired():
        waited = time.monotonic() - t.phase_started
        if t.control is not None:
            t.control.hung = True
        return Timeout(
            f"{t.where} took the request but sent no answer in {waited:.1f} s where about "
            f"{t.hang.expected_s:.1f} s was expected, so it was treated as a hang (limit "
            f"{t.hang.limit_s:.1f} s: {t.hang.why}); check the server's logs and queue, or "
            "raise gateway.hang_p99_multiple (0 turns hang detection off)",
            stage="first_byte",
            **kw,
        )
    connected = _ms(t.durations.get("connect"))
    messages = {
        "dns": f"resolving {t.host} did not finish in {budget:.1f} s; the DNS server is slow "
        "or unreachable: check the resolver or VPN DNS, or raise connect_timeout_s",
        "connect": f"the TCP connection to {t.where} did not open in {budget:.1f} s; the "
        "host is down or a firewall drops packets: check the url, firewall and VPN, or raise "
        "connect_timeout_s",
        "tls": f"the TLS handshake with {t.where} did not finish in {budget:.1f} s although "
        f"TCP connected in {connected}; something on the path holds the handshake: check "
        "proxies/VPN/firewall, or raise tls_timeout_s",
        "first_byte": f"{t.where} took the request but sent no answer within {budget:.1f} s; "
        "the server is busy or stuck: check its logs and queue, or raise first_byte_timeout_s",
        "read": f"{t.where} stopped sending the answer: nothing for {budget:.1f} s after "
        f"{t.received} bytes; the server or the path stalled: try again, or raise "
        "read_timeout_s",
    }
    return Timeout(messages[phase], stage=cast(Stage, phase), **kw)


def _map_exception(exc: BaseException, t: _Tracker) -> ProviderError:
    """Translate one lower exception (httpx, ssl, socket, timeout) into the error tree."""
    phase = t.phase
    detail = redact(str(exc) or type(exc).__name__)
    if isinstance(exc, TimeoutError) and t.fired:
        return _stage_timeout(t, phase, t.stage_fired)
    if isinstance(exc, httpx.TimeoutException):  # httpx's backstop fired before ours
        if isinstance(exc, httpx.PoolTimeout):
            return _stage_timeout(t, "pool", False)
        if isinstance(exc, httpx.ConnectTimeout) and phase not in ("connect", "tls"):
            phase = "connect"
        if isinstance(exc, httpx.ReadTimeout) and phase not in ("first_byte", "read"):
            phase = "read" if t.body_started is not None else "first_byte"
        if isinstance(exc, httpx.WriteTimeout):
            phase = "first_byte"
        return _stage_timeout(t, phase, True)

    def err(cls: type[ProviderError], stage: Stage | None, message: str) -> ProviderError:
        return cls(message, provider=t.provider, stage=stage, elapsed_s=round(t.elapsed(), 3))

    connected = _ms(t.durations.get("connect"))
    reading = t.body_started is not None
    gai = cause_of(exc, socket.gaierror)
    cert = cause_of(exc, ssl.SSLCertVerificationError)
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return InvalidRequest(
            f"the url is not valid ({detail}); set the provider's url to an http:// or "
            "https:// address",
            field="url",
            provider=t.provider,
        )
    if gai is not None:
        reason = getattr(gai, "strerror", None) or str(gai)
        return err(ConnectError, "dns", f"the host name {t.host} did not resolve ({reason}); "
            "check the url's spelling, the DNS settings, or set HTTPS_PROXY if only a proxy "
            "can reach it")  # fmt: skip
    if isinstance(cert, ssl.SSLCertVerificationError):
        reason = cert.verify_message or cert.reason or str(cert)
        return err(ConnectError, "tls", f"{t.where} presented a TLS certificate that was "
            f"rejected ({reason}); TCP connected in {connected}, so this is a bad certificate, "
            "not a stall: check the url's host name, or set SSL_CERT_FILE to the CA bundle "
            "that signed it")  # fmt: skip
    if cause_of(exc, ssl.SSLError) is not None or (
        phase == "tls" and isinstance(exc, httpx.ConnectError)
    ):
        return err(ConnectError, "tls", f"the TLS handshake with {t.where} failed ({detail}); "
            "check that the url's scheme matches the server (https:// vs http://) and that no "
            "proxy intercepts TLS")  # fmt: skip
    if isinstance(exc, httpx.ProxyError):
        return err(ConnectError, "connect", f"the proxy {t.proxy or ''} refused the connection "
            f"to {t.where} ({detail}); check HTTPS_PROXY and NO_PROXY")  # fmt: skip
    connecting = phase in ("pool", "dns", "connect")
    if cause_of(exc, ConnectionRefusedError) is not None and connecting:
        return err(ConnectError, "connect", f"nothing listens on {t.where} (connection "
            "refused); check the url's port and that the server is running")  # fmt: skip
    if isinstance(exc, httpx.ConnectError) or connecting:
        return err(ConnectError, "connect", f"could not connect to {t.where} ({detail}); "
            "check the url, the network and the firewall")  # fmt: skip
    if isinstance(exc, httpx.DecodingError):
        return err(ProtocolError, "read", f"the answer from {t.where} could not be decoded "
            f"({detail}); the server sent a broken Content-Encoding: check the server or the "
            "proxy in between")  # fmt: skip
    if isinstance(exc, httpx.TooManyRedirects):
        return err(ProtocolError, None, f"{t.where} redirected too many times; set the "
            "provider's url to the final address")  # fmt: skip
    if isinstance(exc, httpx.RemoteProtocolError) and reading:
        return err(ProtocolError, "read", f"the answer from {t.where} ended early after "
            f"{t.received} bytes ({detail}); the server or a proxy cut it off: try again, and "
            "check the server's logs")  # fmt: skip
    if isinstance(exc, httpx.RequestError | OSError) and reading:
        return err(ConnectError, "read", f"the connection to {t.where} was reset while "
            f"reading the answer, after {t.received} bytes ({detail}); the server or a "
            "middlebox dropped it: try again, and check the server's logs")  # fmt: skip
    if isinstance(exc, httpx.RequestError | OSError):
        return err(ConnectError, "first_byte", f"{t.where} closed the connection without "
            f"answering ({detail}); the server dropped or crashed on the request: try again, "
            "and check the server's logs")  # fmt: skip
    return err(ProtocolError, None, f"talking to {t.where} failed unexpectedly "
        f"({type(exc).__name__}: {detail}); report this with the message")  # fmt: skip


# --------------------------------------------------------------------------- helpers


def _span_attributes(request: httpx.Request, provider: str) -> dict[str, Any]:
    url = request.url
    return {
        "http.request.method": request.method,
        "server.address": url.host,
        "server.port": url.port or (443 if url.scheme == "https" else 80),
        "url.full": safe_url(url),
        "imagegate.provider": provider,
    }


@functools.lru_cache(maxsize=256)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def safe_url(url: httpx.URL) -> str:
    """``url`` without credentials or query string: safe to show."""
    return str(url.copy_with(username=None, password=None, query=None, fragment=None))


def env_proxy(url: httpx.URL) -> str | None:
    """The proxy the environment names for ``url`` (without credentials), if any."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(url.host):
        return None
    return safe_url(httpx.URL(proxy if "://" in proxy else f"http://{proxy}"))
