"""``POST /anomaly``: calibrated anomaly scores per item, the decision, and optional explanation maps."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from artifact import scores
from service.api.anomaly_schemas import AnomalyRequest, AnomalyResponse, anomaly_fields
from service.api.deps import AnomalyBodyDep, ContextDep
from service.api.inputs import require_image_model
from service.api.openapi import MULTIPART_FILES_DOC
from service.api.render import json_response
from service.api.schemas import EXAMPLE_PNG, ErrorBody, error_responses
from service.engine import inference
from service.scoring.explain import explain
from service.scoring.scores import Items, decision, require, score_batch

router = APIRouter(tags=["anomaly"])
ERRORS: dict[int | str, dict[str, Any]] = {
    **error_responses(401, 404, 413, 422, 503, 504),
    409: {
        "model": ErrorBody,
        "description": "The card lacks the reference scores the deciding score needs (exported before it existed).",
        "content": {
            "application/json": {
                "example": {
                    "detail": "reference scores for 'complexity' missing from card of model 'mnist' (exported "
                    "2026-11-01T10:00:00Z, before cards stored complexity references); re-export it with ..."
                }
            }
        },
    },
}
OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": AnomalyRequest.model_json_schema(),
                "examples": {
                    "image": {"value": {"model": "mnist", "images": [EXAMPLE_PNG], "fpr": 0.01, "explain": True}},
                    "vector": {"value": {"model": "moons", "inputs": [[0.5, -0.25]], "score": "nll"}},
                },
            },
            "multipart/form-data": MULTIPART_FILES_DOC,
        },
    }
}


@router.post("/anomaly", response_model=AnomalyResponse, responses=ERRORS, openapi_extra=OPENAPI_BODY)
async def score_anomaly(body: AnomalyBodyDep, request: Request, context: ContextDep) -> Response:
    """Anomaly scores (`nll`, `complexity`, `latent`, `coarse`, `combined`, `typicality`) and `is_anomaly` at `fpr`.

    A JSON body is an `/log-likelihood` body plus `fpr`, `score` and `explain`; a multipart body of image files
    takes them from the query string (`/anomaly?fpr=0.05&explain=true`). docs/anomaly.md explains the scores.
    """
    deadline = context.deadline()
    payload, options = body
    served = context.model(request, payload.model)
    card = served.card
    x = payload.tensor(card, context.settings.max_samples)
    deciding = options.score or scores.default_score(card.is_image)
    require(card, served.references, deciding)
    if options.explain:
        require_image_model(card, "explain")
    latents, _, bits = await inference.latents_and_log_likelihood(served, x, deadline)
    items = Items(x=x, latents=latents, bits_per_dim=bits.numpy())
    report = await score_batch(card, served.references, items, options.fpr or context.settings.anomaly_fpr)
    maps, scales = None, None
    if options.explain:
        registry = context.registry
        assert registry is not None, "the lifespan sets the registry before serving"
        executor = registry.executor_for(registry.device)
        maps, scales = await explain(served, executor, x, deadline, context.settings.max_batch_size)
    return json_response(
        AnomalyResponse.model_construct(
            model=served.name,
            score=deciding,
            is_anomaly=decision(report, deciding, len(x)),
            explanations=maps,
            explanation_scale=scales,
            **anomaly_fields(report),
        )
    )
