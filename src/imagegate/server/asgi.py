"""Answers written straight to ASGI by the middlewares that refuse a request before the app
sees it (the body limit, the key check, the browser guard): one JSON body and its headers."""

from __future__ import annotations

import json

from starlette.types import Send

__all__ = ["send_json"]


async def send_json(
    send: Send, status: int, body: object, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer ``status`` with ``body`` as JSON (its length set) and ``headers``."""
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
