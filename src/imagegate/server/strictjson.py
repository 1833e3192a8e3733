"""One strict JSON body parser for every surface: a duplicate key is refused, never "last wins".

``APIRouter(route_class=StrictJsonRoute)``: FastAPI reads a JSON body with ``request.json()``;
here that parser refuses an object with the same key twice, as a JSON decode error, which
FastAPI turns into the 4xx validation answer of the surface (naming the key).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


def loads_strict(text: str | bytes) -> Any:
    """``json.loads``, refusing duplicate keys in any object (JSONDecodeError naming the key)."""
    document = text.decode() if isinstance(text, bytes) else text

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                raise json.JSONDecodeError(f"duplicate key {key!r}", document, 0)
            seen[key] = value
        return seen

    return json.loads(document, object_pairs_hook=pairs)


class StrictJsonRequest(Request):
    """A request whose JSON body is read with :func:`loads_strict`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_strict(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """A route whose handler sees a :class:`StrictJsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict
