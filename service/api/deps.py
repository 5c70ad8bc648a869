"""FastAPI dependencies as ``Annotated`` aliases: the service context, auth, and the inputs body parser."""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from artifact import ModelCard
from artifact.scores import ScoreName
from service.api.anomaly_schemas import AnomalyRequest
from service.api.inputs import files_to_tensor, images_to_tensor, inputs_to_tensor
from service.api.schemas import InputsRequest
from service.core.config import Settings
from service.core.errors import ForbiddenError, InvalidInputError, PayloadTooLargeError, UnauthorizedError
from service.core.metrics import Metrics
from service.engine.registry import ModelRegistry, ServedModel
from service.scoring.drift import DriftMonitor

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API_KEY>` when API_KEY is set.")
_admin_bearer = HTTPBearer(
    auto_error=False, scheme_name="AdminBearer", description="`Authorization: Bearer <ADMIN_API_KEY>`."
)


@dataclass(eq=False)
class ServiceContext:
    """What routes need from the app, resolved by one dependency (each dependency costs time per request).

    Attributes:
        settings: the app's settings.
        metrics: the app's metrics.
        registry: the models; set by the lifespan at start-up.
        drift: the models' drift windows (``DRIFT_WINDOW``, ``DRIFT_HORIZON_S``).
    """

    settings: Settings
    metrics: Metrics
    registry: ModelRegistry | None = None
    drift: DriftMonitor = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.drift = DriftMonitor(settings.drift_window, settings.drift_horizon_s, settings.anomaly_fpr, self.metrics)

    def model(self, request: Request, name: str | None, version: str | None = None) -> ServedModel:
        """The ready version a request means (see ``ModelRegistry.get``), recorded for the request metrics.

        The request holds it until its response is sent (``RequestMetrics`` releases the lease), so a version
        replaced or removed meanwhile finishes the request before it is dropped. Its drift window is made here
        on first use, so every route that scores it feeds the window; the drift gauges show the version that
        answers unpinned requests.
        """
        assert self.registry is not None, "the lifespan sets the registry before serving"
        served = self.registry.get(name, version)
        served.acquire()
        request.state.leases = [*getattr(request.state, "leases", ()), served]
        request.state.model = served.name
        self.drift.attach(served.name, served.references, publish=self.registry.is_default(served))
        return served

    def deadline(self) -> float:
        """Event-loop time after which the current request is answered with 504."""
        return asyncio.get_running_loop().time() + self.settings.request_timeout_s


async def get_context(request: Request) -> ServiceContext:
    """The app's ``ServiceContext``."""
    return request.app.state.context


ContextDep = Annotated[ServiceContext, Depends(get_context)]


async def require_api_key(
    context: ContextDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Check ``Authorization: Bearer <API_KEY>`` in constant time (installed only when ``API_KEY`` is set).

    Raises:
        UnauthorizedError: the header is missing, not a bearer token, or the wrong key.
    """
    api_key = context.settings.api_key
    if api_key is None:
        return
    if credentials is None:
        raise UnauthorizedError("expected header 'Authorization: Bearer <API_KEY>', got no bearer token")
    if not hmac.compare_digest(credentials.credentials.encode(), api_key.get_secret_value().encode()):
        raise UnauthorizedError("expected the configured API key as bearer token, got another key")


async def require_admin_key(
    context: ContextDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)]
) -> None:
    """Check ``Authorization: Bearer <ADMIN_API_KEY>`` in constant time; the admin routes are off without the key.

    Raises:
        ForbiddenError: ``ADMIN_API_KEY`` is unset (403, whatever the request carries), or the token presented is
            the ``API_KEY`` (a client of the models, not an administrator).
        UnauthorizedError: the header is missing, not a bearer token, or any other key (401).
    """
    settings = context.settings
    if settings.admin_api_key is None:
        raise ForbiddenError("admin routes are off: expected ADMIN_API_KEY to be set on the server, got it unset")
    if credentials is None:
        raise UnauthorizedError("expected header 'Authorization: Bearer <ADMIN_API_KEY>', got no bearer token")
    presented, api_key = credentials.credentials.encode(), settings.api_key
    is_admin = hmac.compare_digest(presented, settings.admin_api_key.get_secret_value().encode())
    is_client = api_key is not None and hmac.compare_digest(presented, api_key.get_secret_value().encode())
    if is_admin:
        return
    if is_client:
        raise ForbiddenError("expected the admin key (ADMIN_API_KEY) as bearer token, got the API key")
    raise UnauthorizedError("expected the configured admin key as bearer token, got another key")


@dataclass
class InputsPayload:
    """The data items of a ``/log-likelihood`` or ``/encode`` request, from JSON or from multipart files."""

    model: str | None
    inputs: list[Any] | None = None
    images: list[str] | None = None
    files: list[tuple[str, bytes]] | None = None

    def tensor(self, card: ModelCard, limit: int) -> torch.Tensor:
        """The items as a validated ``(N, *shape)`` tensor, whichever way they came."""
        if self.files is not None:
            return files_to_tensor(card, self.files, limit)
        if self.images is not None:
            return images_to_tensor(card, self.images, limit)
        assert self.inputs is not None, "InputsRequest guarantees inputs or images"
        return inputs_to_tensor(card, self.inputs, limit)


def body_kind(request: Request) -> str:
    """``"json"`` or ``"multipart"``, from the request's ``Content-Type`` (FastAPI's strict rule for JSON).

    Raises:
        InvalidInputError: any other content type, or none (422).
    """
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        return "multipart"
    if media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json")):
        return "json"
    shown = repr(content_type if len(content_type) <= 60 else content_type[:57] + "...") if content_type else "none"
    raise InvalidInputError(f"content-type: expected application/json or multipart/form-data, got {shown}")


async def parse_inputs_body(request: Request, context: ContextDep) -> InputsPayload:
    """Read a JSON ``InputsRequest`` body, or a ``multipart/form-data`` body of image files (+ ``model`` field).

    Raises:
        ValidationError: the JSON breaks the schema (422 through the error handlers).
        InvalidInputError: another content type, or the multipart body cannot be parsed (422).
        PayloadTooLargeError: more files than ``MAX_SAMPLES`` (413).
    """
    settings = context.settings
    if body_kind(request) == "json":
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


async def parse_anomaly_body(
    request: Request,
    context: ContextDep,
    fpr: Annotated[float | None, Query(gt=0, lt=1, description="multipart bodies only: see `fpr`.")] = None,
    score: Annotated[ScoreName | None, Query(description="multipart bodies only: see `score`.")] = None,
    explain_maps: Annotated[bool, Query(alias="explain", description="multipart bodies only: see `explain`.")] = False,
) -> tuple[InputsPayload, AnomalyRequest]:
    """An ``/anomaly`` body: JSON ``AnomalyRequest``, or multipart image files with the options in the query.

    Raises:
        InvalidInputError: options in the query string of a JSON body (422).
    """
    if body_kind(request) == "multipart":
        payload = await parse_inputs_body(request, context)
        return payload, AnomalyRequest.model_construct(fpr=fpr, score=score, explain=explain_maps)
    if fpr is not None or score is not None or explain_maps:
        raise InvalidInputError(
            "query: expected fpr, score and explain in the JSON body (the query string is for multipart "
            f"bodies), got query parameters {sorted(request.query_params)}"
        )
    options = AnomalyRequest.model_validate_json(await request.body())
    return InputsPayload(model=options.model, inputs=options.inputs, images=options.images), options


AnomalyBodyDep = Annotated[tuple[InputsPayload, AnomalyRequest], Depends(parse_anomaly_body)]
