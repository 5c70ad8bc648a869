"""Tensors → HTTP responses (JSON numbers, base64 PNGs, one PNG grid)."""

from __future__ import annotations

import torch
from fastapi import Response
from pydantic import BaseModel

from service.api.schemas import ImagesResponse, OutputFormat, SamplesResponse
from service.engine.codec import encode_png, encode_png_base64, tile_grid

PNG_MEDIA_TYPE = "image/png"


def json_response(body: BaseModel) -> Response:
    """Serialise with pydantic's fast JSON encoder (no ``jsonable_encoder`` pass)."""
    return Response(content=body.model_dump_json(), media_type="application/json")


def decoded_response(model: str, data: torch.Tensor, output_format: OutputFormat, item_ndim: int) -> Response:
    """Client-ready decoded data → ``SamplesResponse`` (numbers) or ``ImagesResponse`` (base64 PNGs).

    Args:
        model: the model's name.
        data: ``(*leading, *item_shape)``: uint8 images or float32 vectors.
        output_format: ``array`` or ``png`` (image models only; checked by the route).
        item_ndim: number of trailing item dimensions (3 for images, 1 for vectors).
    """
    if output_format == "png":
        images = data.reshape(-1, *data.shape[data.ndim - item_ndim :])
        return json_response(ImagesResponse.model_construct(model=model, images=encode_png_base64(images)))
    return json_response(SamplesResponse.model_construct(model=model, shape=list(data.shape), samples=data.tolist()))


def png_grid_response(pixels: torch.Tensor) -> Response:
    """``(N, C, H, W)`` uint8 images → one ``image/png`` grid."""
    return Response(content=encode_png(tile_grid(pixels)), media_type=PNG_MEDIA_TYPE)
