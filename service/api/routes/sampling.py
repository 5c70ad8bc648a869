"""``POST /sample``, ``GET /sample.png`` and ``POST /decode``: the decode direction."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from service.api.deps import ContextDep
from service.api.inputs import check_count, latents_to_tensor, require_image_model, require_precision
from service.api.render import PNG_MEDIA_TYPE, decoded_response, png_grid_response
from service.api.schemas import (
    MAX_SEED,
    PRECISION_DESCRIPTION,
    DecodeRequest,
    ImagesResponse,
    Precision,
    SampleRequest,
    SamplesResponse,
    error_responses,
)
from service.engine import inference

router = APIRouter(tags=["sampling"])
ERRORS = error_responses(401, 404, 413, 422, 503, 504)


@router.post("/sample", response_model=SamplesResponse | ImagesResponse, responses=ERRORS)
async def sample(body: SampleRequest, request: Request, context: ContextDep) -> Response:
    """Draw `n` samples `decode(temperature * randn(n, D))`; the same seed gives the same samples."""
    deadline = context.deadline()
    served = context.model(request, body.model)
    card = served.card
    check_count("n", body.n, context.settings.max_samples)
    if body.format == "png":
        require_image_model(card, "format 'png'")
    require_precision(body.precision, context.settings.allow_bf16, served.runner.device)  # type: ignore[union-attr]
    data = await inference.sample(served, body.n, body.temperature, body.seed, deadline, body.precision)
    context.metrics.samples_generated.labels(model=served.name).inc(body.n)
    return decoded_response(served.name, data, body.format, len(card.shape))


@router.get(
    "/sample.png",
    response_class=Response,
    responses={200: {"content": {PNG_MEDIA_TYPE: {}}, "description": "One PNG grid of the samples."}, **ERRORS},
)
async def sample_png(
    request: Request,
    context: ContextDep,
    model: Annotated[str | None, Query(description="Model name (optional with one model).", examples=["mnist"])] = None,
    n: Annotated[int, Query(ge=1, description="Samples in the grid, at most MAX_SAMPLES.", examples=[16])] = 16,
    temperature: Annotated[float, Query(gt=0, le=2, allow_inf_nan=False, examples=[0.8])] = 1.0,
    seed: Annotated[int | None, Query(ge=0, le=MAX_SEED, examples=[7])] = None,
    precision: Annotated[Precision, Query(description=PRECISION_DESCRIPTION)] = "fp32",
) -> Response:
    """One `image/png` grid of `n` samples, for browsers and curl (image models)."""
    deadline = context.deadline()
    served = context.model(request, model)
    check_count("n", n, context.settings.max_samples)
    require_image_model(served.card, "/sample.png")
    require_precision(precision, context.settings.allow_bf16, served.runner.device)  # type: ignore[union-attr]
    data = await inference.sample(served, n, temperature, seed, deadline, precision)
    context.metrics.samples_generated.labels(model=served.name).inc(n)
    return png_grid_response(data)


@router.post("/decode", response_model=SamplesResponse | ImagesResponse, responses=ERRORS)
async def decode(body: DecodeRequest, request: Request, context: ContextDep) -> Response:
    """Decode latents `[N, D]` to data, as `/sample` returns it."""
    deadline = context.deadline()
    served = context.model(request, body.model)
    card = served.card
    if body.format == "png":
        require_image_model(card, "format 'png'")
    require_precision(body.precision, context.settings.allow_bf16, served.runner.device)  # type: ignore[union-attr]
    z = latents_to_tensor(card, body.latents, context.settings.max_samples)
    data = await inference.decode(served, z, deadline, precision=body.precision)
    return decoded_response(served.name, data, body.format, len(card.shape))
