"""A flow: one transform (data → latent) plus a standard normal base distribution.

``log p(x) = log N(f(x); 0, I) + log|det ∂f/∂x|`` (Dinh et al. 2017, eq. 3), sampling is ``x = f⁻¹(z)``.
Every flow of this library offers the same API, used by training, export and the tests.
"""

import math

import torch
from torch import Tensor, nn

from models.base import Transform


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` for ``z`` of shape ``(B, D)``, returned as ``(B,)``."""
    return -0.5 * (z * z).sum(dim=1) - 0.5 * z.shape[1] * math.log(2.0 * math.pi)


def bits_per_dim(log_prob: Tensor, dim: int) -> Tensor:
    """Convert a log-likelihood in nats ``(B,)`` to bits per dimension ``(B,)``."""
    return -log_prob / (dim * math.log(2.0))


class Flow(nn.Module):
    """Base class of every flow: the public API.

    Args:
        transform: data ``(B, *event_shape)`` → latent ``(B, D)``.
        event_shape: shape of one data item.
        data_kind: ``"image"`` (8-bit intensities, dequantized in :meth:`log_prob`) or ``"vector"``.

    Attributes:
        event_shape: shape of one item, e.g. ``[1, 28, 28]`` or ``[2]``.
        dim: D, the number of dimensions of one item.
    """

    def __init__(self, transform: Transform, event_shape: list[int], data_kind: str) -> None:
        super().__init__()
        if data_kind not in ("image", "vector"):
            raise ValueError(f"data_kind must be 'image' or 'vector', got {data_kind!r}")
        self.transform = transform
        self.event_shape: list[int] = [int(s) for s in event_shape]
        self.dim = int(math.prod(self.event_shape))
        self.data_kind = data_kind
        self.is_image = data_kind == "image"

    def _check_data(self, x: Tensor) -> None:
        if x.dim() != len(self.event_shape) + 1 or list(x.shape[1:]) != self.event_shape:
            raise ValueError(f"expected data of shape (B, {self.event_shape}), got {list(x.shape)}")

    def _check_latent(self, z: Tensor) -> None:
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"expected latents of shape (B, {self.dim}), got {list(z.shape)}")

    @torch.jit.export
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data → latent, an exact bijection (no dequantization).

        Args:
            x: ``(B, *event_shape)``.

        Returns:
            ``(z, log_det)``: ``z`` ``(B, D)`` and ``log|det ∂z/∂x|`` ``(B,)``.
        """
        self._check_data(x)
        z, log_det = self.transform(x)
        return z.reshape(x.shape[0], self.dim), log_det

    @torch.jit.export
    def decode(self, z: Tensor) -> Tensor:
        """Latent ``(B, D)`` → data ``(B, *event_shape)``, the exact inverse of :meth:`encode`."""
        self._check_latent(z)
        return self.transform.inverse(z)

    @torch.jit.export
    def log_prob(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """Log-likelihood in nats ``(B,)`` of the data as given.

        For images ``x`` holds 8-bit values (0–255) and is dequantized first: ``x + noise`` when ``noise``
        (``U[0, 1)``, same shape) is given, else ``x + U[0, 1)`` in training mode and ``x + 0.5`` (bin
        centre, deterministic) in eval mode. The result is then the discrete log-likelihood of the 8-bit image.
        """
        if self.is_image:
            if noise is not None:
                x = x + noise
            elif self.training:
                x = x + torch.rand_like(x)
            else:
                x = x + 0.5
        z, log_det = self.encode(x)
        return standard_normal_log_prob(z) + log_det

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`log_prob` with no noise given: calling the flow as a module scores its input."""
        return self.log_prob(x, None)

    @torch.jit.ignore
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` items: ``z ~ N(0, T² I)``, then :meth:`decode` (Dinh et al. 2017 §5: temperature).

        Returns:
            ``(n, *event_shape)``; for images, continuous intensities (``floor`` and clamp to get 8-bit pixels).
        """
        if n < 1 or not temperature > 0:
            raise ValueError(f"expected n >= 1 and temperature > 0, got n={n}, temperature={temperature}")
        param = next(self.parameters())
        gen_device = generator.device if generator is not None else param.device
        z = torch.randn(n, self.dim, generator=generator, device=gen_device, dtype=param.dtype)
        return self.decode(temperature * z.to(param.device))

    def l2_penalized_weights(self) -> list[nn.Parameter]:
        """The weights whose L2 norm the paper penalises (5·10⁻⁵): those of the ``s``/``t`` output convolutions.

        The paper puts the penalty on the weight-norm scales ``g``; ``g`` is the per-channel norm of a weight-normed
        convolution's weight, so ``Σ g²`` of the old weight-normed output convolution is ``Σ w²`` of the plain one
        (``models/nets.py`` says why it is plain). Flows without such convolutions return ``[]``.
        """
        return [p for name, p in self.named_parameters() if name.endswith("out_conv.weight")]

    def num_parameters(self) -> int:
        """Number of trainable scalars."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
