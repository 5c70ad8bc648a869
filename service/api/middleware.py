"""ASGI middleware: request metrics (outermost) and the body size limit (413 before the body is read)."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.core.errors import PayloadTooLargeError
from service.core.metrics import Metrics

UNROUTED = "unrouted"


class BodySizeLimit:
    """Refuse bodies over ``max_bytes``: at once when ``Content-Length`` says so, else while streaming.

    A streamed body that grows past the limit makes ``receive`` raise ``PayloadTooLargeError`` inside the route,
    where the error handlers answer 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 413 for a declared oversize body, else pass on with a counting ``receive``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                detail = f"expected a non-negative integer Content-Length, got {declared!r}"
                response = error_response(400, detail, path=scope.get("path", ""))
                await response(scope, receive, send)
                return
            if length > self.max_bytes:
                await _too_large(length, self.max_bytes, scope.get("path", ""))(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLargeError(
                        f"body: expected at most MAX_BODY_BYTES = {self.max_bytes} bytes, got at least {received}"
                    )
            return message

        await self.app(scope, limited_receive, send)


def _too_large(length: int, limit: int, path: str) -> Any:
    return error_response(413, f"body: expected at most MAX_BODY_BYTES = {limit} bytes, got {length}", path=path)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class RequestMetrics:
    """Count every HTTP request by endpoint (route template), model and status, and time it.

    Routes record the model they served in ``request.state.model`` (only names of served models, so clients
    cannot grow the label set). Once the response is sent it releases the model versions the request held
    (``request.state.leases``, taken by ``ServiceContext.model``): this is the outermost layer, so every request,
    answered or failed or abandoned, passes here exactly once.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on and record its endpoint, model, status and latency."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # A per-request copy (as uvicorn makes; some ASGI test harnesses share one dict between requests).
        state = scope["state"] = dict(scope.get("state") or {})
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                self.metrics.request_latency.labels(endpoint=_endpoint(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            model = state.get("model", "") if isinstance(state, dict) else ""
            self.metrics.requests.labels(endpoint=_endpoint(scope), model=model, status=str(status)).inc()
            for served in state.get("leases", ()) if isinstance(state, dict) else ():
                served.release()  # the model version may now drain, if a reload replaced or removed it


def _endpoint(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNROUTED
