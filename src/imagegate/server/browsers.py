"""Browsers kept out unless invited: a Host allowlist, no cross-site writes, security headers.

Served without keys (the default, on loopback), any web page a user visits could otherwise
reach the server through the browser: by DNS rebinding (a site's own name, re-pointed at
127.0.0.1) it could read every prompt and image, and with a plain form post it could queue
work or interrupt jobs. So, as pure ASGI in front of everything else:

- **Host.** Without keys, a request whose ``Host`` is not a loopback name or address
  (``localhost``, ``*.localhost``, 127.0.0.0/8, ``::1``) or one of ``server.allowed_hosts`` is
  refused with 403 (a rebound name is never loopback). With keys, the key decides.
- **Cross-site writes.** A POST, PUT, PATCH or DELETE that a browser marks as coming from
  another site (``Sec-Fetch-Site: cross-site``, or an ``Origin`` that is neither the request's
  ``Host``, port included, nor an allowed host) is refused with 403; so is one whose body is an
  HTML form (``application/x-www-form-urlencoded``) or ``text/plain``, the two a page may send
  to any site without asking. API clients send no ``Origin`` and JSON or multipart bodies, so they
  pass.
- **Headers.** Every answer carries ``X-Content-Type-Options: nosniff``,
  ``X-Frame-Options: DENY``, ``Content-Security-Policy: frame-ancestors 'none'`` and
  ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegate.server.asgi import send_json

__all__ = ["SECURITY_HEADERS", "BrowserGuardMiddleware", "is_loopback_host"]

SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
)
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SIMPLE_BODIES = ("application/x-www-form-urlencoded", "text/plain")
"""Body types a page may POST to another site without a preflight."""


@functools.lru_cache(maxsize=256)  # every request asks, nearly always about the same host
def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (no port) names this machine: localhost, *.localhost, a loopback IP."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_only(value: str) -> str:
    """``HOST[:PORT]`` (or ``[v6]:PORT``) without the port, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value.split("]", 1)[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class BrowserGuardMiddleware:
    """The Host check (without keys), cross-site write refusal and security headers."""

    def __init__(self, app: ASGIApp, *, keys_on: bool, allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.keys_on = keys_on
        self.allowed = frozenset(_host_only(h) for h in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = _host_only(headers.get("host", ""))
        why = self._refusal(scope, headers, host)

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in SECURITY_HEADERS if name not in have]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        if why is None:
            await self.app(scope, receive, secured)
            return
        path = str(scope.get("path", ""))
        body: object = (
            {"detail": why}
            if path.startswith("/sdapi/")
            else {"error": {"type": "permission_error", "message": why, "param": None,
                            "code": "forbidden_origin"}}
        )  # fmt: skip
        await send_json(secured, 403, body)

    def _refusal(self, scope: Scope, headers: dict[str, str], host: str) -> str | None:
        """Why the request is refused, or None."""
        if not self.keys_on and not (is_loopback_host(host) or host in self.allowed):
            return (
                f"Host {host or '(none)'!r} is not this machine: served without keys, imagegate "
                "answers only loopback names (a web page could rebind its own name to it); "
                "add the name to server.allowed_hosts, or set API keys"
            )
        if scope["method"] not in WRITES:
            return None
        if headers.get("sec-fetch-site") == "cross-site":
            return "a cross-site request from a browser page is refused; call the API directly"
        origin = headers.get("origin")
        if origin and origin != "null":
            netloc = urlsplit(origin).netloc.lower()
            same = netloc == headers.get("host", "").strip().lower()
            if not same and _host_only(netloc) not in self.allowed:
                return (
                    f"a write from the page at {origin!r} is refused (not this server); add its "
                    "host to server.allowed_hosts to let it in"
                )
        elif origin == "null":
            return "a write from an opaque origin (a sandboxed page or a file) is refused"
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in SIMPLE_BODIES:
            return (
                f"a {kind} body is what a web form sends to any site, so it is refused; send "
                "JSON (or multipart for the routes that take images)"
            )
        return None
