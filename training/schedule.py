"""The learning-rate schedule: linear warm-up, then constant or cosine; and the ramp after a resume changed it.

A resume may change ``train.epochs``, and a cosine schedule is a function of the run's total steps, so the
resumed run's learning rate at its first step can be far from the one its optimizer state was last updated
with (a run resumed at the end of its cosine, with twice the epochs, jumps from ``min_lr`` to half the peak).
Adam's moment estimates do not absorb such a jump: the first epoch after it diverged to 2.5 bits/dim from
1.34 on the bundled mnist recipe (docs/training.md). :class:`Rewarm` ramps linearly from the checkpoint's last
learning rate to the new schedule over ``optim.warmup_steps``, as the run's first warm-up did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from training.config import TrainConfig

CHANGE_TOLERANCE = 0.01  # relative: below it a resume keeps the schedule without a ramp


@dataclass(frozen=True)
class Rewarm:
    """A linear ramp from ``lr`` at optimizer step ``start`` to the schedule ``optim.warmup_steps`` later."""

    start: int
    lr: float


def get_lr(step: int, config: TrainConfig, total_steps: int) -> float:
    """Linear warm-up to ``optim.lr``, then constant or cosine decay to ``optim.min_lr`` (before ``lr_scale``)."""
    optim = config.optim
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    progress = min(1.0, (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps))
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1.0 + math.cos(math.pi * progress))


def scheduled_lr(step: int, config: TrainConfig, total_steps: int, scale: float, rewarm: Rewarm | None) -> float:
    """The learning rate optimizer step ``step`` takes: the schedule times ``scale``, ramped after ``rewarm``."""
    lr = get_lr(step, config, total_steps) * scale
    ramp = config.optim.warmup_steps
    if rewarm is None or not rewarm.start <= step < rewarm.start + ramp:
        return lr
    return rewarm.lr + (lr - rewarm.lr) * (step - rewarm.start + 1) / ramp


def resume_rewarm(
    step: int, last_lr: float, before: float, after: float, kept: Rewarm | None, config: TrainConfig
) -> Rewarm | None:
    """The ramp a resumed run at ``step`` takes, if any.

    Args:
        step: the first optimizer step of the resumed run.
        last_lr: the learning rate of the checkpoint's last step (its optimizer's).
        before: the checkpoint's own schedule at ``step`` (scaled, without any ramp).
        after: the resumed run's schedule at ``step`` (scaled, without any ramp).
        kept: the ramp the checkpoint was in, continued when the schedule is unchanged.
        config: the resumed run's config (``optim.warmup_steps`` is the ramp's length).
    """
    if abs(after - before) <= CHANGE_TOLERANCE * max(abs(before), abs(after)):
        return kept
    if config.optim.warmup_steps == 0:
        return None
    return Rewarm(start=step, lr=last_lr)
