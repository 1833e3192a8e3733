"""The network stages (dns, connect, tls) of one remote provider, and what a failure means.

The stages are timed by ``Transport.connect_only``, which raises the same errors as a real
request, so the stage a failure names is the stage a generation would fail at. On top, for
TLS, the doctor looks at the certificate itself (a second, short handshake) to tell a stall
(TCP connected, the handshake never finished) from a bad certificate (rejected: untrusted
CA, name mismatch, expired) and from a proxy or middlebox that intercepts TLS (a proxy set,
a certificate for another name from an untrusted issuer).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from imagegate.doctor.report import StageFailed, StageResult
from imagegate.errors import ConnectError, ProviderError, Timeout
from imagegate.providers.base import Deadline
from imagegate.transport import StageBudgets, StageTimings, Transport, cause_of
from imagegate.transport.trust import trust_context

# OpenSSL's X509_V_ERR_* codes, as ssl.SSLCertVerificationError.verify_code carries them.
_EXPIRED = frozenset({9, 10})  # not yet valid, expired
_NAME = frozenset({62, 64})  # host name, IP address mismatch


@dataclass(frozen=True)
class Target:
    """Where one remote provider connects, with the budgets and trust it connects with."""

    provider: str
    url: str
    scheme: str
    host: str
    port: int
    budgets: StageBudgets
    ca_file: str | None
    proxy: str | None
    """The proxy the environment names for this URL (credentials hidden), if any."""

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def https(self) -> bool:
        return self.scheme == "https"

    def ssl_context(self) -> ssl.SSLContext:
        """The trust the provider's transport uses (``ca_file``, else the environment's or
        certifi's)."""
        return trust_context(self.ca_file)


def _unverified() -> ssl.SSLContext:
    """A context that accepts any certificate, to read one that was rejected; loads no CAs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class Certificate:
    """What a server's certificate says, as far as this Python can read it."""

    protocol: str | None
    subject: str | None
    names: tuple[str, ...]
    issuer: str | None
    not_after: str | None

    def summary(self) -> str:
        parts = [self.protocol or "TLS"]
        if self.names or self.subject:
            parts.append(f"certificate for {', '.join(self.names[:3]) or self.subject}")
        if self.issuer:
            parts.append(f"issued by {self.issuer}")
        if self.not_after:
            parts.append(f"valid until {self.not_after}")
        return ", ".join(parts)


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.0f} ms"


def _name_of(rdns: Any) -> str | None:
    """The CN (else O) of a subject or issuer as ``ssl.getpeercert()`` gives it."""
    fields = {key: value for rdn in rdns or () for key, value in rdn}
    return fields.get("commonName") or fields.get("organizationName")


def _from_dict(info: dict[str, Any], protocol: str | None) -> Certificate:
    names = tuple(
        value for kind, value in info.get("subjectAltName", ()) if kind in ("DNS", "IP Address")
    )
    return Certificate(
        protocol=protocol,
        subject=_name_of(info.get("subject")),
        names=names,
        issuer=_name_of(info.get("issuer")),
        not_after=" ".join(str(info.get("notAfter") or "").split()) or None,
    )


def _from_der(der: bytes, protocol: str | None) -> Certificate:
    """Parse a certificate the handshake did not verify; needs ``cryptography`` for details."""
    if importlib.util.find_spec("cryptography") is None:
        return Certificate(protocol, None, (), None, None)
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_der_x509_certificate(der)

    def short(name: x509.Name) -> str | None:
        for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
            attrs = name.get_attributes_for_oid(oid)
            if attrs:
                return str(attrs[0].value)
        return name.rfc4514_string() or None

    names: list[str] = []
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names += san.get_values_for_type(x509.DNSName)
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    expires = cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    return Certificate(protocol, short(cert.subject), tuple(names), short(cert.issuer), expires)


async def peer_certificate(
    target: Target, *, verified: bool, timeout_s: float
) -> Certificate | None:
    """The certificate ``target`` presents, read in one short handshake; None if none came.

    ``verified`` uses the provider's trust (and so reads the certificate without extra
    libraries); otherwise nothing is checked, so a rejected certificate can still be read.
    """
    context = target.ssl_context() if verified else _unverified()
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(
                target.host, target.port, ssl=context, server_hostname=target.host
            )
    except (OSError, TimeoutError, ssl.SSLError):
        return None
    try:
        tls = writer.get_extra_info("ssl_object")
        if not isinstance(tls, ssl.SSLObject):
            return None
        info = tls.getpeercert()
        der = tls.getpeercert(binary_form=True)
        protocol = tls.version()
    finally:
        writer.transport.abort()
    if info:
        return _from_dict(dict(info), protocol)
    if der:
        try:
            return _from_der(der, protocol)
        except ValueError:
            return Certificate(protocol, None, (), None, None)
    return None


def covers(names: Sequence[str], host: str) -> bool:
    """Whether a certificate for ``names`` is valid for ``host`` (one-label wildcards)."""
    host = host.lower().rstrip(".")
    for name in (n.lower().rstrip(".") for n in names):
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


