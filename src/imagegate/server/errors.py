"""The error tree as HTTP: status codes, OpenAI's error shape, A1111's on /sdapi.

``{"error": {"type", "message", "param", "code", "attempts"?}}``; ``type`` is the error
class. A caller's fault is a 4xx naming the field in ``param``; an upstream failure is 502
(an error answer), 503 (unavailable, rate limited) or 504 (timed out), with
``x-should-retry: false`` once the gateway has tried and given up, so OpenAI's client does not
multiply the load. The /sdapi routes answer A1111's shapes: ``{"detail": [...]}`` with 422
for validation, ``{"error", "detail", "body", "errors"}`` otherwise. Never a traceback.
"""

from __future__ import annotations

import logging
import math
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagegate.errors import (
    AllProvidersFailed,
    Cancelled,
    ConfigError,
    ContentFiltered,
    ImagegateError,
    Interrupted,
    InvalidRequest,
    MissingDependency,
    ProviderError,
    QueueFull,
    RateLimited,
    StorageError,
    Timeout,
    Unavailable,
)
from imagegate.request import Attempt

log = logging.getLogger("imagegate.server")

MADE: ContextVar[str | None] = ContextVar("imagegate_made_job", default=None)
"""The job whose images this request has made (set once it succeeded): a failure after it
answers 502 naming the job, whose images stay at ``GET /v1/jobs/{id}``, never a bare 500."""

HTTP_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ErrorDetail(BaseModel):
    """What went wrong: ``type`` is the error class, ``param`` the field at fault."""

    type: str
    message: str
    param: str | None = None
    code: str | None = None
    fix: str | None = Field(
        default=None, description="what to do about it (the message ends with it too)"
    )
    attempts: list[Attempt] | None = Field(
        default=None, description="each try on each provider, when the gateway tried"
    )


class ErrorBody(BaseModel):
    """Every error answer outside /sdapi, in OpenAI's shape."""

    error: ErrorDetail


_MEANINGS = {
    400: "invalid input: `error.param` names the field and the message the limit",
    401: "no valid API key",
    403: "the key may not do this: a route it may not use, or an admin-only call",
    404: "no such id",
    409: "the job already ended, or was cancelled",
    413: "the request body is too large",
    429: "the queue is full, or the key is over its rate (`rate_limit_exceeded`) or budget "
    "(`insufficient_quota`): try again after Retry-After",
    502: "every provider on the route failed; `error.attempts` says how",
    503: "the providers are unavailable or rate limited, the job was interrupted, or the "
    "image store did not answer",
    504: "the providers timed out",
}


class A1111Error(BaseModel):
    """An /sdapi error in A1111's own shape (``errors`` repeats ``detail``)."""

    error: str
    detail: str
    body: str
    errors: str


class A1111ValidationError(BaseModel):
    """An /sdapi body that does not validate, as FastAPI (and so A1111) answers it."""

    detail: list[dict[str, Any]]


class A1111Refusal(BaseModel):
    """An /sdapi request refused before it is read (credentials, size)."""

    detail: str


def _a1111(model: Any, status: int) -> dict[str, Any]:
    return {"model": model, "description": _MEANINGS[status]}


A1111_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _a1111(A1111Refusal, 401),
    413: _a1111(A1111Refusal, 413),
    422: {
        "model": A1111ValidationError | A1111Error,
        "description": "invalid input: a field list, or the field and its limit in `detail`",
    },
    **{status: _a1111(A1111Error, status) for status in (409, 429, 502, 503, 504)},
}
"""What the /sdapi routes answer besides their results (A1111's shapes)."""


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each answering an ErrorBody."""
    return {status: {"model": ErrorBody, "description": _MEANINGS[status]} for status in statuses}


def document_errors(app: FastAPI) -> None:
    """Have /openapi.json say what the handlers send: outside /sdapi a validation error is a
    400 (declared with ``error_responses``), never FastAPI's default 422."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        first = app.openapi_schema is None
        schema = build()  # FastAPI builds it once, then hands back the same dict
        if first:
            for path, operations in schema["paths"].items():
                if not path.startswith("/sdapi/"):
                    for operation in operations.values():
                        operation["responses"].pop("422", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def is_a1111(request: Request) -> bool:
    return request.url.path.startswith("/sdapi/")


@dataclass(frozen=True)
class HttpError:
    """An error of the tree as HTTP, the same on every surface and for every backplane."""

    status: int
    headers: dict[str, str]
    type: str
    message: str
    param: str | None
    code: str | None
    fix: str | None
    attempts: list[Attempt]

    @property
    def retry_after(self) -> int | None:
        """The Retry-After header's seconds, when there is one."""
        value = self.headers.get("retry-after")
        return int(value) if value is not None else None

    @property
    def should_retry(self) -> bool | None:
        """False once the gateway tried and gave up (``x-should-retry``); None = unsaid."""
        return False if self.headers.get("x-should-retry") == "false" else None


def http_error(exc: ImagegateError, *, a1111: bool = False) -> HttpError:
    """The one mapping of an error to its HTTP status, headers and body fields.

    Every surface calls it: the OpenAI and A1111 routes for the error they answer with, and
    /v1/jobs/{id} for the error a job ended with (rebuilt from its row), so a job that failed
    in another process answers exactly as one that failed here. The /sdapi routes answer a
    request's fault with 422, as A1111 does, where the others answer 400.
    """
    status = _status(exc)
    if a1111 and isinstance(exc, InvalidRequest):
        status = 422
    return HttpError(
        status=status,
        headers=_headers(exc),
        type=type(exc).__name__,
        message=str(exc),
        param=exc.field if isinstance(exc, InvalidRequest) else None,
        code=_code(exc),
        fix=exc.fix,
        attempts=list(exc.attempts),
    )


def _status(exc: ImagegateError) -> int:
    if isinstance(exc, QueueFull):
        return 429
    if isinstance(exc, InvalidRequest | ContentFiltered):
        return 400
    if isinstance(exc, Cancelled):
        return 409
    if isinstance(exc, Interrupted | MissingDependency | StorageError):
        return 503
    if isinstance(exc, AllProvidersFailed):
        return _upstream_status(exc.last)
    if isinstance(exc, ProviderError):
        return _upstream_status(exc)
    return 500


def _upstream_status(exc: ProviderError | None) -> int:
    if isinstance(exc, Timeout):
        return 504
    if isinstance(exc, Unavailable | RateLimited):
        return 503
    return 502


def _retry_after(exc: ImagegateError) -> float | None:
    if isinstance(exc, QueueFull):
        return exc.retry_after
    last = exc.last if isinstance(exc, AllProvidersFailed) else exc
    value = getattr(last, "retry_after", None)
    return float(value) if isinstance(value, int | float) else None


def _last_provider(attempts: list[Attempt]) -> str | None:
    for attempt in reversed(attempts):
        if attempt.outcome != "skipped":
            return attempt.provider
    return None


def _headers(exc: ImagegateError) -> dict[str, str]:
    """x-imagegate-attempts/provider, Retry-After and x-should-retry for an error."""
    headers = {"x-imagegate-attempts": str(len(exc.attempts))}
    provider = _last_provider(exc.attempts)
    if provider is not None:
        headers["x-imagegate-provider"] = provider
    retry_after = _retry_after(exc)
    if retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(retry_after)))
    if exc.attempts or isinstance(exc, Cancelled | Interrupted):
        headers["x-should-retry"] = "false"
    return headers


