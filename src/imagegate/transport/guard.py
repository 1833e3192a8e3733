"""Where imagegate may send a request it was handed by a caller (a webhook URL).

A caller must not make the server reach what only the server can reach (server-side request
forgery): unless ``allow_private``, a destination on a loopback, private, link-local, shared,
reserved or multicast address is refused, both when the URL is handed over (``check_url``, and
``resolve`` for a host name) and again at each send, where the name is resolved once, checked,
and the request is sent to that very address (``pinned``), so a name that resolves elsewhere
the second time (DNS rebinding) reaches nothing it should not.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from typing import Any

import httpx

from imagegate.errors import ConnectError, InvalidRequest

__all__ = ["MAX_URL_LENGTH", "check_url", "is_public", "pinned", "resolve"]

MAX_URL_LENGTH = 2048
"""The longest destination URL accepted, in characters."""

_LOCAL_NAMES = ("localhost", "localhost.localdomain")


def is_public(address: str) -> bool:
    """Whether ``address`` (an IP) is a public unicast address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _refused(field: str, url: str, why: str, label: str | None = None) -> InvalidRequest:
    return InvalidRequest(
        f"{label or field}: {why}; got {url[:100]!r}",
        field=field,
        limit="an http(s) URL of at most 2048 characters on a public address",
        fix="use a public http(s) URL, or set [webhooks] allow_private = true on the server",
    )


def check_url(
    url: str, *, allow_private: bool, field: str = "webhook_url", label: str | None = None
) -> httpx.URL:
    """``url`` parsed, or InvalidRequest naming ``field`` (and ``label``, a CLI flag, in its
    message): not http(s), too long, no host, or (unless ``allow_private``) a non-public IP
    or a local name."""
    refused = functools.partial(_refused, field, url, label=label)
    if len(url) > MAX_URL_LENGTH:
        raise refused(f"must be at most {MAX_URL_LENGTH} characters ({len(url)})")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise refused("is not a URL") from None
    if parsed.scheme not in ("http", "https"):
        raise refused("must be an http or https URL")
    host = parsed.host
    if not host:
        raise refused("has no host")
    if allow_private:
        return parsed
    if host.lower().rstrip(".") in _LOCAL_NAMES or host.lower().endswith(".localhost"):
        raise refused("names this machine (loopback)")
    try:
        public = is_public(host)
    except ValueError:
        return parsed  # a name: resolve() checks where it leads
    if not public:
        raise refused("is on a loopback, private or link-local address")
    return parsed


async def resolve(
    url: httpx.URL, *, allow_private: bool, timeout_s: float, field: str = "webhook_url"
) -> str:
    """The address to send to: the URL's IP, or the first address its name resolves to.

    Unless ``allow_private``, every address the name resolves to must be public
    (InvalidRequest naming ``field`` else). A name that does not resolve within
    ``timeout_s`` is a ConnectError at stage ``dns``.
    """
    host = url.host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if not allow_private and not is_public(host):
            raise _refused(field, str(url), "is on a loopback, private or link-local address")
        return host
    port = url.port or (443 if url.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        raise ConnectError(
            f"{host} did not resolve ({type(exc).__name__})",
            stage="dns",
            fix="check the host name of the webhook URL",
        ) from exc
    addresses = [str(info[4][0]) for info in infos]
    if not addresses:
        raise ConnectError(f"{host} resolved to no address", stage="dns")
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise _refused(field, str(url), f"resolves to {address}, a non-public address")
    return addresses[0]


def pinned(url: httpx.URL, address: str) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """The request to ``url`` sent to ``address``: the URL with the address as its host, the
    Host header and the TLS server name (SNI, certificate check) of the original host."""
    host = url.host
    if address == host:
        return url, {}, {}
    port = url.port
    netloc = host if port is None else f"{host}:{port}"
    extensions: dict[str, Any] = {"sni_hostname": host} if url.scheme == "https" else {}
    return url.copy_with(host=address), {"host": netloc}, extensions
