"""An exponential moving average of a flow's weights, validated and exported in place of the raw weights."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from models import Flow


def make_ema(flow: Flow) -> Flow:
    """A frozen copy of ``flow`` whose weights track an exponential moving average."""
    ema = copy.deepcopy(flow).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def ema_decay(step: int, decay: float) -> float:
    """The decay of the ``step``-th update: ``min(decay, (1 + step) / (10 + step))``.

    A fixed decay of 0.998 gives the initial weights a share of ``0.998^t`` of the average, still a third after
    500 steps, while the weights of a flow travel far from them early on (and a flow's likelihood collapses a
    short way off its trained weights: 5 % of the way towards such an average cost 1.6 bits/dim in the run of
    docs/training.md). The warm-up (as TensorFlow's ``ExponentialMovingAverage(num_updates=...)``) averages
    roughly the last tenth of the steps taken until the fixed decay takes over.
    """
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def update_ema(ema: Flow, flow: Flow, decay: float, skip: Tensor | None = None) -> None:
    """``ema ← decay · ema + (1 − decay) · flow`` for parameters and float buffers (batch-norm statistics).

    Averaging the batch-norm statistics as well matters: running statistics of the current weights do not fit
    the averaged weights, and a flow's eval-mode likelihood can then diverge. Integer buffers (batch counts) are
    copied. One fused ``_foreach_lerp_`` per kind instead of a kernel launch per tensor.

    Args:
        ema: the average, updated in place.
        flow: the trained flow.
        decay: this update's decay (:func:`ema_decay`).
        skip: ``()`` float on the device, 1 to leave the average unchanged (a skipped, non-finite step), read
            by the kernels instead of by Python: the interpolation weight becomes ``(1 − decay)(1 − skip)``, 0
            for a skipped step, so no host synchronisation is needed. None: always update (a plain float weight).
    """
    ema_params, params = list(ema.parameters()), list(flow.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"expected an EMA of the same flow, got {len(ema_params)} vs {len(params)} parameters")
    weight: float | Tensor = 1.0 - decay if skip is None else (1.0 - decay) * (1.0 - skip)
    _lerp(ema_params, params, weight)
    ema_buffers, buffers = list(ema.buffers()), list(flow.buffers())
    floats = [(e, b) for e, b in zip(ema_buffers, buffers, strict=True) if e.is_floating_point()]
    if floats and skip is None:
        _lerp([e for e, _ in floats], [b for _, b in floats], weight)
    elif floats:  # a skipped step's forward pass may have left NaN statistics: 0 · NaN would still reach the EMA
        _lerp_finite_or_keep([e for e, _ in floats], [b for _, b in floats], weight, skip)
    for e, b in zip(ema_buffers, buffers, strict=True):
        if not e.is_floating_point():
            e.copy_(b)


def _lerp(targets: list[Tensor], sources: list[Tensor], weight: float | Tensor) -> None:
    """``targets ← targets + weight · (sources − targets)``; a tensor weight ``()`` broadcasts to every tensor."""
    if isinstance(weight, Tensor):
        torch._foreach_lerp_(targets, sources, [weight] * len(targets))
    else:
        torch._foreach_lerp_(targets, sources, weight)


def _lerp_finite_or_keep(targets: list[Tensor], sources: list[Tensor], weight: Tensor, skip: Tensor) -> None:
    """:func:`_lerp` with a tensor weight, keeping ``targets`` as they are when ``skip`` is 1, NaN sources or not.

    One flat ``torch.where`` over all the tensors (a handful of kernels, whatever their number).
    """
    flat = torch.cat([t.flatten() for t in targets])
    blended = torch.lerp(flat, torch.cat([s.flatten() for s in sources]), weight)
    kept = torch.where(skip > 0, flat, blended)
    torch._foreach_copy_(
        targets, [part.view_as(t) for part, t in zip(kept.split([t.numel() for t in targets]), targets, strict=True)]
    )
