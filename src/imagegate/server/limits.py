"""The request body limit (``server.max_body_bytes``): 413 with a JSON error, as pure ASGI.

A declared Content-Length past the limit is refused before the body is read; a chunked body
is counted as it arrives and refused once it passes the limit.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOO_LARGE = "the request body is too large; send less (see server.max_body_bytes)"


class BodyLimitMiddleware:
    """Refuse request bodies larger than ``limit`` bytes with 413."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    await _too_large(scope, send)
                    return
                break
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, TOO_LARGE)
            return message

        await self.app(scope, counted, send)


async def _too_large(scope: Scope, send: Send) -> None:
    if str(scope["path"]).startswith("/sdapi/"):
        body: object = {"detail": TOO_LARGE}
    else:
        body = {
            "error": {
                "type": "request_too_large",
                "message": TOO_LARGE,
                "param": None,
                "code": None,
            }
        }
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
