"""One redaction step for every secret the process holds.

Every secret imagegate reads (a provider's key or token, an A1111 ``user:password``, the
server's API keys, the URL-signing and webhook secrets) is remembered here when it is read,
with the forms it travels in (clear, base64 as in a Basic header, URL-encoded). :func:`redact`
replaces any of them, and any prefix or suffix of one long enough to identify it (what a cut
message keeps of a key), with ``***``, then masks anything shaped like a key or token.

Every error message is redacted when the error is made (``imagegate.errors``), so what is
stored, sent or shown of an error is redacted once, before any truncation; log records are
redacted by :func:`install_log_redaction`, which the CLI and the server install.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import urllib.parse
from collections.abc import Iterable
from typing import Any

__all__ = ["install_log_redaction", "redact", "remember"]

MIN_SECRET = 6
"""Shorter values are not remembered: replacing them would mangle ordinary words."""
MIN_FRAGMENT = 8
"""The shortest start or end of a secret, cut off at a text's edge, that is still replaced."""

_PATTERNS = [
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 ***"),
    (
        re.compile(
            r"(?i)((?:authorization|x-api-key|api[-_]?key|access[-_]?token|token|password|"
            r"secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,;}]+"
        ),
        r"\1***",
    ),
    (re.compile(r"\b(?:sk|hf|r8|pk|rk|ig)[-_][A-Za-z0-9_-]{12,}"), "***"),
    (re.compile(r"(://)[^/@\s:]+:[^/@\s]*@"), r"\1***@"),
]

_lock = threading.Lock()
_known: tuple[str, ...] = ()


def remember(secret: str | bytes | None) -> None:
    """Redact ``secret`` (and its base64 and URL-encoded forms) from now on."""
    global _known
    if not secret:
        return
    text = secret.decode(errors="replace") if isinstance(secret, bytes) else secret
    if len(text) < MIN_SECRET:
        return
    forms = {
        text,
        base64.b64encode(text.encode()).decode(),
        base64.urlsafe_b64encode(text.encode()).decode(),
        urllib.parse.quote(text, safe=""),
    }
    with _lock:
        _known = tuple(sorted(set(_known) | forms, key=len, reverse=True))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every remembered secret (and ``secrets``), whole or cut at the text's
    start or end, and anything shaped like a key or token replaced by ``***``."""
    extra = tuple(s for s in secrets if s and len(s) >= 4)
    for secret in (*extra, *_known):
        if secret in text:
            text = text.replace(secret, "***")
        text = _cut_ends(text, secret)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _cut_ends(text: str, secret: str) -> str:
    """Replace a start of ``secret`` that ends ``text`` and an end of it that starts it."""
    if text[-MIN_FRAGMENT:] in secret:  # else no start of it can end the text
        for size in range(min(len(secret) - 1, len(text)), MIN_FRAGMENT - 1, -1):
            if text.endswith(secret[:size]):
                text = text[:-size] + "***"
                break
    if text[:MIN_FRAGMENT] in secret:
        for size in range(min(len(secret) - 1, len(text)), MIN_FRAGMENT - 1, -1):
            if text.startswith(secret[-size:]):
                text = "***" + text[size:]
                break
    return text


def _redact_record(record: logging.LogRecord) -> None:
    """Redact a record's message (its arguments merged in) and its exception text."""
    try:
        message = record.getMessage()
    except (TypeError, ValueError):  # arguments that do not fit: logging reports it later
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = redact(text)


def install_log_redaction() -> None:
    """Redact every log record of the process, whichever logger makes it and wherever it
    goes (idempotent; the CLI and ``create_app`` call it)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "imagegate_redacts", False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        _redact_record(record)
        return record

    redacting_factory.imagegate_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)
