"""``POST /log-likelihood`` and ``POST /encode``: the encode direction (JSON or multipart image files)."""

from __future__ import annotations

from typing import Annotated, Any

import torch
from fastapi import APIRouter, Query, Request, Response

from service import inference
from service.anomaly_schemas import ScoredLogLikelihoodResponse
from service.anomaly_scoring import score_batch
from service.api.deps import ContextDep, InputsBodyDep, InputsPayload
from service.api.render import json_response
from service.card import ModelCard
from service.inputs import files_to_tensor, images_to_tensor, inputs_to_tensor
from service.schemas import (
    EXAMPLE_PNG,
    EncodeResponse,
    InputsRequest,
    error_responses,
)

router = APIRouter(tags=["scoring"])
ERRORS = error_responses(401, 404, 413, 422, 503, 504)


# OpenAPI of a multipart body of image files (with an optional ``model`` field), shared by every route taking one.
MULTIPART_FILES_DOC: dict[str, Any] = {
    "schema": {
        "type": "object",
        "properties": {
            "model": {"type": "string", "example": "mnist"},
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
        },
        "required": ["files"],
    },
    "example": {"model": "mnist", "files": ["digit.png"]},
}


def _request_body_doc() -> dict[str, Any]:
    """OpenAPI for a body FastAPI does not parse itself: JSON ``InputsRequest`` or multipart files."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": InputsRequest.model_json_schema(),
                    "examples": {
                        "images": {"summary": "base64 PNG", "value": {"model": "mnist", "images": [EXAMPLE_PNG]}},
                        "inputs": {"summary": "vectors", "value": {"model": "moons", "inputs": [[0.5, -0.25]]}},
                    },
                },
                "multipart/form-data": MULTIPART_FILES_DOC,
            },
        }
    }


def payload_tensor(card: ModelCard, payload: InputsPayload, limit: int) -> torch.Tensor:
    """The request's items as a validated ``(N, *shape)`` tensor, whichever way they came."""
    if payload.files is not None:
        return files_to_tensor(card, payload.files, limit)
    if payload.images is not None:
        return images_to_tensor(card, payload.images, limit)
    assert payload.inputs is not None, "InputsRequest guarantees inputs or images"
    return inputs_to_tensor(card, payload.inputs, limit)


@router.post(
    "/log-likelihood",
    response_model=ScoredLogLikelihoodResponse,
    responses=ERRORS,
    openapi_extra=_request_body_doc(),
)
async def log_likelihood(
    payload: InputsBodyDep,
    request: Request,
    context: ContextDep,
    fpr: Annotated[float | None, Query(gt=0, lt=1, description="False-positive rate of `is_anomaly`.")] = None,
) -> Response:
    """Exact log-likelihood (nats) and bits/dim per item; 8-bit images are scored at the bin centre `x + 0.5`.

    Also the anomaly scores of each item against the card's reference scores (docs/anomaly.md).
    """
    deadline = context.deadline()
    served = context.model(request, payload.model)
    x = payload_tensor(served.card, payload, context.settings.max_samples)
    latents, nats, bits = await inference.latents_and_log_likelihood(served, x, deadline)
    scores = await score_batch(served, x, latents, bits, fpr or context.settings.anomaly_fpr)
    return json_response(
        ScoredLogLikelihoodResponse.model_construct(
            model=served.name, log_likelihood=nats.tolist(), bits_per_dim=bits.tolist(), **dict(scores)
        )
    )


@router.post("/encode", response_model=EncodeResponse, responses=ERRORS, openapi_extra=_request_body_doc())
async def encode(payload: InputsBodyDep, request: Request, context: ContextDep) -> Response:
    """Latents `z = f(x)` and `log |det df/dx|` per item (images at the bin centre, as `/log-likelihood`)."""
    deadline = context.deadline()
    served = context.model(request, payload.model)
    x = payload_tensor(served.card, payload, context.settings.max_samples)
    z, log_det = await inference.encode(served, x, deadline)
    return json_response(
        EncodeResponse.model_construct(model=served.name, latents=z.tolist(), log_det=log_det.tolist())
    )
