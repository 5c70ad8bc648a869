"""FastAPI dependencies as ``Annotated`` aliases: app state, auth, deadline, and the inputs body parser."""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.config import Settings
from service.errors import InvalidInputError, PayloadTooLargeError, UnauthorizedError
from service.metrics import Metrics
from service.registry import ModelRegistry, ServedModel
from service.schemas import InputsRequest

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API_KEY>` when API_KEY is set.")


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.settings


async def get_registry(request: Request) -> ModelRegistry:
    """The app's model registry."""
    return request.app.state.registry


async def get_metrics(request: Request) -> Metrics:
    """The app's metrics."""
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def require_api_key(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Check ``Authorization: Bearer <API_KEY>`` in constant time when ``API_KEY`` is set.

    Raises:
        UnauthorizedError: the header is missing, not a bearer token, or the wrong key.
    """
    if settings.api_key is None:
        return
    if credentials is None:
        raise UnauthorizedError("expected header 'Authorization: Bearer <API_KEY>', got no bearer token")
    expected = settings.api_key.get_secret_value().encode()
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise UnauthorizedError("expected the configured API key as bearer token, got another key")


async def request_deadline(settings: SettingsDep) -> float:
    """Event-loop time after which this request is answered with 504."""
    return asyncio.get_running_loop().time() + settings.request_timeout_s


DeadlineDep = Annotated[float, Depends(request_deadline)]


def use_model(request: Request, registry: ModelRegistry, name: str | None) -> ServedModel:
    """Look the model up and record its name for the request metrics."""
    served = registry.get(name)
    request.state.model = served.name
    return served


@dataclass
class InputsPayload:
    """The data items of a ``/log-likelihood`` or ``/encode`` request, from JSON or from multipart files."""

    model: str | None
    inputs: list[Any] | None = None
    images: list[str] | None = None
    files: list[tuple[str, bytes]] | None = None


async def parse_inputs_body(request: Request, settings: SettingsDep) -> InputsPayload:
    """Read a JSON ``InputsRequest`` body, or a ``multipart/form-data`` body of image files (+ ``model`` field).

    Raises:
        ValidationError: the JSON breaks the schema (422 through the error handlers).
        InvalidInputError: the multipart body cannot be parsed (422).
        PayloadTooLargeError: more files than ``MAX_SAMPLES`` (413).
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        body = InputsRequest.model_validate_json(await request.body())
        return InputsPayload(model=body.model, inputs=body.inputs, images=body.images)
    try:
        form = await request.form(max_files=settings.max_samples, max_fields=16)
    except StarletteHTTPException as exc:
        if "Too many files" in str(exc.detail):
            raise PayloadTooLargeError(
                f"files: expected at most MAX_SAMPLES = {settings.max_samples} files, got more"
            ) from exc
        raise InvalidInputError(
            f"body: expected valid multipart/form-data, got an unparseable form ({exc.detail})"
        ) from exc
    try:
        model = form.get("model")
        if model is not None and not isinstance(model, str):
            raise InvalidInputError("model: expected a text form field, got a file")
        files = [
            (value.filename or key, await value.read())
            for key, value in form.multi_items()
            if isinstance(value, UploadFile)
        ]
    finally:
        await form.close()
    return InputsPayload(model=model or None, files=files)


InputsBodyDep = Annotated[InputsPayload, Depends(parse_inputs_body)]
