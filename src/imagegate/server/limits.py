"""The request body limit (``server.max_body_bytes``; ``server.max_edit_body_bytes`` on the
routes that take input images): 413 with a JSON error, as pure ASGI.

A declared Content-Length past the limit is refused before the body is read; a chunked body
is counted as it arrives and refused once it passes the limit.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegate.server.asgi import send_json

TOO_LARGE = "the request body is too large; send less (see server.{key})"
EDIT_PATHS = ("/v1/images/edits", "/v1/images/variations", "/sdapi/v1/img2img", "/v1/jobs")
"""The routes that take input images, and so the larger limit."""


class BodyLimitMiddleware:
    """Refuse request bodies larger than the route's limit with 413."""

    def __init__(self, app: ASGIApp, limit: int, edit_limit: int | None = None) -> None:
        self.app = app
        self.limit = limit
        self.edit_limit = edit_limit if edit_limit is not None else limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        edits = str(scope["path"]).startswith(EDIT_PATHS)
        limit = self.edit_limit if edits else self.limit
        key = "max_edit_body_bytes" if edits else "max_body_bytes"
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    await _too_large(scope, send, key)
                    return
                break
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, TOO_LARGE.format(key=key))
            return message

        await self.app(scope, counted, send)


async def _too_large(scope: Scope, send: Send, key: str) -> None:
    message = TOO_LARGE.format(key=key)
    if str(scope["path"]).startswith("/sdapi/"):
        body: object = {"detail": message}
    else:
        body = {
            "error": {
                "type": "request_too_large",
                "message": message,
                "param": None,
                "code": None,
            }
        }
    await send_json(send, 413, body, [(b"connection", b"close")])
