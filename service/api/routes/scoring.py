"""``POST /log-likelihood`` and ``POST /encode``: the encode direction (JSON or multipart image files)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from service.api.anomaly_schemas import ScoredLogLikelihoodResponse, anomaly_fields
from service.api.deps import ContextDep, InputsBodyDep
from service.api.openapi import inputs_body_doc
from service.api.render import json_response
from service.api.schemas import EncodeResponse, error_responses
from service.engine import inference
from service.scoring.scores import Items, score_batch

router = APIRouter(tags=["scoring"])
ERRORS = error_responses(401, 404, 413, 422, 503, 504)


@router.post(
    "/log-likelihood",
    response_model=ScoredLogLikelihoodResponse,
    responses=ERRORS,
    openapi_extra=inputs_body_doc(),
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
    x = payload.tensor(served.card, context.settings.max_samples)
    latents, nats, bits = await inference.latents_and_log_likelihood(served, x, deadline)
    items = Items(x=x, latents=latents, bits_per_dim=bits.numpy())
    report = await score_batch(served.card, served.references, items, fpr or context.settings.anomaly_fpr)
    return json_response(
        ScoredLogLikelihoodResponse.model_construct(
            model=served.name, log_likelihood=nats.tolist(), bits_per_dim=bits.tolist(), **anomaly_fields(report)
        )
    )


@router.post("/encode", response_model=EncodeResponse, responses=ERRORS, openapi_extra=inputs_body_doc())
async def encode(payload: InputsBodyDep, request: Request, context: ContextDep) -> Response:
    """Latents `z = f(x)` and `log |det df/dx|` per item (images at the bin centre, as `/log-likelihood`)."""
    deadline = context.deadline()
    served = context.model(request, payload.model)
    x = payload.tensor(served.card, context.settings.max_samples)
    z, log_det = await inference.encode(served, x, deadline)
    return json_response(
        EncodeResponse.model_construct(model=served.name, latents=z.tolist(), log_det=log_det.tolist())
    )
