"""The multi-scale convolutional RealNVP for images (Dinh et al. 2017, §3.6 and §4.1).

Per scale: 3 checkerboard couplings → squeeze ``(C, s, s) → (4C, s/2, s/2)`` → 3 channel-wise couplings →
factor out half of the channels as latent. The last scale: 4 checkerboard couplings. The ``s``/``t`` ResNets
double their width at each scale. Images are dequantized and logit-preprocessed first.

References:
    Dinh, Sohl-Dickstein & Bengio, *Density estimation using Real NVP*, ICLR 2017.
"""

import torch
from torch import Tensor

from models.base import CompositeTransform, Transform
from models.coupling import AffineCoupling, channel_mask, checkerboard_mask
from models.flow import Flow
from models.nets import ResNetScaleShift
from models.preprocess import LogitPreprocess
from models.reshape import Squeeze


class MultiscaleTransform(Transform):
    """Levels of transforms with half the channels factored out after each level but the last.

    ``forward`` maps ``(B, C, H, W)`` to the flat latent ``(B, D)``: the factored-out parts of every level in
    order, then the output of the last level (as ``nflows``' ``MultiscaleCompositeTransform``).

    Args:
        levels: the per-scale transforms, in data → latent order.
        level_shapes: the output shape ``[C, H, W]`` of each level (before its factor-out).
    """

    def __init__(self, levels: list[Transform], level_shapes: list[list[int]]) -> None:
        super().__init__()
        self.levels = torch.nn.ModuleList(levels)
        self.level_shapes = level_shapes
        self.num_levels = len(levels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, C, H, W) -> ((B, D), (B,))``."""
        logabsdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        latents: list[Tensor] = []
        h = x
        for i, level in enumerate(self.levels):
            h, step_logabsdet = level(h)
            logabsdet = logabsdet + step_logabsdet
            if i < self.num_levels - 1:
                half = h.shape[1] // 2
                latents.append(h[:, :half].reshape(h.shape[0], -1))
                h = h[:, half:]
        latents.append(h.reshape(h.shape[0], -1))
        return torch.cat(latents, dim=1), logabsdet

    @torch.jit.export
    def inverse(self, y: Tensor) -> Tensor:
        """``(B, D) -> (B, C, H, W)``: rebuild each level's output from its factored-out part, last level first."""
        batch = y.shape[0]
        offsets: list[int] = [0]
        for i in range(self.num_levels):
            c, height, width = self.level_shapes[i]
            kept = c * height * width if i == self.num_levels - 1 else (c // 2) * height * width
            offsets.append(offsets[-1] + kept)
        h = y[:, offsets[-2] :]
        for j, level in enumerate(self.levels[::-1]):
            i = self.num_levels - 1 - j
            c, height, width = self.level_shapes[i]
            if i == self.num_levels - 1:
                h = h.reshape(batch, c, height, width)
            else:
                factored = y[:, offsets[i] : offsets[i + 1]].reshape(batch, c // 2, height, width)
                h = torch.cat([factored, h], dim=1)
            h = level.inverse(h)
        return h


class RealNVP(Flow):
    """Multi-scale RealNVP on 8-bit images ``(B, C, S, S)``.

    Args:
        in_channels: C (1 or 3).
        image_size: S; must be divisible by ``2^(num_scales − 1)`` (one squeeze per scale but the last).
        num_scales: number of scales, including the last (checkerboard-only) one.
        mid_channels: width of the ``s``/``t`` ResNets at the first scale; doubles at each scale.
        num_blocks: residual blocks per ResNet.
        alpha: logit preprocessing constant (0.05 in the paper).

    Attributes:
        coarse_dims: how many trailing coordinates of the latent the last scale produces (``C·s²`` of its output).

    Example:
        >>> flow = RealNVP(in_channels=1, image_size=8, num_scales=2, mid_channels=8, num_blocks=1).eval()
        >>> flow.log_prob(torch.randint(0, 256, (2, 1, 8, 8)).float()).shape
        torch.Size([2])
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_scales: int = 2,
        mid_channels: int = 64,
        num_blocks: int = 8,
        alpha: float = 0.05,
    ) -> None:
        if in_channels < 1 or num_scales < 1 or mid_channels < 1 or num_blocks < 0:
            raise ValueError(
                "expected in_channels >= 1, num_scales >= 1, mid_channels >= 1, num_blocks >= 0, got "
                f"{in_channels}, {num_scales}, {mid_channels}, {num_blocks}"
            )
        factor = 2 ** (num_scales - 1)
        if image_size % factor != 0 or image_size // factor < 2:
            raise ValueError(
                f"image_size must be a multiple of 2^(num_scales-1) = {factor} with at least 2 pixels left at "
                f"the last scale, got image_size={image_size} with num_scales={num_scales}"
            )
        levels: list[Transform] = []
        level_shapes: list[list[int]] = []
        channels, side = in_channels, image_size
        for scale in range(num_scales):
            width = mid_channels * 2**scale
            last = scale == num_scales - 1
            num_checkerboard = 4 if last else 3
            layers: list[Transform] = [
                AffineCoupling(checkerboard_mask(side, side, i % 2), ResNetScaleShift(channels, width, num_blocks))
                for i in range(num_checkerboard)
            ]
            if not last:
                layers.append(Squeeze())
                channels, side = 4 * channels, side // 2
                layers += [
                    AffineCoupling(channel_mask(channels, i % 2 == 0), ResNetScaleShift(channels, width, num_blocks))
                    for i in range(3)
                ]
            levels.append(CompositeTransform(layers))
            level_shapes.append([channels, side, side])
            if not last:
                channels //= 2
        transform = CompositeTransform([LogitPreprocess(alpha), MultiscaleTransform(levels, level_shapes)])
        super().__init__(transform, event_shape=[in_channels, image_size, image_size], data_kind="image")
        # The last scale's output ends the flat latent: the ``coarse`` anomaly score reads these coordinates.
        self.coarse_dims: int = level_shapes[-1][0] * level_shapes[-1][1] * level_shapes[-1][2]
