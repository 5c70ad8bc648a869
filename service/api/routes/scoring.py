"""``POST /log-likelihood`` and ``POST /encode``: the encode direction (JSON or multipart image files)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from artifact import ModelCard
from service.api.anomaly_schemas import ScoredLogLikelihoodResponse, anomaly_fields
from service.api.deps import ContextDep, InputsBodyDep
from service.api.inputs import check_count
from service.api.openapi import inputs_body_doc
from service.api.render import json_response
from service.api.schemas import (
    MAX_DEQUANTIZATION_SAMPLES,
    MAX_SEED,
    Dequantization,
    DequantizationInfo,
    EncodeResponse,
    error_responses,
)
from service.core.errors import InvalidInputError
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
    dequantization: Annotated[
        Dequantization,
        Query(
            description="Image models: `bin_centre` (deterministic density at x + 0.5) or `uniform` (log P(x) "
            "by seeded uniform dequantization, comparable with the card's `test_bits_per_dim`)."
        ),
    ] = "bin_centre",
    dequantization_samples: Annotated[
        int | None,
        Query(ge=1, le=MAX_DEQUANTIZATION_SAMPLES, description="`uniform` only: k draws per item (default 1)."),
    ] = None,
    seed: Annotated[int | None, Query(ge=0, le=MAX_SEED, description="`uniform` only: seed (default 0).")] = None,
) -> Response:
    """Exact log-likelihood (nats) and bits/dim per item; 8-bit images at the bin centre `x + 0.5` by default.

    `dequantization=uniform` reports instead the standard measure, `log P(x)` of the 8-bit image estimated with
    `dequantization_samples` seeded uniform draws (docs/artifact.md). The anomaly scores of each item against
    the card's reference scores (docs/anomaly.md) always use the bin-centre density, as the references do.
    """
    deadline = context.deadline()
    served = context.model(request, payload.model)
    card = served.card
    x = payload.tensor(card, context.settings.max_samples)
    method = dequantization_method(card, dequantization, dequantization_samples, seed)
    uniform = method is not None and method.method == "uniform"
    if uniform:
        check_count("inputs × dequantization_samples", len(x) * method.samples, context.settings.max_samples)
    latents, nats, bits = await inference.latents_and_log_likelihood(served, x, deadline)
    items = Items(x=x, latents=latents, bits_per_dim=bits.numpy())
    report = await score_batch(card, served.references, items, fpr or context.settings.anomaly_fpr)
    if uniform:
        nats, bits = await inference.dequantized_log_likelihood(served, x, method.samples, method.seed, deadline)
    return json_response(
        ScoredLogLikelihoodResponse.model_construct(
            model=served.name,
            log_likelihood=nats.tolist(),
            bits_per_dim=bits.tolist(),
            dequantization=method,
            **anomaly_fields(report),
        )
    )


def dequantization_method(
    card: ModelCard, method: str, samples: int | None, seed: int | None
) -> DequantizationInfo | None:
    """What the request asks to measure (None for a vector model: its density needs no dequantization).

    Raises:
        InvalidInputError: ``uniform`` asked of a vector model, or draws or a seed given without ``uniform``.
    """
    if method == "uniform" and not card.is_image:
        raise InvalidInputError(
            f"dequantization: expected 'bin_centre' for vector model {card.name!r} (only 8-bit images are "
            "dequantized), got 'uniform'"
        )
    if method == "bin_centre" and (samples is not None or seed is not None):
        given = [name for name, value in (("dequantization_samples", samples), ("seed", seed)) if value is not None]
        raise InvalidInputError(f"{', '.join(given)}: expected dequantization=uniform to use them, got bin_centre")
    if not card.is_image:
        return None
    if method == "bin_centre":
        return DequantizationInfo.model_construct(method="bin_centre", samples=1, seed=None)
    return DequantizationInfo.model_construct(method="uniform", samples=samples or 1, seed=0 if seed is None else seed)


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