# --------------------------------------------------------------------------- the stages


async def network_stages(target: Target) -> tuple[list[StageResult], bool]:
    """dns, connect and tls for ``target``; the flag says TLS is left to the proxy's tunnel.

    Raises StageFailed at the first stage that fails, with its cause and fix.
    """
    b = target.budgets
    deadline = Deadline(b.dns_s + b.connect_s + b.tls_s + 1.0)
    transport = Transport(target.provider, b, verify=target.ssl_context())
    if target.https and importlib.util.find_spec("cryptography") is not None:
        import cryptography.x509  # noqa: F401 - imported now, not while other clocks run
    await asyncio.sleep(0)  # let every provider set up before any stage's clock starts
    try:
        async with transport:
            timings = await transport.connect_only(target.url, deadline)
    except ProviderError as exc:
        raise await _failure(exc, target) from None
    via = f" (the proxy {timings.proxy})" if timings.proxy else ""
    stages = [
        StageResult("dns", True, timings.dns_s, f"{_resolved(target, timings)} resolved{via}"),
        StageResult("connect", True, timings.connect_s, f"TCP to {_dialled(target, timings)}"),
    ]
    if not target.https:
        return stages, False
    if timings.proxy is not None:
        return stages, True  # the handshake runs inside the proxy's tunnel: the probe shows it
    cert = await peer_certificate(target, verified=True, timeout_s=b.connect_s + b.tls_s)
    detail = f"handshake with {target.where}" + (f": {cert.summary()}" if cert else "")
    stages.append(StageResult("tls", True, timings.tls_s, detail))
    return stages, False


def _resolved(target: Target, timings: StageTimings) -> str:
    if timings.proxy:
        return httpx.URL(timings.proxy).host
    return target.host


def _dialled(target: Target, timings: StageTimings) -> str:
    if timings.proxy:
        url = httpx.URL(timings.proxy)
        return f"{url.host}:{url.port or 80}"
    return target.where


async def _tcp_time(target: Target) -> StageTimings | None:
    """Time DNS and the TCP connect alone (no TLS, no proxy): what a TLS failure came after."""
    url = httpx.URL(target.url).copy_with(scheme="http", port=target.port, path="/", query=None)
    b = target.budgets
    try:
        async with Transport(
            target.provider, b, verify=target.ssl_context(), trust_env=False
        ) as plain:
            return await plain.connect_only(str(url), Deadline(b.dns_s + b.connect_s + 0.5))
    except ProviderError:
        return None


async def _failure(exc: ProviderError, target: Target) -> StageFailed:
    """The StageFailed for an error ``connect_only`` raised (or a probe raised at these stages)."""
    stage = exc.stage if exc.stage in ("dns", "connect", "tls") else "connect"
    before: list[StageResult] = []
    tcp: StageTimings | None = None
    if stage == "tls":
        tcp = await _tcp_time(target)
        dns_s, connect_s = (tcp.dns_s, tcp.connect_s) if tcp else (None, None)
        before = [
            StageResult("dns", True, dns_s, f"{target.host} resolved"),
            StageResult("connect", True, connect_s, f"TCP to {target.where}"),
        ]
    elif stage == "connect":
        before = [StageResult("dns", True, None, f"{target.host} resolved")]
    cause, fix, detail = await _advice(exc, stage, target, tcp)
    elapsed = exc.elapsed_s
    if elapsed is not None and tcp is not None:  # the attempt's time, less DNS and TCP
        elapsed = max(0.0, elapsed - (tcp.dns_s or 0.0) - (tcp.connect_s or 0.0))
    result = StageResult(stage, False, elapsed, detail)
    return StageFailed(result, cause, fix, passed=before)


