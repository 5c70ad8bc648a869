"""``GET /models/{name}/drift``: the model's window of recently scored items against its reference scores."""

from __future__ import annotations

import math

from fastapi import APIRouter, Request

from artifact import scores
from service.api.deps import ContextDep
from service.api.drift_schemas import DriftResponse
from service.api.schemas import ErrorBody, error_responses
from service.core.errors import ReferenceMissingError

router = APIRouter(tags=["models"])


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


RESPONSES = {
    **error_responses(401, 404, 503),
    409: {"model": ErrorBody, "description": "The card has no reference scores: there is nothing to compare with."},
}


@router.get("/models/{name}/drift", response_model=DriftResponse, responses=RESPONSES)
async def model_drift(name: str, request: Request, context: ContextDep) -> DriftResponse:
    """Typicality p-value, mean bits/dim and flag rate of the last `DRIFT_WINDOW` items scored by the model.

    Fed by `/log-likelihood`, `/anomaly` and `/v2/models/{name}/infer`; items older than `DRIFT_HORIZON_S` leave.
    A 409 for a card without reference scores (nothing to compare with).
    """
    served = context.model(request, name)  # made the window when the card has reference scores
    window = served.references.drift if served.references is not None else None
    if window is None:
        raise ReferenceMissingError(
            f"drift: expected a card with reference scores to compare with, got model {served.name!r} without them"
        )
    snapshot = window.snapshot()
    return DriftResponse(
        model=served.name,
        window=window.capacity,
        horizon_s=window.horizon_s,
        items=snapshot.items,
        oldest_age_s=snapshot.oldest_age_s,
        mean_bits_per_dim=_finite(snapshot.mean_bits_per_dim),
        reference_bits_per_dim=snapshot.entropy,
        statistic=_finite(snapshot.statistic),
        p_value=_finite(snapshot.p_value),
        score=scores.default_score(served.card.is_image),
        fpr=window.fpr,
        flag_rate=_finite(snapshot.flag_rate),
        flagged_items=snapshot.flagged_items,
        bootstrap_draws=snapshot.bootstrap_draws,
    )
