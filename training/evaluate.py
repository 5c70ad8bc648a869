"""Held-out log-likelihood of a flow: the standard bits/dim, its importance-weighted bound, the bin-centre density.

Every figure this project calls bits/dim is ``-log2 P(x) / D`` with ``P(x)`` the probability of the 8-bit image,
estimated by uniform dequantization (:func:`held_out_log_likelihoods`; Theis et al. 2016; Ho et al. 2019,
eq. 5). With ``k`` draws ``u_i ~ U[0, 1)^D``:

    log P(x) ≈ log (1/k) Σ_i p(x + u_i)

``k = 1`` is the figure Dinh et al. and every reimplementation report (the headline); ``k > 1`` is a tighter
bound and always carries its ``k``. The draws come from a seeded generator, so every figure is deterministic.
The density at the bin centre, ``p(x + 0.5)`` (:func:`log_likelihoods`, the exported module's ``log_prob``), is
what the service scores per item; it is reported as ``bin_centre_bits_per_dim``, never as bits/dim.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from models import Flow
from training.checkpoint import check_same_data, load_flow
from training.data import DataSplits, load_data

__all__ = [
    "evaluate_checkpoint",
    "held_out_log_likelihoods",
    "importance_weighted_log_likelihoods",
    "log_likelihoods",
    "summarize",
]


@torch.no_grad()
def log_likelihoods(flow: Flow, items: Tensor, batch_size: int = 500, device: str | torch.device = "cpu") -> Tensor:
    """Per-item log-likelihood in nats, eval mode, deterministic.

    Args:
        flow: the flow (switched to eval mode for the call and restored).
        items: ``(N, *event_shape)``: ``uint8``/float pixel values for images, floats for vectors.
        batch_size: items per forward pass.
        device: where to compute.

    Returns:
        ``float64 (N,)`` log-likelihoods (on CPU).
    """
    was_training = flow.training
    flow.eval()
    try:
        out = [flow.log_prob(batch.to(device).float()).double().cpu() for batch in items.split(batch_size)]
    finally:
        flow.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def importance_weighted_log_likelihoods(
    flow: Flow, items: Tensor, samples: int, batch_size: int = 500, device: str | torch.device = "cpu", seed: int = 0
) -> Tensor:
    """Per-image ``log (1/k) Σ_i p(x + u_i)`` over ``k = samples`` uniform dequantization draws, in nats.

    Args:
        flow: an image flow.
        items: ``(N, C, H, W)`` 8-bit pixel values.
        samples: k >= 1.
        batch_size: images per forward pass.
        device: where to compute.
        seed: seed of the draws.

    Returns:
        ``float64 (N,)`` log-likelihoods.
    """
    if samples < 1:
        raise ValueError(f"expected samples >= 1, got {samples}")
    generator = torch.Generator().manual_seed(seed)
    was_training = flow.training
    flow.eval()
    try:
        out = []
        for batch in items.split(batch_size):
            batch = batch.to(device).float()
            draws = []
            for _ in range(samples):
                noise = torch.rand(batch.shape, generator=generator).to(device)
                draws.append(flow.log_prob(batch, noise=noise).double().cpu())
            out.append(torch.logsumexp(torch.stack(draws), dim=0) - math.log(samples))
    finally:
        flow.train(was_training)
    return torch.cat(out)


def held_out_log_likelihoods(
    flow: Flow,
    items: Tensor,
    samples: int = 1,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Tensor:
    """The standard per-item log-likelihood in nats, float64 ``(N,)``: what every reported bits/dim is made of.

    Images: ``log P(x)`` of the 8-bit image estimated by uniform dequantization with ``samples = k`` seeded
    draws (k = 1: ``log p(x + u)``, the figure of Dinh et al. and the field; k > 1: the importance-weighted
    bound, tighter). Vectors: the exact ``log p(x)``.
    """
    if flow.data_kind == "image":
        return importance_weighted_log_likelihoods(flow, items, samples, batch_size, device, seed)
    return log_likelihoods(flow, items, batch_size, device)


def summarize(log_likelihood: Tensor, dim: int) -> dict[str, float]:
    """Mean negative log-likelihood in nats and bits/dim of per-item log-likelihoods ``(N,)``."""
    nll = -float(log_likelihood.mean())
    return {"nll_nats": nll, "bits_per_dim": nll / (dim * math.log(2.0)), "log_likelihood": -nll}


def evaluate_checkpoint(
    path: str | Path,
    split: str = "test",
    samples: int = 0,
    batch_size: int = 0,
    device: str = "cpu",
    use_ema: bool = True,
    data: DataSplits | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint on one split of its data.

    Args:
        path: checkpoint file.
        split: "train", "val" or "test".
        samples: k of the importance-weighted estimate (0 = skip; images only).
        batch_size: items per forward pass (0 = the config's ``train.eval_batch_size``).
        device: where to compute.
        use_ema: evaluate the EMA weights when the checkpoint has them.
        data: the data set, when the caller has loaded it already (else loaded from the checkpoint's config).

    Returns:
        ``{"split", "n", "bits_per_dim", "nll_nats", "log_likelihood", ["bin_centre_bits_per_dim", "iw_*",
        "samples"]}``: ``bits_per_dim`` is the standard measure (k = 1 for images).
    """
    flow, checkpoint = load_flow(path, use_ema=use_ema, device=device)
    data = data or load_data(checkpoint.config.data)
    check_same_data(checkpoint, data, str(path))
    items = data.split(split)
    batch_size = batch_size or checkpoint.config.train.eval_batch_size
    result: dict[str, Any] = {"checkpoint": str(path), "split": split, "n": len(items), "epoch": checkpoint.epoch}
    result.update(summarize(held_out_log_likelihoods(flow, items, 1, batch_size, device), flow.dim))
    if data.kind == "image":
        bin_centre = summarize(log_likelihoods(flow, items, batch_size, device), flow.dim)
        result["bin_centre_bits_per_dim"] = bin_centre["bits_per_dim"]
        if samples:
            iw = importance_weighted_log_likelihoods(flow, items, samples, batch_size, device)
            result.update({f"iw_{key}": value for key, value in summarize(iw, flow.dim).items()})
            result["samples"] = samples
    return result
