"""Affine coupling layers (Dinh et al. 2017, eq. 7–9).

``y = b ⊙ x + (1 − b) ⊙ (x ⊙ exp(s(b ⊙ x)) + t(b ⊙ x))``, with ``log|det ∂y/∂x| = Σ (1 − b) ⊙ s(b ⊙ x)``.
The mask ``b`` selects the half that conditions the other; it is a registered buffer, so a saved model
reloads identically. The network predicting ``(s, t)`` is passed in, so the same coupling serves MLPs and
ResNets.
"""

import torch
from torch import Tensor, nn

from models.base import Transform, sum_except_batch


class AffineCoupling(Transform):
    """Masked affine coupling.

    Args:
        mask: ``b``, broadcastable to the input, ones where the input passes through unchanged. Shapes:
            ``(D,)`` for vectors ``(B, D)``; ``(1, 1, H, W)`` (checkerboard) or ``(1, C, 1, 1)`` (channel-wise)
            for images ``(B, C, H, W)``.
        net: maps ``b ⊙ x`` to ``(s, t)``, each the shape of ``x``.
    """

    def __init__(self, mask: Tensor, net: nn.Module) -> None:
        super().__init__()
        self.register_buffer("mask", mask.float())
        self.net = net

    def _scale_shift(self, x_masked: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.net(x_masked)
        free = 1.0 - self.mask
        return s * free, t * free

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data → latent: ``(B, *) -> ((B, *), (B,))``."""
        x_masked = x * self.mask
        s, t = self._scale_shift(x_masked)
        y = x_masked + (1.0 - self.mask) * (x * torch.exp(s) + t)
        return y, sum_except_batch(s)

    @torch.jit.export
    def inverse(self, y: Tensor) -> Tensor:
        """Latent → data: ``x = b ⊙ y + (1 − b) ⊙ (y − t) ⊙ exp(−s)``."""
        y_masked = y * self.mask
        s, t = self._scale_shift(y_masked)
        return y_masked + (1.0 - self.mask) * ((y - t) * torch.exp(-s))


def checkerboard_mask(height: int, width: int, parity: int) -> Tensor:
    """``(1, 1, H, W)`` mask with ones where ``(i + j) % 2 == parity``."""
    rows = torch.arange(height).view(-1, 1)
    cols = torch.arange(width).view(1, -1)
    return ((rows + cols) % 2 == parity).float().view(1, 1, height, width)


def channel_mask(channels: int, first_half: bool) -> Tensor:
    """``(1, C, 1, 1)`` mask with ones on the first (or second) half of the channels."""
    mask = torch.zeros(channels)
    half = channels // 2
    if first_half:
        mask[:half] = 1.0
    else:
        mask[half:] = 1.0
    return mask.view(1, channels, 1, 1)