async def _advice(
    exc: ProviderError, stage: str, target: Target, tcp: StageTimings | None
) -> tuple[str, str, str]:
    """(cause, fix, detail) for a failure at dns, connect or tls."""
    b, p, host, where = target.budgets, target.provider, target.host, target.where
    elapsed = _ms(exc.elapsed_s)
    detail = exc.message.split("; ")[0]
    url_key = f"providers.{p}.url"
    if stage == "dns":
        if isinstance(exc, Timeout):
            return (
                f"resolving {host} did not finish in {b.dns_s:.1f} s, so the DNS server is "
                "slow or unreachable and no connection was tried",
                "check the resolver (or the VPN's DNS) on this machine; raise "
                "connect_timeout_s only if the resolver is known to be slow",
                detail,
            )
        gai = cause_of(exc, socket.gaierror)
        reason = (getattr(gai, "strerror", None) or str(gai)) if gai else detail
        return (
            f"the host name {host} did not resolve ({reason}) after {elapsed}, so no "
            f"connection to {where} was tried",
            f"check the spelling of {host} in {url_key} and this machine's DNS or VPN; if "
            f"only a proxy can reach {host}, set HTTPS_PROXY",
            detail,
        )
    if stage == "connect":
        via = f" through the proxy {target.proxy}" if target.proxy else ""
        if isinstance(exc, Timeout):
            return (
                f"the TCP connection to {where}{via} did not open in {b.connect_s:.1f} s, so "
                "the host is down or a firewall drops the packets",
                f"check that {host} is up and the firewall and VPN rules for port "
                f"{target.port}; raise connect_timeout_s only if the link is known to be slow",
                detail,
            )
        if cause_of(exc, ConnectionRefusedError) is not None and not target.proxy:
            return (
                f"nothing listens on {where}: the connection was refused after {elapsed}",
                f"start the server on {where}, or correct the host and port in {url_key}",
                detail,
            )
        return (
            f"could not connect to {where}{via} after {elapsed} ({detail})",
            f"check {url_key}, the network and the firewall"
            + ("; check HTTPS_PROXY and NO_PROXY" if target.proxy else ""),
            detail,
        )
    tcp_ms = _ms(tcp.connect_s) if tcp else "?"
    if isinstance(exc, Timeout):
        return (
            f"the TLS handshake with {where} did not finish in {b.tls_s:.1f} s although TCP "
            f"connected in {tcp_ms}, so something on the path is holding the handshake",
            "check HTTPS_PROXY / VPN / firewall rules for that host, or route to another "
            "provider; raise tls_timeout_s only if the link is known to be slow",
            f"no TLS handshake in {b.tls_s:.1f} s (TCP connected in {tcp_ms})",
        )
    return await _tls_rejected(exc, target, tcp_ms, detail)


async def _tls_rejected(
    exc: ProviderError, target: Target, tcp_ms: str, detail: str
) -> tuple[str, str, str]:
    """(cause, fix, detail) for a handshake that finished with a refusal, not a stall."""
    p, host, where = target.provider, target.host, target.where
    b = target.budgets
    trust = f"providers.{p}.ca_file (or SSL_CERT_FILE)"
    err = cause_of(exc, ssl.SSLCertVerificationError)
    if not isinstance(err, ssl.SSLCertVerificationError):
        return (
            f"the TLS handshake with {where} failed after TCP connected in {tcp_ms} "
            f"({detail}), so the server does not speak TLS there or something interferes",
            f"if {where} serves plain HTTP, use http:// in providers.{p}.url; otherwise check "
            f"that no proxy or firewall interferes with TLS to {host}",
            detail,
        )
    reason = err.verify_message or err.reason or "rejected"
    cert = await peer_certificate(target, verified=False, timeout_s=b.connect_s + b.tls_s)
    code = err.verify_code
    names = ", ".join(cert.names[:3]) if cert and cert.names else None
    issuer = cert.issuer if cert and cert.issuer else None
    foreign = cert is not None and bool(cert.names) and not covers(cert.names, host)
    seen = f" (certificate for {names or '?'}, issued by {issuer or '?'})" if cert else ""
    detail = f"certificate rejected: {reason}{seen}"
    after = f"after TCP connected in {tcp_ms}" if tcp_ms != "?" else "in the handshake"
    not_stall = f"rejected {after}: a bad certificate, not a stall"
    if target.proxy is not None or (foreign and code not in _NAME):
        why = (
            f"the proxy {target.proxy} is set for it"
            if target.proxy
            else f"the certificate is for {names}, not {host}, and from an untrusted issuer"
        )
        return (
            f"{where} presented a certificate issued by {issuer or 'an unknown CA'} that "
            f"is not its own ({reason}; {not_stall}), and {why}, so a proxy or middlebox "
            "on the path intercepts TLS",
            f"exempt {host} from TLS inspection (or add it to NO_PROXY), or trust the "
            f"proxy's CA with {trust}",
            detail,
        )
    if code in _NAME or foreign:
        return (
            f"{where} presented a certificate for {names or 'another name'}, not for {host} "
            f"({reason}; {not_stall})",
            f"use a host name the certificate names in providers.{p}.url, or give the "
            f"server a certificate for {host}",
            detail,
        )
    if code in _EXPIRED:
        when = cert.not_after if cert and cert.not_after else "?"
        return (
            f"{where} presented a certificate outside its validity (valid until {when}; "
            f"{reason}; {not_stall})",
            "renew the server's certificate, or check this machine's clock",
            detail,
        )
    by = f"issued by {issuer}" if issuer else "from a CA"
    return (
        f"{where} presented a certificate {by} that this machine does not trust "
        f"({reason}; {not_stall})",
        f"if that CA is your own, point {trust} at its PEM bundle; if it is not, something "
        f"on the path (a TLS-inspecting proxy, antivirus or firewall) replaces certificates "
        f"for {host}",
        detail,
    )


def is_network_error(exc: ProviderError) -> bool:
    """Whether a probe's error happened while connecting (dns, connect, tls)."""
    return isinstance(exc, ConnectError | Timeout) and exc.stage in ("dns", "connect", "tls")


async def probe_network_failure(exc: ProviderError, target: Target) -> StageFailed:
    """A probe that failed while connecting: the same advice as the stage itself gives."""
    return await _failure(exc, target)
