"""Logit preprocessing of 8-bit images (Dinh et al. 2017 §4.1), as a transform.

Pixel intensities ``v ∈ [0, 256)`` (dequantized 8-bit values) map to
``u = logit(α + (1 − 2α) · v / 256)``; the log-determinant includes the ``1/256`` scaling, so the flow's
density is over intensities on the 0–256 scale and the log-likelihood of an 8-bit image is that density at the
dequantized point (bin width 1).
"""

import math

import torch
from torch import Tensor

from models.base import Transform, sum_except_batch


class LogitPreprocess(Transform):
    """``v -> logit(α + (1 − 2α) v / L)`` with ``L`` quantisation levels.

    Args:
        alpha: keeps the logit away from ±∞ (0.05 in the paper).
        num_levels: L, 256 for 8-bit images.
    """

    def __init__(self, alpha: float = 0.05, num_levels: int = 256) -> None:
        super().__init__()
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
        self.alpha = alpha
        self.num_levels = float(num_levels)
        self.log_slope = math.log((1.0 - 2.0 * alpha) / num_levels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, H, W)`` intensities → logits, with ``logabsdet`` ``(B,)``."""
        p = self.alpha + (1.0 - 2.0 * self.alpha) * x / self.num_levels
        log_p = torch.log(p)
        log_1mp = torch.log1p(-p)
        logabsdet = sum_except_batch(self.log_slope - log_p - log_1mp)
        return log_p - log_1mp, logabsdet

    @torch.jit.export
    def inverse(self, y: Tensor) -> Tensor:
        """Logits → intensities (may leave ``[0, L)`` slightly for latents far from the data)."""
        return (torch.sigmoid(y) - self.alpha) * (self.num_levels / (1.0 - 2.0 * self.alpha))
