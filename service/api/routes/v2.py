"""The Open Inference Protocol (KServe V2) over HTTP/REST: health, metadata and ``infer`` for every model.

``health_router`` (``/v2``, ``/v2/health/*``) stays open like ``/healthz``, for probes; ``router`` (model metadata,
readiness and ``infer``) takes the API key like the native model routes. ``infer`` runs the same code as
``/log-likelihood``: the same validation, limits and batcher, and the same anomaly scores. Errors are
``{"error": "..."}`` (``service/api/errors.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from artifact import ModelCard, scores
from service.api import v2_codec
from service.api.deps import ContextDep, ServiceContext
from service.api.render import json_response
from service.api.v2_schemas import (
    EXTENSIONS,
    HEADER_LENGTH,
    INPUT_NAME,
    OUTPUTS,
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    MetadataTensor,
    ModelMetadata,
    ReadyResponse,
    ServerMetadata,
    V2Error,
    v2_error_responses,
)
from service.core.errors import UnavailableError
from service.engine import inference
from service.engine.registry import ServedModel
from service.scoring.references import References
from service.scoring.scores import Items, decision, score_batch, unavailable_reason

health_router = APIRouter(prefix="/v2", tags=["open inference protocol"])
router = APIRouter(prefix="/v2", tags=["open inference protocol"])
NOT_READY = 400  # the protocol: readiness is the status code, 200 for true and a 4xx for false
PLATFORM = "pytorch_torchscript"
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"Binary outputs asked for: `{HEADER_LENGTH}` bytes of JSON, then raw tensors.",
            }
        }
    },
    **v2_error_responses(400, 401, 404, 413, 503, 504),
}
NOT_READY_DOC = {NOT_READY: {"model": V2Error, "description": "Not ready (loading, or failed to load: named)."}}
INFER_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": InferenceRequest.model_json_schema()},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"Binary tensor data extension: `{HEADER_LENGTH}` bytes of JSON, then raw tensors.",
            },
        },
    }
}


def _served(context: ServiceContext, request: Request, name: str, version: str | None) -> ServedModel:
    """The ready model of a ``/v2/models/{name}[/versions/{version}]`` path.

    Raises:
        ModelNotFoundError: no such model, or no such version loaded (the loaded versions are named).
        UnavailableError: the model is loading or failed to load.
    """
    return context.model(request, name, version)


def available_outputs(card: ModelCard, references: References | None) -> list[str]:
    """The outputs a model gives: the anomaly outputs only when its card has what the default score needs."""
    has_default = unavailable_reason(card, references, scores.default_score(card.is_image)) is None
    return [name for name, spec in OUTPUTS.items() if has_default or not spec.needs_references]


# ------------------------------------------------------------------------------------------------- server
@health_router.get("", response_model=ServerMetadata)
async def server_metadata(request: Request) -> ServerMetadata:
    """Server metadata: name, version and the protocol extensions it supports."""
    return ServerMetadata(name="realnvp-service", version=request.app.version, extensions=list(EXTENSIONS))


@health_router.get("/health/live", response_model=LiveResponse)
async def server_live() -> LiveResponse:
    """200 while the process answers (a Kubernetes liveness probe)."""
    return LiveResponse(live=True)


@health_router.get("/health/ready", response_model=ReadyResponse, responses=NOT_READY_DOC)
async def server_ready(context: ContextDep) -> Response:
    """200 once every model is loaded, verified and warmed up (a readiness probe); 400 naming what is not."""
    registry = context.registry
    assert registry is not None, "the lifespan sets the registry before serving"
    if registry.ready:
        return json_response(ReadyResponse(ready=True))
    readiness = registry.readiness()
    waiting = {name: status for name, status in readiness["models"].items() if status != "ready"}
    detail = f"expected every model ready, got status {readiness['status']!r}: {waiting or readiness['failed']}"
    return JSONResponse({"error": detail[:1000]}, status_code=NOT_READY)


# ------------------------------------------------------------------------------------------------- models
def _metadata(context: ServiceContext, served: ServedModel) -> ModelMetadata:
    card = served.card
    outputs = available_outputs(card, served.references)
    assert context.registry is not None, "the lifespan sets the registry before serving"
    return ModelMetadata(
        name=served.name,
        versions=list(context.registry.versions.get(served.name, {})),
        platform=PLATFORM,
        inputs=[
            MetadataTensor(name=INPUT_NAME, datatype="UINT8" if card.is_image else "FP32", shape=[-1, *card.shape])
        ],
        outputs=[MetadataTensor(name=name, datatype=OUTPUTS[name].datatype, shape=[-1]) for name in outputs],
    )


@router.get("/models/{name}", response_model=ModelMetadata, responses=v2_error_responses(401, 404, 503))
async def model_metadata(name: str, request: Request, context: ContextDep) -> ModelMetadata:
    """Model metadata: the input (`input`, `[-1, *shape]`; images as UINT8) and the outputs per item."""
    return _metadata(context, _served(context, request, name, None))


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, include_in_schema=False)
async def model_version_metadata(name: str, version: str, request: Request, context: ContextDep) -> ModelMetadata:
    """Model metadata of one loaded version (`versions` lists them all; one not loaded is 404)."""
    return _metadata(context, _served(context, request, name, version))


async def _model_ready(name: str, version: str | None, request: Request, context: ServiceContext) -> Response:
    try:
        _served(context, request, name, version)
    except UnavailableError as exc:
        return JSONResponse({"error": exc.detail}, status_code=NOT_READY)
    return json_response(ReadyResponse(ready=True))


@router.get(
    "/models/{name}/ready",
    response_model=ReadyResponse,
    responses={**v2_error_responses(401, 404), **NOT_READY_DOC},
)
async def model_ready(name: str, request: Request, context: ContextDep) -> Response:
    """200 when the model is ready, 400 while it loads or when it failed (the reason), 404 for no such model."""
    return await _model_ready(name, None, request, context)


@router.get("/models/{name}/versions/{version}/ready", response_model=ReadyResponse, include_in_schema=False)
async def model_version_ready(name: str, version: str, request: Request, context: ContextDep) -> Response:
    """Readiness of one version of a model."""
    return await _model_ready(name, version, request, context)


# ------------------------------------------------------------------------------------------------- infer
async def _infer(name: str, version: str | None, request: Request, context: ServiceContext) -> Response:
    """Decode the request, score its items through the model's batcher, encode the requested outputs."""
    deadline = context.deadline()
    v2_codec.check_media_type(request.headers.get("content-type", ""))
    body = await request.body()
    served = _served(context, request, name, version)
    card = served.card
    parsed, binary = v2_codec.parse_request(body, request.headers.get(HEADER_LENGTH))
    x = v2_codec.input_tensor(card, parsed, binary, context.settings.max_samples)
    fpr = v2_codec.request_fpr(parsed, context.settings.anomaly_fpr)
    wanted = v2_codec.requested_outputs(parsed, available_outputs(card, served.references))
    latents, nats, bits = await inference.latents_and_log_likelihood(served, x, deadline)
    report = await score_batch(card, served.references, Items(x=x, latents=latents, bits_per_dim=bits.numpy()), fpr)
    values: dict[str, Any] = {"log_likelihood": nats.numpy(), "bits_per_dim": bits.numpy()}
    default = scores.default_score(card.is_image)
    if default in report.scores:
        calibrated = report.scores[default]
        values.update(
            anomaly_score=calibrated.values,
            anomaly_p_value=calibrated.p_value,
            is_anomaly=np.asarray(decision(report, default, len(x))),
        )
    return v2_codec.infer_response(served.name, card.version, parsed.id, wanted, values)


@router.post(
    "/models/{name}/infer",
    response_model=InferenceResponse,
    responses=INFER_RESPONSES,
    openapi_extra=INFER_BODY_DOC,
)
async def infer(name: str, request: Request, context: ContextDep) -> Response:
    """Log-likelihood (nats), bits/dim and the default anomaly score of each item of the `input` tensor.

    The same validation, `MAX_SAMPLES`, batching and deadline as `POST /log-likelihood`. Outputs as JSON, or as
    raw bytes with the binary tensor data extension (`binary_data` / `binary_data_output`).
    """
    return await _infer(name, None, request, context)


@router.post("/models/{name}/versions/{version}/infer", response_model=InferenceResponse, include_in_schema=False)
async def infer_version(name: str, version: str, request: Request, context: ContextDep) -> Response:
    """``infer`` on one loaded version of a model (one not loaded is 404, naming those that are)."""
    return await _infer(name, version, request, context)
