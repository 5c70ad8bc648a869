"""Explanation maps: where each image loses likelihood, ``|d log p / dx|`` through the exported module.

The gradient runs on the device's executor thread with autograd enabled (outside the batcher: one request's
items, a chunk at a time), through the same TorchScript module that scores the items.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor

import torch

from service.core.errors import DeadlineExceededError
from service.engine.codec import encode_png_base64
from service.engine.registry import ServedModel
from service.engine.runner import ModelRunner


def log_likelihood_gradient(
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    log_likelihood: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
) -> torch.Tensor:
    """``d log p(x) / dx`` per item through the exported module (run with autograd on, off the event loop).

    Args:
        encode: the model's encode ``(B, *shape) -> (z, log_det)``, differentiable (TorchScript modules are,
            frozen ones included, when called outside ``torch.inference_mode``).
        log_likelihood: ``(z, log_det) -> (B,)`` nats.
        x: ``(B, *shape)`` the points the model scores (image pixels at their bin centre).

    Returns:
        float32 ``(B, *shape)`` in nats per unit of the input.
    """
    with torch.inference_mode(False), torch.enable_grad():
        leaf = x.detach().clone().to(torch.float32).requires_grad_(True)
        z, log_det = encode(leaf)
        (gradient,) = torch.autograd.grad(log_likelihood(z, log_det).sum(), leaf)
    return gradient.detach()


def saliency_maps(gradient: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients ``(N, C, H, W)`` → 8-bit maps ``(N, 1, H, W)`` of ``|d log p / dx|`` summed over channels.

    Each map is scaled to its own maximum (white = the pixel whose change moves the likelihood most).

    Returns:
        ``(maps uint8 (N, 1, H, W), scale (N,))`` with ``scale`` the maximum in nats per intensity unit.
    """
    magnitude = gradient.abs().sum(dim=1, keepdim=True).to(torch.float64)
    scale = magnitude.flatten(1).amax(dim=1)
    normalised = magnitude / scale.clamp_min(1e-30).view(-1, 1, 1, 1)
    return torch.round(255.0 * normalised).clamp(0, 255).to(torch.uint8), scale


def _gradient_maps(runner: ModelRunner, x: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Executor side: ``d log p / dx`` at the scored points, as 8-bit maps and their scales."""
    gradients = [
        log_likelihood_gradient(runner.encode, runner.log_likelihood, runner.scoring_input(part))
        for part in x.split(chunk)
    ]
    return saliency_maps(torch.cat(gradients))


async def explain(
    served: ServedModel, executor: Executor, x: torch.Tensor, deadline: float, chunk: int
) -> tuple[list[str], list[float]]:
    """Where each image loses likelihood: base64 PNGs of ``|d log p / dx|`` and each map's maximum.

    Runs on the device's executor thread (outside the batcher: one request's items, ``chunk`` at a time) with
    autograd enabled, through the same TorchScript module that scores the items.

    Raises:
        DeadlineExceededError: the request's deadline passed first.
    """
    assert served.runner is not None, "only ready models are served"
    loop = asyncio.get_running_loop()
    work = loop.run_in_executor(executor, _gradient_maps, served.runner, x, chunk)
    try:
        maps, scale = await asyncio.wait_for(work, timeout=max(deadline - loop.time(), 0.0))
    except asyncio.TimeoutError as exc:
        raise DeadlineExceededError(
            f"request to model {served.name!r} expected to finish within the request timeout, got no explanation "
            "in time"
        ) from exc
    return encode_png_base64(maps), scale.tolist()
