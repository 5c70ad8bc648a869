"""The 1-D increasing piecewise-linear flow of the founding course chapter.

Knots ``x_k = xmin + k·h`` (``h = (xmax − xmin)/Q``, ``k = 0…Q``) carry the values
``f(x_k) = α + Σ_{j≤k} exp(ξ_j)`` (parameters α, ξ₀…ξ_Q), so ``f`` is increasing by construction and
``f'(x) = exp(ξ_{k+1}) / h`` on bin ``k``. Training maximises ``log N(f(x)) + log f'(x)``.

Tails (our choice): outside ``[xmin, xmax]`` the first and last pieces are extended linearly with their own
slopes. ``f`` stays a continuous increasing bijection of ℝ with an exact inverse, and the log-likelihood of any
finite point is finite.
"""

import math

import torch
from torch import Tensor, nn

from models.base import Transform
from models.flow import Flow


class PiecewiseLinearTransform(Transform):
    """Elementwise increasing piecewise-linear map on ``(B, 1)``.

    Args:
        num_bins: Q, the number of pieces between ``xmin`` and ``xmax``.
        xmin: left end of the knot grid.
        xmax: right end of the knot grid.
    """

    def __init__(self, num_bins: int, xmin: float, xmax: float) -> None:
        super().__init__()
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        if not xmax > xmin:
            raise ValueError(f"expected xmin < xmax, got xmin={xmin}, xmax={xmax}")
        self.num_bins = num_bins
        self.xmin = float(xmin)
        self.bin_width = (float(xmax) - float(xmin)) / num_bins
        # Start near a map of [xmin, xmax] onto [-3, 3]: the data range lands on the bulk of N(0, 1).
        step = 6.0 / num_bins
        self.xi = nn.Parameter(torch.full((num_bins + 1,), math.log(step)))
        self.alpha = nn.Parameter(torch.tensor(-3.0 - step))

    def knot_values(self) -> Tensor:
        """``f(x_k)`` for ``k = 0…Q``: ``(Q + 1,)``."""
        return self.alpha + torch.cumsum(torch.exp(self.xi), dim=0)

    def _slopes(self) -> Tensor:
        return torch.exp(self.xi[1:]) / self.bin_width

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 1) -> (f(x) (B, 1), log f'(x) (B,))``."""
        values = self.knot_values()
        k = torch.floor((x - self.xmin) / self.bin_width).long().clamp(0, self.num_bins - 1)
        left = self.xmin + k.to(x.dtype) * self.bin_width
        slope = self._slopes()[k]
        y = values[k] + (x - left) * slope
        return y, torch.log(slope).sum(dim=1)

    @torch.jit.export
    def inverse(self, y: Tensor) -> Tensor:
        """``(B, 1) -> (B, 1)``: locate the piece by its knot values, then undo its line."""
        values = self.knot_values()
        k = torch.searchsorted(values[1:-1].contiguous(), y.contiguous(), right=True)
        left = self.xmin + k.to(y.dtype) * self.bin_width
        return left + (y - values[k]) / self._slopes()[k]


class PiecewiseLinearFlow(Flow):
    """1-D flow ``z = f(x)`` with ``f`` increasing piecewise-linear; data ``(B, 1)``.

    Args:
        num_bins: Q, the number of linear pieces on ``[xmin, xmax]``.
        xmin: left end of the knot grid.
        xmax: right end of the knot grid.

    Example:
        >>> flow = PiecewiseLinearFlow(num_bins=32, xmin=-4.0, xmax=4.0)
        >>> flow.log_prob(torch.zeros(5, 1)).shape
        torch.Size([5])
    """

    def __init__(self, num_bins: int = 32, xmin: float = -4.0, xmax: float = 4.0) -> None:
        super().__init__(PiecewiseLinearTransform(num_bins, xmin, xmax), event_shape=[1], data_kind="vector")
