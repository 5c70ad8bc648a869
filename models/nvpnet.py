"""NVPNet: fully-connected affine couplings for vectors (the founding course's 2-D toy model).

``y = b ⊙ x + (1 − b) ⊙ (x ⊙ exp(s(b ⊙ x)) + t(b ⊙ x))`` with alternating random half masks and one-hidden-layer
tanh MLPs for ``s`` and ``t``.

References:
    Dinh, Sohl-Dickstein & Bengio, *Density estimation using Real NVP*, ICLR 2017, §3.
"""

import torch

from models.base import CompositeTransform
from models.coupling import AffineCoupling
from models.flow import Flow
from models.nets import MLPScaleShift


def alternating_random_masks(dim: int, depth: int, seed: int) -> list[torch.Tensor]:
    """``depth`` masks of shape ``(D,)``: each pair is a random half and its complement."""
    generator = torch.Generator().manual_seed(seed)
    masks: list[torch.Tensor] = []
    for i in range(depth):
        if i % 2 == 0:
            mask = torch.zeros(dim)
            mask[torch.randperm(dim, generator=generator)[: dim // 2]] = 1.0
        else:
            mask = 1.0 - masks[-1]
        masks.append(mask)
    return masks


class NVPNet(Flow):
    """Stack of ``depth`` MLP affine couplings on ``(B, D)`` vectors.

    Args:
        dim: D, at least 2.
        hidden_dim: width of the hidden layer of the ``s`` and ``t`` MLPs.
        depth: number of coupling layers (even, so that every coordinate is transformed as often).
        mask_seed: seed of the random masks; they are buffers, so a saved model reloads the same masks.

    Example:
        >>> flow = NVPNet(dim=2, hidden_dim=64, depth=6)
        >>> flow.sample(4).shape
        torch.Size([4, 2])
    """

    def __init__(self, dim: int = 2, hidden_dim: int = 64, depth: int = 8, mask_seed: int = 0) -> None:
        if dim < 2:
            raise ValueError(f"NVPNet needs dim >= 2, got {dim}")
        if depth < 2 or depth % 2:
            raise ValueError(f"NVPNet needs an even depth >= 2, got {depth}")
        couplings = [
            AffineCoupling(mask, MLPScaleShift(dim, hidden_dim))
            for mask in alternating_random_masks(dim, depth, mask_seed)
        ]
        super().__init__(CompositeTransform(couplings), event_shape=[dim], data_kind="vector")
