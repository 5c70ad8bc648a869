"""An exponential moving average of a flow's weights, validated and exported in place of the raw weights."""

from __future__ import annotations

import copy

import torch

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
def update_ema(ema: Flow, flow: Flow, decay: float) -> None:
    """``ema ← decay · ema + (1 − decay) · flow`` for parameters and float buffers (batch-norm statistics).

    Averaging the batch-norm statistics as well matters: running statistics of the current weights do not fit
    the averaged weights, and a flow's eval-mode likelihood can then diverge. Integer buffers (batch counts) are
    copied. One fused ``_foreach_lerp_`` per kind instead of a kernel launch per tensor.
    """
    ema_params, params = list(ema.parameters()), list(flow.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"expected an EMA of the same flow, got {len(ema_params)} vs {len(params)} parameters")
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    ema_buffers, buffers = list(ema.buffers()), list(flow.buffers())
    floats = [(e, b) for e, b in zip(ema_buffers, buffers, strict=True) if e.is_floating_point()]
    if floats:
        torch._foreach_lerp_([e for e, _ in floats], [b for _, b in floats], 1.0 - decay)
    for e, b in zip(ema_buffers, buffers, strict=True):
        if not e.is_floating_point():
            e.copy_(b)
