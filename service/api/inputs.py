"""Request payloads → validated CPU tensors, checked against the model card (shape, range, finiteness, limits)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from artifact.card import ModelCard
from service.core.errors import InvalidInputError, PayloadTooLargeError
from service.engine.codec import decode_base64, decode_image
from service.engine.precision import BF16, bf16_offered


def check_count(what: str, count: int, limit: int) -> None:
    """Raise 413 when a request asks for or sends more than ``MAX_SAMPLES`` items."""
    if count > limit:
        raise PayloadTooLargeError(f"{what}: expected at most MAX_SAMPLES = {limit} items, got {count}")


def non_numbers(values: Sequence[Any]) -> list[Any]:
    """The first leaf of nested lists that is not a number (JSON true/false/null, strings, objects).

    Returns:
        That leaf in a one-item list, or an empty list when every leaf is an int or float.
    """
    stack = [values]
    while stack:
        for item in stack.pop():
            if isinstance(item, list):
                stack.append(item)
            elif type(item) not in (int, float):
                return [item]
    return []


def _nested_tensor(what: str, values: Sequence[Any], expected: str, check_leaves: bool = True) -> torch.Tensor:
    wrong = non_numbers(values) if check_leaves else []
    if wrong:
        shown = repr(wrong[0])
        raise InvalidInputError(
            f"{what}: expected {expected} of numbers, got {shown if len(shown) <= 40 else shown[:37] + '...'}"
        )
    try:
        return torch.tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise InvalidInputError(
            f"{what}: expected {expected}, got values that are not a rectangular array of numbers ({exc})"
        ) from exc


def _describe_shape(shape: Sequence[int]) -> str:
    return "[N, " + ", ".join(str(size) for size in shape) + "]"


def _check_finite(what: str, tensor: torch.Tensor) -> None:
    finite = torch.isfinite(tensor)
    if not finite.all():
        index = tuple(int(i) for i in (~finite).nonzero()[0])
        raise InvalidInputError(f"{what}: expected finite numbers, got {tensor[index].item()} at index {list(index)}")


def inputs_to_tensor(card: ModelCard, inputs: Sequence[Any], limit: int) -> torch.Tensor:
    """``inputs`` (``[N, *shape]`` numbers) → float32 ``(N, *shape)`` data items.

    Image items must be integer pixels in ``[0, 255]``; vector items finite floats (inside ``value_range`` when
    the card sets one).

    Raises:
        PayloadTooLargeError: more than ``limit`` items.
        InvalidInputError: not numbers, wrong shape, NaN/Inf, or values outside the card's range.
    """
    check_count("inputs", len(inputs), limit)
    expected = _describe_shape(card.shape)
    tensor = _nested_tensor("inputs", inputs, f"an array of shape {expected}")
    return check_items(card, tensor, "inputs")


def check_items(card: ModelCard, tensor: torch.Tensor, what: str) -> torch.Tensor:
    """A numeric ``(N, *shape)`` tensor → float32 data items, checked as ``inputs_to_tensor`` checks them.

    Shared with the Open Inference Protocol routes, whose tensors arrive flat or as raw bytes, so that both
    protocols accept and refuse the same items with the same words.

    Raises:
        InvalidInputError: wrong shape, NaN/Inf, values outside the card's range, or fractional pixels.
    """
    expected = _describe_shape(card.shape)
    if tuple(tensor.shape[1:]) != tuple(card.shape) or tensor.ndim != len(card.shape) + 1:
        raise InvalidInputError(f"{what}: expected shape {expected}, got {list(tensor.shape)}")
    _check_finite(what, tensor)
    if card.value_range is not None:
        low, high = card.value_range
        outside = (tensor < low) | (tensor > high)
        if outside.any():
            index = tuple(int(i) for i in outside.nonzero()[0])
            raise InvalidInputError(
                f"{what}: expected values in [{low:g}, {high:g}], got {tensor[index].item():g} at index {list(index)}"
            )
    if card.is_image:
        fractional = tensor != torch.floor(tensor)
        if fractional.any():
            index = tuple(int(i) for i in fractional.nonzero()[0])
            raise InvalidInputError(
                f"{what}: expected integer 8-bit pixel values, got {tensor[index].item():g} at index {list(index)}"
            )
    return tensor.to(torch.float32)


def images_to_tensor(card: ModelCard, images: Sequence[str], limit: int) -> torch.Tensor:
    """Base64 PNG/JPEG strings → float32 ``(N, C, H, W)`` 8-bit intensities.

    Raises:
        PayloadTooLargeError: more than ``limit`` images.
        InvalidInputError: a vector model, bad base64, undecodable image, wrong size or mode.
    """
    check_count("images", len(images), limit)
    require_image_model(card, "images")
    shape = (card.shape[0], card.shape[1], card.shape[2])
    return torch.stack(
        [decode_image(decode_base64(text, index), shape, f"images[{index}]") for index, text in enumerate(images)]
    )


def files_to_tensor(card: ModelCard, files: Sequence[tuple[str, bytes]], limit: int) -> torch.Tensor:
    """Uploaded ``(filename, bytes)`` images → float32 ``(N, C, H, W)``; see ``images_to_tensor``."""
    if not files:
        raise InvalidInputError("files: expected at least one image file in the multipart form, got none")
    check_count("files", len(files), limit)
    require_image_model(card, "files")
    shape = (card.shape[0], card.shape[1], card.shape[2])
    return torch.stack([decode_image(data, shape, f"file {name!r}") for name, data in files])


def latents_to_tensor(card: ModelCard, latents: Sequence[Sequence[float]], limit: int) -> torch.Tensor:
    """``latents`` (``[N, D]`` floats) → float32 ``(N, D)``.

    Raises:
        PayloadTooLargeError: more than ``limit`` rows.
        InvalidInputError: ragged rows, wrong ``D``, NaN/Inf, or values float32 cannot hold.
    """
    check_count("latents", len(latents), limit)
    expected = f"[N, {card.dimension}]"
    # the schema already made every leaf a float (strict: no booleans or strings)
    tensor = _nested_tensor("latents", latents, f"an array of shape {expected}", check_leaves=False)
    if tensor.ndim != 2 or tensor.shape[1] != card.dimension:
        raise InvalidInputError(f"latents: expected shape {expected}, got {list(tensor.shape)}")
    _check_finite("latents", tensor)
    single = tensor.to(torch.float32)
    _check_finite("latents (as float32)", single)
    return single


def require_image_model(card: ModelCard, what: str) -> None:
    """Raise 422 when an image-only feature is used with a vector model."""
    if not card.is_image:
        raise InvalidInputError(f"{what}: expected an image model, got {card.name!r} with data_kind 'vector'")


def require_precision(precision: str, allow_bf16: str, device: torch.device) -> None:
    """Refuse ``bf16`` where ``ALLOW_BF16`` does not offer it on ``device`` (``fp32`` is always offered).

    Raises:
        InvalidInputError: ``bf16`` asked for where it is off (422).
    """
    if precision != BF16 or bf16_offered(allow_bf16, device):
        return
    why = (
        "ALLOW_BF16 is false"
        if allow_bf16 == "false"
        else f"{device.type} here has no native bfloat16, so bf16 would be slower than fp32; ALLOW_BF16=true allows it"
    )
    raise InvalidInputError(f"precision: expected 'fp32' on this server (bf16 is off: {why}), got 'bf16'")
