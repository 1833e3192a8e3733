"""API keys: ``Authorization: Bearer KEY`` or HTTP Basic with the key as password.

Keys come from the environment variable that ``server.api_keys_env`` names (comma-separated);
they are admin keys. Managed keys (``imagegate keys create``) are looked up by their SHA-256
in the store (cached a few seconds) and carry a name and limits (see ``tenants``).
Each is compared in constant time; none is ever logged or echoed. /healthz stays open, and so
does the web page (/ and its assets under /ui/), which holds no data and asks for the key. A
presigned image URL (``/v1/images/{id}?expires=&signature=``, see ``presign``) needs no key:
its signature is checked instead, and a bad or expired one is a 403.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os

from starlette.types import ASGIApp, Receive, Scope, Send

from imagegate import redaction
from imagegate.server.asgi import send_json
from imagegate.server.presign import UrlSigner, is_signed
from imagegate.server.tenants import ADMIN, Caller, KeyCache
from imagegate.store.keys import key_hash

OPEN_PATHS = frozenset({"/healthz", "/"})
OPEN_PREFIXES = ("/ui/",)  # the web page's script and style sheet: no data, and it asks for a key
IMAGE_PREFIX = "/v1/images/"


def keys_from_env(name: str) -> tuple[bytes, ...]:
    """The API keys in environment variable ``name``; empty when it is unset or blank."""
    raw = os.environ.get(name, "")
    keys = tuple(key.strip().encode() for key in raw.split(",") if key.strip())
    for key in keys:
        redaction.remember(key)
    return keys


def presented_key(header: bytes) -> bytes | None:
    """The key in an Authorization header: a Bearer token, or a Basic password."""
    scheme, _, value = header.strip().partition(b" ")
    scheme = scheme.lower()
    if scheme == b"bearer":
        return value.strip() or None
    if scheme == b"basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        _, sep, password = decoded.partition(b":")
        return password if sep else None
    return None


def key_matches(given: bytes, keys: tuple[bytes, ...]) -> bool:
    """Compare against every key in constant time (no early exit)."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return matched


class AuthMiddleware:
    """Refuse any request without a valid key with 401 (nothing else is touched)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: tuple[bytes, ...],
        signer: UrlSigner | None = None,
        cache: KeyCache | None = None,
    ) -> None:
        self.app = app
        self.keys = keys
        self.signer = signer
        self.cache = cache if cache is not None else KeyCache()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if (
            scope["type"] != "http"
            or not self.keys
            or path in OPEN_PATHS
            or path.startswith(OPEN_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        query: bytes = scope.get("query_string", b"")
        if self.signer is not None and path.startswith(IMAGE_PREFIX) and is_signed(query):
            why = self.signer.check(path.removeprefix(IMAGE_PREFIX), query)
            if why is None:
                await self.app(scope, receive, send)
            else:
                await send_json(send, 403, _error("permission_error", why, "invalid_signature"))
            return
        for name, value in scope["headers"]:
            if name == b"authorization":
                given = presented_key(value)
                if given is None:
                    break
                caller = (
                    ADMIN if key_matches(given, self.keys) else await self._managed(scope, given)
                )
                if caller is not None:
                    scope.setdefault("state", {})["caller"] = caller
                    await self.app(scope, receive, send)
                    return
                break
        await _refuse(scope, send)

    async def _managed(self, scope: Scope, given: bytes) -> Caller | None:
        """The managed key ``given`` is (by its hash), or None."""
        app = scope.get("app")
        ctx = getattr(getattr(app, "state", None), "ctx", None)
        store = getattr(getattr(ctx, "gateway", None), "store", None)
        if store is None:
            return None
        return await self.cache.caller(store, key_hash(given))


async def _refuse(scope: Scope, send: Send) -> None:
    if str(scope["path"]).startswith("/sdapi/"):
        body: object = {"detail": "Incorrect username or password"}
        challenge = b'Basic realm="imagegate"'
    else:
        body = _error(
            "authentication_error",
            "a valid API key is required: send Authorization: Bearer KEY "
            "(or HTTP Basic with the key as password)",
            "invalid_api_key",
        )
        challenge = b'Bearer realm="imagegate"'
    await send_json(send, 401, body, [(b"www-authenticate", challenge)])


def _error(kind: str, message: str, code: str) -> dict[str, object]:
    return {"error": {"type": kind, "message": message, "param": None, "code": code}}