def _code(exc: ImagegateError) -> str | None:
    if isinstance(exc, ContentFiltered):
        return "content_policy_violation"
    if isinstance(exc, QueueFull):
        return "queue_full"
    if isinstance(exc, Cancelled):
        return "cancelled"
    if isinstance(exc, InvalidRequest):
        return "invalid_value"
    return None


def openai_error(
    status: int,
    kind: str,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    fix: str | None = None,
    attempts: list[Attempt] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"type": kind, "message": message, "param": param, "code": code}
    if fix:
        body["fix"] = fix
    if attempts:
        body["attempts"] = [attempt.model_dump(mode="json") for attempt in attempts]
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def a1111_error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": kind, "detail": message, "body": "", "errors": message}
    return JSONResponse(body, status_code=status, headers=headers)


def error_response(request: Request, exc: ImagegateError) -> JSONResponse:
    """The response for any error of the tree."""
    error = http_error(exc, a1111=is_a1111(request))
    if error.status >= 500:
        log.warning("%s %s -> %d %s", request.method, request.url.path, error.status, error.type)
    if is_a1111(request):
        return a1111_error(error.status, error.type, error.message, error.headers)
    return openai_error(
        error.status,
        error.type,
        error.message,
        param=error.param,
        code=error.code,
        fix=error.fix,
        attempts=error.attempts,
        headers=error.headers,
    )


def _param(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def _on_imagegate_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ImagegateError)
    return error_response(request, exc)


def _duplicate_key(error: Any) -> str:
    """The strict parser's reason ("duplicate key 'x'", "nested deeper than N levels") of a
    json_invalid error, or ""."""
    reason = str((error.get("ctx") or {}).get("error", ""))
    return reason if reason.startswith(("duplicate key", "nested deeper")) else ""


def _a1111_msg(error: Any) -> str:
    msg = str(error.get("msg", ""))
    duplicate = _duplicate_key(error) if error.get("type") == "json_invalid" else ""
    return f"{msg}: {duplicate}" if duplicate else msg


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if is_a1111(request):
        detail = [
            {"loc": list(e.get("loc", ())), "msg": _a1111_msg(e), "type": e.get("type")}
            for e in errors
        ]
        return JSONResponse({"detail": detail}, status_code=422)
    first = errors[0] if errors else {}
    param = _param(first.get("loc", ()))
    msg = str(first.get("msg", "invalid value"))
    if first.get("type") == "json_invalid":
        duplicate = _duplicate_key(first)
        param, msg = "body", "the body is not valid JSON" + (f" ({duplicate})" if duplicate else "")
    elif first.get("type") == "extra_forbidden":
        msg = "is not a known field"
    return openai_error(
        400,
        "InvalidRequest",
        f"{param}: {msg}. Change {param} and try again.",
        param=param,
        code="invalid_value",
    )


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    headers = dict(exc.headers or {})
    if is_a1111(request):
        return JSONResponse({"detail": message}, status_code=exc.status_code, headers=headers)
    kind = HTTP_TYPES.get(exc.status_code, "server_error")
    return openai_error(exc.status_code, kind, message, headers=headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected %s on %s %s", type(exc).__name__, request.method, request.url.path)
    made = MADE.get()
    if made is not None:  # the generation is done and stored: say where, with a 502
        message = (
            f"the images were made and stored (job {made}), but building the answer failed "
            f"in stage respond ({type(exc).__name__}); GET /v1/jobs/{made} has them"
        )
        if is_a1111(request):
            return a1111_error(502, "ResponseError", message)
        return openai_error(502, "ResponseError", message, code="respond_failed")
    message = "an internal error occurred; the server log has the details"
    if isinstance(exc, ConfigError):
        message = str(exc)
    if is_a1111(request):
        return a1111_error(500, type(exc).__name__, message)
    return openai_error(500, "InternalError", message)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(ImagegateError, _on_imagegate_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
