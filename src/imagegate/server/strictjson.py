"""One strict JSON body parser for every surface: a duplicate key is refused, never "last wins",
and so is nesting deeper than ``MAX_DEPTH``.

``APIRouter(route_class=StrictJsonRoute)``: FastAPI reads a JSON body with ``request.json()``;
here that parser refuses an object with the same key twice, as a JSON decode error, which
FastAPI turns into the 4xx validation answer of the surface (naming the key).
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException

MAX_DEPTH = 32
"""The deepest nesting of objects and arrays a body may have: deeper is refused before any
provider is called (a 300-deep ignored field once failed the answer after the generation)."""


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

    parsed = json.loads(document, object_pairs_hook=pairs)
    if _depth(parsed) > MAX_DEPTH:
        raise json.JSONDecodeError(f"nested deeper than {MAX_DEPTH} levels", document, 0)
    return parsed


def _depth(value: Any) -> int:
    """How deep objects and arrays nest in ``value`` (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
        if children is None:
            continue
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:
            stack.extend((child, level + 1) for child in children)
    return deepest


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


class DirectJsonRoute(StrictJsonRoute):
    """A strict JSON route for ``endpoint(body: Model, http: Request) -> Response``: a body sent
    as ``application/json`` that parses and validates goes to the endpoint straight away,
    without FastAPI's dependency solving, endpoint context and telemetry hooks (a tenth of a
    millisecond a request, on the busiest route). Anything else (another content type, JSON
    that does not parse, a body that does not validate) goes through FastAPI's own handler,
    which reads the same body and answers exactly as it always did; so does an endpoint of
    another shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = APIRoute.get_route_handler(self)
        endpoint = self.endpoint
        hints = typing.get_type_hints(endpoint)
        model = hints.get("body")
        if list(hints) != ["body", "http", "return"] or not (
            isinstance(model, type) and issubclass(model, BaseModel)
        ):
            return super().get_route_handler()

        async def direct(request: Request) -> Response:
            strict = StrictJsonRequest(request.scope, request.receive)
            if strict.headers.get("content-type") == "application/json":
                try:
                    body = model.model_validate(await strict.json())
                except HTTPException:  # the body limit, as FastAPI lets it through
                    raise
                except Exception:  # not JSON, invalid, unreadable: FastAPI answers it as before
                    return await handler(strict)
                response: Response = await endpoint(body, strict)
                return response
            return await handler(strict)

        return direct
