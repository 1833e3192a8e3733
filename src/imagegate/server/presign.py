"""Presigned image URLs: ``/v1/images/{id}?expires=T&signature=S`` fetch with a plain GET.

With auth on, the image URLs in API answers carry an expiry (Unix seconds) and an HMAC-SHA256
signature of the image id and the expiry, as OpenAI's image URLs do, so code written for
OpenAI downloads them without an ``Authorization`` header. A tampered or expired URL is a 403.

The secret comes from the environment variable ``server.url_secret_env`` names, or else is
generated once into ``<data_dir>/url-secret`` with owner-only permissions (0600). Replicas
that share a database but not a data dir need the variable set to one value on every one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qs

from imagegate import redaction

SIGNING_FILE = "url-secret"


def load_secret(env_name: str, data_dir: Path) -> bytes:
    """The signing secret: from ``env_name`` when set, else the data dir's file (made once)."""
    from_env = os.environ.get(env_name, "").strip()
    if from_env:
        redaction.remember(from_env)
        return from_env.encode()
    path = data_dir / SIGNING_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes().strip()
    else:
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secrets.token_hex(32))
        secret = path.read_bytes().strip()
    redaction.remember(secret)
    return secret


class UrlSigner:
    """Signs image URLs and checks signed ones."""

    def __init__(self, secret: bytes, expiry_s: int) -> None:
        self._secret = secret
        self.expiry_s = expiry_s

    def _mac(self, image_id: str, expires: int) -> str:
        digest = hmac.new(self._secret, f"{image_id}:{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def query(self, image_id: str, now: float | None = None) -> str:
        """``expires=T&signature=S`` for ``image_id``, valid for ``expiry_s`` from now."""
        expires = int(now if now is not None else time.time()) + self.expiry_s
        return f"expires={expires}&signature={self._mac(image_id, expires)}"

    def check(self, image_id: str, query_string: bytes) -> str | None:
        """None when ``query_string`` signs ``image_id`` and has not expired, else why not."""
        params = parse_qs(query_string.decode("latin-1"))
        expires_raw = params.get("expires", [""])[0]
        signature = params.get("signature", [""])[0]
        if not expires_raw.isdigit() or not signature:
            return "the URL's signature is malformed"
        expires = int(expires_raw)
        if not hmac.compare_digest(signature, self._mac(image_id, expires)):
            return "the URL's signature does not match"
        if expires < time.time():
            return "the URL has expired; fetch the job or image again for a fresh one"
        return None


def is_signed(query_string: bytes) -> bool:
    """Whether a request's query carries a signature (and so is checked as a presigned URL)."""
    return b"signature=" in query_string
