"""What each endpoint computes, on tensors, through the model's batcher (no HTTP here).

Directions: ``encode`` batches serve log-likelihood, encode and the first half of interpolation; ``decode``
batches serve sampling, decode and the second half of interpolation. For image models every encode-direction
item is the 8-bit image moved to its bin centre (``x + 0.5``, docs/artifact.md), so ``/encode`` returns exactly
the latents and log-determinants that ``/log-likelihood`` scores: ``log_likelihood = log N(z) + log_det``.

Precision: the decode direction takes ``precision`` (``fp32`` exact, ``bf16`` autocast; ``service.engine.precision``);
the encode direction, and with it every score, is always float32.
"""

from __future__ import annotations

import math
import secrets

import torch

from service.core.errors import InferenceFailedError, InvalidInputError
from service.engine.codec import to_uint8
from service.engine.interpolation import linear_path, manifold_grid, slerp_path
from service.engine.precision import FP32
from service.engine.registry import DECODE, ENCODE, ServedModel
from service.engine.runner import ModelRunner

ITEMS_FOR_METHOD = {"linear": 2, "slerp": 2, "manifold": 4}


def _runner(served: ServedModel) -> ModelRunner:
    assert served.runner is not None and served.batcher is not None, "only ready models are served"
    return served.runner


def draw_latents(dimension: int, n: int, temperature: float, seed: int | None) -> torch.Tensor:
    """``temperature * randn(n, D)`` from a CPU generator seeded for this request alone."""
    generator = torch.Generator(device="cpu").manual_seed(secrets.randbits(63) if seed is None else seed)
    return temperature * torch.randn(n, dimension, generator=generator)


def finish_decoded(runner: ModelRunner, decoded: torch.Tensor) -> torch.Tensor:
    """Decoded data → what clients get: uint8 pixels for images, finite float32 for vectors.

    Raises:
        InvalidInputError: the model produced NaN (or, for vectors, ±Inf) for some item.
    """
    bad = torch.isnan(decoded) if runner.card.is_image else ~torch.isfinite(decoded)
    if bad.any():
        items = sorted({int(i) for i in bad.flatten(1).any(dim=1).nonzero().flatten()})
        raise InvalidInputError(
            f"latents: expected latents whose decoding is finite, got non-finite outputs for items {items[:10]}"
        )
    return to_uint8(decoded) if runner.card.is_image else decoded


