"""The one transform contract every layer of every flow follows.

Direction is written down once, here: ``forward`` maps **data → latent** and returns the log-absolute-determinant
of its Jacobian; ``inverse`` maps **latent → data**. A flow is a transform plus a base distribution
(:class:`models.flow.Flow`).

References:
    Durkan et al., *nflows* (2020), ``nflows/transforms/base.py``: the same contract.
"""

import torch
from torch import Tensor, nn


class Transform(nn.Module):
    """An invertible map with a tractable Jacobian determinant.

    Subclasses implement both directions:

    - ``forward(x) -> (y, logabsdet)``: data → latent; ``logabsdet`` has shape ``(B,)`` and equals
      ``log|det ∂y/∂x|`` for each row.
    - ``inverse(y) -> x``: latent → data, the exact inverse of ``forward``.

    Both are TorchScript-compatible so that any composition of transforms can be exported.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        raise NotImplementedError

    @torch.jit.export
    def inverse(self, y: Tensor) -> Tensor:  # noqa: D102
        raise NotImplementedError


class CompositeTransform(Transform):
    """Transforms applied in sequence; log-determinants add up.

    Args:
        transforms: applied in the given order by ``forward`` and in reverse order by ``inverse``.
    """

    def __init__(self, transforms: list[Transform]) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Map ``x`` through every transform. Returns ``(y, logabsdet)`` with ``logabsdet`` of shape ``(B,)``."""
        logabsdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for transform in self.transforms:
            x, step_logabsdet = transform(x)
            logabsdet = logabsdet + step_logabsdet
        return x, logabsdet

    @torch.jit.export
    def inverse(self, y: Tensor) -> Tensor:
        """Undo every transform, last first."""
        for transform in self.transforms[::-1]:
            y = transform.inverse(y)
        return y


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum all dimensions but the first: ``(B, *) -> (B,)``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)
