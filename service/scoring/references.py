"""A card's reference scores as arrays, built once when a model loads and kept on the loaded model."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from artifact import ModelCard, scores

if TYPE_CHECKING:  # drift.py imports this module
    from service.scoring.drift import DriftWindow


@dataclass(eq=False)
class References:
    """The reference scores of one model's card, and the typicality bootstraps computed from them so far.

    Attributes:
        split: the held-out split the references come from.
        bits_per_dim: ``(n,)`` the reference items' bits/dim.
        complexity: ``(n,)`` their ``complexity`` scores (None in cards that predate it).
        compressor: the compressor of ``complexity``.
        latent: ``(n,)`` their ``latent`` scores (None in cards that predate it).
        latent_gaussian: the Gaussian ``latent`` scores against.
        coarse: ``(n,)`` their ``coarse`` scores (None in cards that predate it).
        coarse_dims: the trailing latent coordinates ``coarse`` reads.
        drift: the model's window of recently scored items (``service.scoring.drift``), once the app made one.
    """

    split: str
    bits_per_dim: np.ndarray
    complexity: np.ndarray | None
    compressor: scores.Compressor
    latent: np.ndarray | None = None
    latent_gaussian: scores.LatentGaussian | None = None
    coarse: np.ndarray | None = None
    coarse_dims: int | None = None
    drift: DriftWindow | None = None
    _bootstraps: dict[int, tuple[float, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def from_card(cls, card: ModelCard) -> References | None:
        """The card's references, None when it has none."""
        block = card.reference_scores
        if block is None or not block.bits_per_dim:
            return None
        gaussian = None
        if block.latent_mean is not None and block.latent_std is not None:
            gaussian = scores.LatentGaussian(mean=_array(block.latent_mean), std=_array(block.latent_std))
        return cls(
            split=block.split,
            bits_per_dim=_array(block.bits_per_dim),
            complexity=None if block.complexity is None else _array(block.complexity),
            compressor=block.complexity_compressor or scores.DEFAULT_COMPRESSOR,
            latent=None if block.latent is None or gaussian is None else _array(block.latent),
            latent_gaussian=gaussian,
            coarse=None if block.coarse is None else _array(block.coarse),
            coarse_dims=block.coarse_dims,
        )

    @functools.cached_property
    def combined_parts(self) -> tuple[scores.ScoreName, ...]:
        """The parts ``combined`` combines for this card: all of ``COMBINED_PARTS`` it has references for."""
        if any(getattr(self, part) is None for part in scores.COMBINED_REQUIRED):
            return ()
        return tuple(part for part in scores.COMBINED_PARTS if getattr(self, part) is not None)

    @functools.cached_property
    def combined(self) -> np.ndarray | None:
        """The ``combined`` scores of the reference items (``None`` without complexity and latent references)."""
        if not self.combined_parts:
            return None
        return scores.combined_reference([getattr(self, part) for part in self.combined_parts])

    def typicality(self, batch_size: int) -> tuple[float, np.ndarray]:
        """``(H, bootstrap statistics)`` for batches of ``batch_size`` (seeded; cached per batch size)."""
        if batch_size not in self._bootstraps:
            self._bootstraps[batch_size] = scores.bootstrap_typicality(self.bits_per_dim, batch_size)
        return self._bootstraps[batch_size]


def _array(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)
