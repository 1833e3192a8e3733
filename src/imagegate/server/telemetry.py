"""A trace span per HTTP request (``METHOD /route``), continuing an incoming ``traceparent``.

Added by ``create_app`` only while tracing is on (``imagegate.tracing``); a plain ASGI
middleware, so streamed answers (SSE) are timed to their last byte.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegate import tracing

__all__ = ["TraceMiddleware"]

_PROPAGATED = (b"traceparent", b"tracestate")


class TraceMiddleware:
    """One server span per HTTP request; its parent is the caller's ``traceparent``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        carrier = {
            key.decode("latin-1"): value.decode("latin-1")
            for key, value in scope.get("headers", ())
            if key in _PROPAGATED
        }
        method = str(scope.get("method", "GET"))
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": scope.get("path", ""),
            "url.scheme": scope.get("scheme", "http"),
        }
        status: dict[str, int] = {}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        with tracing.span(method, kind="server", attributes=attributes, carrier=carrier) as span:
            try:
                await self.app(scope, receive, sending)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.update_name(f"{method} {route}")
                    tracing.set_attributes(span, {"http.route": route})
                code = status.get("code")
                tracing.set_attributes(span, {"http.response.status_code": code})
                if code is not None and code >= 500:
                    tracing.error(span, f"HTTP {code}")
