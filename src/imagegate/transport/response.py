"""What a provider gets back from the transport, and how a status maps into the error tree.

``Response`` is a whole answer with its per-stage ``StageTimings``; ``raise_for_status`` is
the default mapping of an HTTP status to the error tree (each provider maps its own error
bodies first and falls back to it); ``expect_json`` refuses a wrong content type or broken
JSON; ``redact`` takes secrets and anything shaped like a key out of text before it is shown.
"""

from __future__ import annotations

import email.utils
import json as jsonlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from imagegate import redaction
from imagegate.errors import (
    AuthError,
    InvalidRequest,
    ProtocolError,
    ProviderError,
    QuotaExceeded,
    RateLimited,
    Timeout,
    Unavailable,
    UpstreamError,
)

__all__ = [
    "Response",
    "StageTimings",
    "check_content_type",
    "expect_json",
    "parse_retry_after",
    "protocol_error",
    "raise_for_status",
    "redact",
]

_SNIPPET = 200  # characters of an upstream error body quoted in a message


@dataclass(frozen=True)
class StageTimings:
    """How long each stage of one attempt took; None where the stage did not run.

    ``dns_s`` is None for an IP literal, behind a proxy or when the name was resolved
    recently; ``connect_s`` and ``tls_s`` are None when a pooled connection was reused.
    """

    host: str
    port: int
    dns_s: float | None = None
    connect_s: float | None = None
    tls_s: float | None = None
    first_byte_s: float | None = None
    read_s: float | None = None
    total_s: float = 0.0
    reused: bool = False
    proxy: str | None = None


# --------------------------------------------------------------------------- redaction


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret the process holds, ``secrets``, and anything shaped like a
    key or token replaced by *** (:func:`imagegate.redaction.redact`)."""
    return redaction.redact(text, secrets)


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True, eq=False)
class Response:
    """A whole answer: status, headers, the body's bytes and how long each stage took."""

    status: int
    headers: Mapping[str, str]
    content: bytes
    url: str
    timings: StageTimings
    provider: str
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower case ("" when absent)."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON, whatever its content type; ProtocolError when it is not."""
        return _parse_json(self, self.provider)

    def snippet(self) -> str:
        """The start of the body, redacted, on one line: safe to quote in a message."""
        text = " ".join(redact(self.text[: _SNIPPET * 4], self.secrets).split())
        return text[:_SNIPPET]


# --------------------------------------------------------------------------- status mapping


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


_AUTH_FIX = (
    "the key or token was refused: check the environment variable that the provider's "
    "api_key_env / token_env names, and the key's permissions"
)
_STATUSES: dict[int, tuple[type[ProviderError], str]] = {
    401: (AuthError, _AUTH_FIX),
    403: (AuthError, _AUTH_FIX),
    402: (QuotaExceeded, "the account is out of credit: top it up"),
    404: (InvalidRequest, "endpoint or model not found: check the provider's url and model"),
    405: (InvalidRequest, "the url is not this API's endpoint: check the provider's url"),
    408: (Timeout, "the server gave up waiting for the request: try again"),
    413: (InvalidRequest, "the request is too large: send a smaller one"),
    429: (RateLimited, "too many requests: wait, or lower the provider's concurrency"),
    503: (Unavailable, "the service is unavailable: try again later, or route elsewhere"),
    529: (Unavailable, "the service is overloaded: try again later, or route elsewhere"),
}


def raise_for_status(resp: Response, provider: str | None = None) -> None:
    """The default mapping of a non-2xx status to the error tree; providers map theirs first.

    401/403 AuthError, 402 QuotaExceeded, 404/405/413/other 4xx InvalidRequest, 408
    Timeout(first_byte), 429 RateLimited, 503/529 Unavailable, other 5xx UpstreamError,
    1xx/3xx ProtocolError; Retry-After (seconds or a date) becomes ``retry_after``.
    """
    status = resp.status
    if 200 <= status < 300:
        return
    if status in _STATUSES:
        cls, fix = _STATUSES[status]
    elif 400 <= status < 500:
        cls, fix = InvalidRequest, "the provider refused the request: fix the field it names"
    elif status >= 500:
        cls, fix = UpstreamError, "the provider failed: try again, or route elsewhere"
    else:
        cls, fix = ProtocolError, "unexpected (a redirect?): set the url to the final address"
    kw: dict[str, Any] = {
        "provider": provider or resp.provider,
        "elapsed_s": round(resp.timings.total_s, 3),
    }
    retry_after = parse_retry_after(resp.headers.get("retry-after"))
    wait = ""
    if cls in (RateLimited, Unavailable, UpstreamError):
        kw["retry_after"] = retry_after
        wait = f" (Retry-After {retry_after:.0f} s)" if retry_after is not None else ""
    if cls is Timeout:
        kw["stage"] = "first_byte"
    host = f"{resp.timings.host}:{resp.timings.port}"
    quoted = f": {resp.snippet()}" if resp.content else ""
    raise cls(f"{host} answered {status}{wait}{quoted}; {fix}", **kw)


def protocol_error(resp: Response | None, provider: str, what: str, fix: str) -> ProtocolError:
    """A ProtocolError for an answer that parsed but is not what the API promises:
    ``"HOST:PORT answered STATUS but WHAT; FIX"``, at stage ``read``."""
    if resp is None:
        return ProtocolError(f"{what}; {fix}", provider=provider, stage="read")
    return ProtocolError(
        f"{resp.timings.host}:{resp.timings.port} answered {resp.status} but {what}; {fix}",
        provider=provider,
        stage="read",
        elapsed_s=round(resp.timings.total_s, 3),
    )


def check_content_type(resp: Response, expect: str, provider: str) -> None:
    """ProtocolError unless the answer's media type is ``expect`` (a prefix when it ends in /)."""
    ctype = resp.content_type
    ok = ctype.startswith(expect) if expect.endswith("/") else ctype == expect
    if expect == "application/json":
        ok = ok or ctype.endswith("+json")
    if not ok:
        host = f"{resp.timings.host}:{resp.timings.port}"
        raise ProtocolError(
            f"{host} answered {resp.status} with {ctype or 'no content type'}, not {expect}"
            f" ({resp.snippet()!r}); the url may point at a web page, a login portal or a "
            "proxy: check the provider's url",
            provider=provider,
            stage="read",
            elapsed_s=round(resp.timings.total_s, 3),
        )


def _parse_json(resp: Response, provider: str) -> Any:
    try:
        return jsonlib.loads(resp.content)
    except (ValueError, UnicodeDecodeError) as exc:
        host = f"{resp.timings.host}:{resp.timings.port}"
        # Cut short: a string left open, or the parser ran out of input.
        truncated = isinstance(exc, jsonlib.JSONDecodeError) and (
            exc.msg.startswith("Unterminated") or exc.pos >= len(resp.content.rstrip()) > 0
        )
        what = "truncated" if truncated else "malformed"
        raise ProtocolError(
            f"{host} sent {what} JSON ({len(resp.content)} bytes: {redact(str(exc))}); the "
            "server or a proxy cut or garbled the answer: try again, and check the server",
            provider=provider,
            stage="read",
            elapsed_s=round(resp.timings.total_s, 3),
        ) from exc


def expect_json(resp: Response, provider: str | None = None) -> Any:
    """The body of a JSON answer; ProtocolError on another content type or broken JSON."""
    name = provider or resp.provider
    check_content_type(resp, "application/json", name)
    return _parse_json(resp, name)
