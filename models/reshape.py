"""Volume-preserving reshapes: the squeeze of Dinh et al. 2017 §3.6 (logabsdet is zero)."""

import torch
import torch.nn.functional as F
from torch import Tensor

from models.base import Transform


class Squeeze(Transform):
    """``(B, C, s, s) -> (B, 4C, s/2, s/2)``: each 2×2 patch becomes 4 channels.

    Channel ``c·4 + 2·di + dj`` holds pixel ``(2i + di, 2j + dj)`` of channel ``c`` (``pixel_unshuffle``
    order). Under this order a channel-wise mask that keeps the first half of the channels keeps both colours of
    the previous checkerboard, so the channel-wise couplings are not redundant with the checkerboard ones.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data → latent. Returns the squeezed tensor and zeros of shape ``(B,)``."""
        if x.shape[2] % 2 != 0 or x.shape[3] % 2 != 0:
            raise ValueError(f"squeeze expected even height and width, got {list(x.shape)}")
        return F.pixel_unshuffle(x, 2), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    @torch.jit.export
    def inverse(self, y: Tensor) -> Tensor:
        """``(B, 4C, s/2, s/2) -> (B, C, s, s)``."""
        return F.pixel_shuffle(y, 2)