async def encode(served: ServedModel, x: torch.Tensor, deadline: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Data ``(N, *shape)`` → ``(z (N, D), log_det (N,))`` (image pixels at their bin centre).

    Raises:
        InvalidInputError: the flow maps an item to non-finite values (outside its support).
    """
    runner = _runner(served)
    z, log_det = await served.batcher.submit(ENCODE, runner.scoring_input(x), deadline)  # type: ignore[union-attr]
    bad = ~(torch.isfinite(z).all(dim=1) & torch.isfinite(log_det))
    if bad.any():
        items = [int(i) for i in bad.nonzero().flatten()][:10]
        raise InvalidInputError(
            f"inputs: expected items inside the model's support, got non-finite latents for items {items}"
        )
    return z, log_det


async def log_likelihood(served: ServedModel, x: torch.Tensor, deadline: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Data ``(N, *shape)`` → ``(log-likelihood in nats, bits per dimension)``, float64 ``(N,)`` each."""
    _, nats, bits = await latents_and_log_likelihood(served, x, deadline)
    return nats, bits


async def latents_and_log_likelihood(
    served: ServedModel, x: torch.Tensor, deadline: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Data ``(N, *shape)`` → ``(z (N, D), log-likelihood in nats (N,), bits per dimension (N,))``.

    Raises:
        InvalidInputError: an item outside the model's support or with a non-finite likelihood.
    """
    runner = _runner(served)
    z, log_det = await encode(served, x, deadline)
    nats = runner.log_likelihood(z, log_det)
    if not torch.isfinite(nats).all():
        items = [int(i) for i in (~torch.isfinite(nats)).nonzero().flatten()][:10]
        raise InvalidInputError(
            f"inputs: expected items with a finite likelihood, got non-finite values for items {items}"
        )
    return z, nats, runner.bits_per_dim(nats)


async def dequantized_log_likelihood(
    served: ServedModel, x: torch.Tensor, samples: int, seed: int, deadline: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log P(x)`` of 8-bit images by uniform dequantization: ``log (1/k) Σ_j p(x + u_j)``, float64 ``(N,)``.

    The standard measure (k = 1; the importance-weighted bound for k > 1) that the card's test figures use. The
    draws ``u_j ~ U[0, 1)^D`` come from a generator seeded for this request, item by item (item ``i``'s draws
    depend on ``seed``, ``i`` and ``k`` only), so the same request gives the same answer whatever it is batched
    with. All ``N · k`` points go through the model's batcher as one submission.

    Returns:
        ``(log-likelihood in nats, bits per dimension)``.

    Raises:
        InvalidInputError: a point outside the model's support.
    """
    runner = _runner(served)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.rand((len(x), samples, *x.shape[1:]), generator=generator)  # (N, k, *shape), item-major
    points = (x.unsqueeze(1) + noise).reshape(len(x) * samples, *x.shape[1:])
    z, log_det = await served.batcher.submit(ENCODE, points, deadline)  # type: ignore[union-attr]
    draws = runner.log_likelihood(z, log_det).reshape(len(x), samples)
    if not torch.isfinite(draws).all():
        items = sorted({int(i) for i in (~torch.isfinite(draws)).any(dim=1).nonzero().flatten()})[:10]
        raise InvalidInputError(f"inputs: expected items with a finite likelihood, got non-finite values for {items}")
    nats = torch.logsumexp(draws, dim=1) - math.log(samples)
    return nats, runner.bits_per_dim(nats)


async def decode(
    served: ServedModel, z: torch.Tensor, deadline: float, exclusive: bool = False, precision: str = FP32
) -> torch.Tensor:
    """Latents ``(N, D)`` → client-ready data ``(N, *shape)`` (``exclusive``, ``precision``: see ``Batcher.submit``)."""
    runner = _runner(served)
    (decoded,) = await served.batcher.submit(DECODE, z, deadline, exclusive, precision)  # type: ignore[union-attr]
    return finish_decoded(runner, decoded)


async def sample(
    served: ServedModel, n: int, temperature: float, seed: int | None, deadline: float, precision: str = FP32
) -> torch.Tensor:
    """``n`` samples ``decode(temperature * randn(n, D))`` at ``precision``.

    A seeded request is decoded in batches of its own, so the same request gives bit-identical samples
    whatever else the server is doing (at either precision); unseeded requests share batches of their precision.

    Raises:
        InferenceFailedError: the model decoded the drawn latents to NaN (500: the server's fault, not the input's).
    """
    z = draw_latents(_runner(served).dimension, n, temperature, seed)
    try:
        return await decode(served, z, deadline, exclusive=seed is not None, precision=precision)
    except InvalidInputError as exc:  # the latents were drawn here: a non-finite decoding is the model's fault
        raise InferenceFailedError(
            f"model {served.name!r}: expected a finite decoding of the drawn latents, got non-finite outputs"
        ) from exc


async def interpolate(
    served: ServedModel, x: torch.Tensor, steps: int, method: str, deadline: float, precision: str = FP32
) -> torch.Tensor:
    """Encode the items (exact fp32), walk between their latents, decode the path at ``precision``.

    Returns:
        ``(steps, *shape)`` for ``linear``/``slerp``; ``(steps, steps, *shape)`` for ``manifold``.

    Raises:
        InvalidInputError: the number of items does not match the method.
    """
    runner = _runner(served)
    needed = ITEMS_FOR_METHOD[method]
    if x.shape[0] != needed:
        raise InvalidInputError(f"inputs: expected {needed} items for method {method!r}, got {x.shape[0]}")
    z, _ = await encode(served, x, deadline)
    if method == "manifold":
        latents = manifold_grid(z, steps).reshape(steps * steps, runner.dimension)
        decoded = await decode(served, latents, deadline, precision=precision)
        return decoded.reshape(steps, steps, *runner.item_shape)
    path = linear_path(z[0], z[1], steps) if method == "linear" else slerp_path(z[0], z[1], steps)
    return await decode(served, path, deadline, precision=precision)
