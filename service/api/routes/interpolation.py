"""``POST /interpolate``: paths (linear, slerp) and grids (manifold) in latent space, decoded."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.deps import ContextDep
from service.api.inputs import (
    check_count,
    images_to_tensor,
    inputs_to_tensor,
    require_image_model,
    require_precision,
)
from service.api.render import decoded_response
from service.api.schemas import ImagesResponse, InterpolateRequest, SamplesResponse, error_responses
from service.engine import inference

router = APIRouter(tags=["interpolation"])


@router.post(
    "/interpolate",
    response_model=SamplesResponse | ImagesResponse,
    responses=error_responses(401, 404, 413, 422, 503, 504),
)
async def interpolate(body: InterpolateRequest, request: Request, context: ContextDep) -> Response:
    """Decode a path or grid between encoded items.

    2 items: `steps` points from the first latent to the second (`linear` or `slerp`). 4 items with `manifold`:
    the `steps x steps` grid of Dinh et al. (2017) eq. 19, shape `[steps, steps, ...]` (PNGs row-major).
    """
    deadline = context.deadline()
    settings = context.settings
    served = context.model(request, body.model)
    card = served.card
    if body.format == "png":
        require_image_model(card, "format 'png'")
    frames = body.steps * body.steps if body.method == "manifold" else body.steps
    check_count("steps x steps" if body.method == "manifold" else "steps", frames, settings.max_samples)
    require_precision(body.precision, settings.allow_bf16, served.runner.device)  # type: ignore[union-attr]
    limit = settings.max_samples
    x = (
        images_to_tensor(card, body.images, limit)
        if body.images is not None
        else inputs_to_tensor(card, body.inputs or [], limit)
    )
    data = await inference.interpolate(served, x, body.steps, body.method, deadline, body.precision)
    return decoded_response(served.name, data, body.format, len(card.shape))
