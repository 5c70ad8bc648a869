"""The one place that maps errors to HTTP responses: domain errors, validation errors, Starlette's own.

Every error body is ``{"detail": "..."}`` where the text says what was expected and what was received; under
``/v2`` (the Open Inference Protocol) it is ``{"error": "..."}`` and a request the service cannot use is a 400,
as that protocol's HTTP/REST section asks.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.core.errors import (
    DeadlineExceededError,
    DeviceOutOfMemoryError,
    ForbiddenError,
    InferenceFailedError,
    InvalidInputError,
    ModelNotFoundError,
    PayloadTooLargeError,
    ReferenceMissingError,
    ServiceError,
    UnauthorizedError,
    UnavailableError,
)

logger = logging.getLogger(__name__)
# FastAPI's 400 for a JSON body it cannot decode; answered as 422 with the reason, like any malformed JSON.
FASTAPI_BODY_ERROR = "There was an error parsing the body"
# nginx's "client closed request": never delivered (nobody listens), but it counts hang-ups in the metrics.
CLIENT_CLOSED_REQUEST = 499
# Paths of the Open Inference Protocol (KServe V2): its own error body, and 400 where the native API says 422.
V2_PREFIX = "/v2"

STATUS_CODES: dict[type[ServiceError], int] = {
    InvalidInputError: 422,
    ModelNotFoundError: 404,
    PayloadTooLargeError: 413,
    UnauthorizedError: 401,
    ForbiddenError: 403,
    UnavailableError: 503,
    DeviceOutOfMemoryError: 503,
    DeadlineExceededError: 504,
    InferenceFailedError: 500,
    ReferenceMissingError: 409,
}


def status_code(exc: ServiceError) -> int:
    """The HTTP status of a domain error (500 for one without an entry)."""
    for kind in type(exc).__mro__:
        if kind in STATUS_CODES:
            return STATUS_CODES[kind]  # type: ignore[index]
    return 500


def error_headers(exc: ServiceError) -> dict[str, str] | None:
    """``Retry-After`` for a retryable 503, ``WWW-Authenticate`` for a 401."""
    if isinstance(exc, UnavailableError) and exc.retry_after_s is not None:
        return {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, UnauthorizedError):
        return {"WWW-Authenticate": "Bearer"}
    return None


def service_error_response(exc: ServiceError, path: str = "") -> JSONResponse:
    """The response of a domain error to a request for ``path``."""
    return error_response(status_code(exc), exc.detail, error_headers(exc), path)


def _expectation(error: Any) -> tuple[str, bool]:
    """What one pydantic error expected, and whether to append the received value."""
    kind = error.get("type", "")
    context = error.get("ctx") or {}
    message = str(error.get("msg", "invalid value"))
    if kind == "missing":
        return "expected this field, it is required, got nothing", False
    if kind == "extra_forbidden":
        return "expected no such field", True
    if kind == "too_short":
        return f"expected at least {context.get('min_length')} items", True
    if kind == "too_long":
        return f"expected at most {context.get('max_length')} items", True
    if kind == "json_invalid":
        return f"expected a valid JSON body, got invalid JSON ({context.get('error', 'parse error')})", False
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "expected a JSON object", True
    if kind == "value_error":
        return message.removeprefix("Value error, "), False
    if message.startswith("Input should be "):
        return "expected " + message.removeprefix("Input should be "), True
    return message, True


def _describe_validation_error(errors: list[Any]) -> str:
    """Turn pydantic's error list into one "field: expected X, got Y" sentence per error."""
    parts = []
    for error in errors[:5]:
        location = ".".join(str(item) for item in error.get("loc", ()) if item != "body") or "body"
        expectation, show_input = _expectation(error)
        if show_input:
            shown = repr(error.get("input"))
            expectation += f", got {shown if len(shown) <= 80 else shown[:77] + '...'}"
        parts.append(f"{location}: {expectation}")
    if len(errors) > 5:
        parts.append(f"... and {len(errors) - 5} more")
    return "; ".join(parts)


def is_v2_path(path: str) -> bool:
    """Whether ``path`` belongs to the Open Inference Protocol routes."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def error_response(
    status_code: int, detail: str, headers: dict[str, str] | None = None, path: str = ""
) -> JSONResponse:
    """Build the JSON error body every error of ``path`` shares (``{"error"}`` and 400 for 422 under ``/v2``)."""
    if is_v2_path(path):
        return JSONResponse({"error": detail}, status_code=400 if status_code == 422 else status_code, headers=headers)
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the exception → response mapping on ``app``."""

    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        if status_code(exc) >= 500 and not isinstance(exc, UnavailableError | DeadlineExceededError):
            logger.error("%s %s failed: %s", request.method, request.url.path, exc.detail)
        return service_error_response(exc, request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError | ValidationError)
        return error_response(422, _describe_validation_error(list(exc.errors())), path=request.url.path)

    async def on_http_exception(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        cause = exc.__cause__
        if isinstance(cause, ServiceError):  # FastAPI wraps what reading a JSON body raised (the streamed 413)
            return await on_service_error(request, cause)
        if isinstance(cause, ClientDisconnect):
            return await on_client_disconnect(request, cause)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 400 and detail == FASTAPI_BODY_ERROR:  # not UTF-8, nested too deep, huge integer
            reason = f"{type(cause).__name__}: {cause}" if cause is not None else "unreadable"
            reason = reason if len(reason) <= 120 else reason[:117] + "..."
            detail = f"body: expected a valid JSON body, got one that cannot be parsed ({reason})"
            return error_response(422, detail, path=request.url.path)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"expected one of the documented paths (see /docs), got {request.url.path}"
        elif exc.status_code == 405:
            detail = f"expected another method for {request.url.path}, got {request.method}"
        return error_response(exc.status_code, detail, getattr(exc, "headers", None), request.url.path)

    async def on_client_disconnect(request: Request, exc: Exception) -> JSONResponse:
        logger.info("%s %r: the client hung up before sending its whole body", request.method, request.url.path)
        detail = "expected the whole request body, got a closed connection"
        return error_response(CLIENT_CLOSED_REQUEST, detail, path=request.url.path)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error; the service logged it", path=request.url.path)

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(ClientDisconnect, on_client_disconnect)
    app.add_exception_handler(Exception, on_unexpected)
