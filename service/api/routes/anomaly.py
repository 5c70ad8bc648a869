"""``POST /anomaly``: calibrated anomaly scores per item, the decision, and optional explanation maps."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from service import anomaly, inference
from service.anomaly import ScoreName
from service.anomaly_schemas import AnomalyRequest, AnomalyResponse
from service.anomaly_scoring import decision, explain, references, require, score_batch
from service.api.deps import ContextDep, InputsPayload, body_kind, parse_inputs_body
from service.api.render import json_response
from service.api.routes.scoring import MULTIPART_FILES_DOC, payload_tensor
from service.errors import InvalidInputError
from service.inputs import require_image_model
from service.schemas import EXAMPLE_PNG, ErrorBody, error_responses

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
async def score_anomaly(
    request: Request,
    context: ContextDep,
    fpr: Annotated[float | None, Query(gt=0, lt=1, description="multipart bodies only: see `fpr`.")] = None,
    score: Annotated[ScoreName | None, Query(description="multipart bodies only: see `score`.")] = None,
    explain_maps: Annotated[bool, Query(alias="explain", description="multipart bodies only: see `explain`.")] = False,
) -> Response:
    """Calibrated anomaly scores (`nll`, `complexity`, `latent`, `combined`, `typicality`) and `is_anomaly` at `fpr`.

    A JSON body is an `/log-likelihood` body plus `fpr`, `score` and `explain`; a multipart body of image files
    takes them from the query string (`/anomaly?fpr=0.05&explain=true`). docs/anomaly.md explains the scores.
    """
    deadline = context.deadline()
    if body_kind(request) == "multipart":
        payload = await parse_inputs_body(request, context)
        options = AnomalyRequest.model_construct(fpr=fpr, score=score, explain=explain_maps)
    else:
        if fpr is not None or score is not None or explain_maps:
            raise InvalidInputError(
                "query: expected fpr, score and explain in the JSON body (the query string is for multipart "
                f"bodies), got query parameters {sorted(request.query_params)}"
            )
        options = AnomalyRequest.model_validate_json(await request.body())
        payload = InputsPayload(model=options.model, inputs=options.inputs, images=options.images)
    served = context.model(request, payload.model)
    card = served.card
    x = payload_tensor(card, payload, context.settings.max_samples)
    deciding = options.score or anomaly.default_score(card.is_image)
    require(card, references(served), deciding)
    if options.explain:
        require_image_model(card, "explain")
    latents, _, bits = await inference.latents_and_log_likelihood(served, x, deadline)
    result = await score_batch(served, x, latents, bits, options.fpr or context.settings.anomaly_fpr)
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
            is_anomaly=decision(result, deciding, len(x)),
            explanations=maps,
            explanation_scale=scales,
            **dict(result),
        )
    )
