"""Anomaly scores of a request's items against the card's reference scores (no HTTP here).

The maths lives in ``artifact.scores`` (export writes the references with the same code). Per-item scores are
one table, ``ITEM_SCORES``: what each needs of the card's references, and how it is computed from the request
and from the scores it depends on (``combined`` combines the calibrated p-values of its ``parts``, so the table
lists it after them). ``typicality`` tests the batch as a whole and is computed beside the table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from artifact import ModelCard, scores
from artifact.scores import Calibrated, ScoreName, Typicality
from service.core.errors import InvalidInputError, ReferenceMissingError
from service.scoring.references import References

INLINE_COMPRESSION_PIXELS = 16 * 28 * 28  # up to ~1 ms of compression runs on the event loop
REEXPORT = "re-export it with `python -m training export --checkpoint CHECKPOINT --out model_store/NAME`"
OTHER_SCORES = "or choose score 'nll' or 'typicality'"


@dataclass(frozen=True)
class Items:
    """What the scores of one request are computed from.

    Attributes:
        x: ``(N, *shape)`` the items as received (8-bit values for images).
        latents: ``(N, D)`` their latents.
        bits_per_dim: ``(N,)`` float64.
    """

    x: torch.Tensor
    latents: torch.Tensor
    bits_per_dim: np.ndarray


ScoreFn = Callable[[Items, References, dict[str, Calibrated]], Awaitable[np.ndarray]]


@dataclass(frozen=True)
class ItemScore:
    """One per-item score.

    Attributes:
        needs: the ``References`` arrays it is calibrated against (all must be in the card).
        reference: the reference items' own scores.
        compute: the items' scores, given the calibrated scores already computed.
        images_only: whether it needs 8-bit images.
        parts: the scores it may combine (computed before it; ``References.combined_parts`` those it does).
    """

    needs: tuple[str, ...]
    reference: Callable[[References], np.ndarray | None]
    compute: ScoreFn
    images_only: bool = False
    parts: tuple[ScoreName, ...] = ()


async def _nll(items: Items, refs: References, done: dict[str, Calibrated]) -> np.ndarray:
    return items.bits_per_dim


async def _complexity(items: Items, refs: References, done: dict[str, Calibrated]) -> np.ndarray:
    """Complexity scores, compressed off the event loop only when that is worth a thread hop.

    A 28×28 PNG takes ~80 µs; handing it to a thread costs more latency than that, so small requests are
    compressed inline and only large ones (compression releases the GIL) go to a worker thread.
    """
    pixels = items.x.numpy()
    if items.x[0].numel() * len(items.x) <= INLINE_COMPRESSION_PIXELS:
        return scores.complexity_scores(items.bits_per_dim, pixels, refs.compressor)
    return await asyncio.to_thread(scores.complexity_scores, items.bits_per_dim, pixels, refs.compressor)


async def _latent(items: Items, refs: References, done: dict[str, Calibrated]) -> np.ndarray:
    assert refs.latent_gaussian is not None, "ItemScore.needs covers it"
    return scores.latent_scores(items.latents.numpy(), refs.latent_gaussian)


async def _coarse(items: Items, refs: References, done: dict[str, Calibrated]) -> np.ndarray:
    assert refs.coarse_dims is not None, "ItemScore.needs covers it"
    return scores.coarse_scores(items.latents.numpy(), refs.coarse_dims)


async def _combined(items: Items, refs: References, done: dict[str, Calibrated]) -> np.ndarray:
    return scores.fisher_statistic([done[part].p_value for part in refs.combined_parts])


ITEM_SCORES: dict[ScoreName, ItemScore] = {
    "nll": ItemScore(needs=(), reference=lambda refs: refs.bits_per_dim, compute=_nll),
    "complexity": ItemScore(
        needs=("complexity",), reference=lambda refs: refs.complexity, compute=_complexity, images_only=True
    ),
    "latent": ItemScore(needs=("latent", "latent_gaussian"), reference=lambda refs: refs.latent, compute=_latent),
    "coarse": ItemScore(
        needs=("coarse", "coarse_dims"), reference=lambda refs: refs.coarse, compute=_coarse, images_only=True
    ),
    "combined": ItemScore(  # over the parts the card has: cards before ``coarse`` combine complexity and latent
        needs=scores.COMBINED_REQUIRED,
        reference=lambda refs: refs.combined,
        compute=_combined,
        images_only=True,
        parts=scores.COMBINED_PARTS,
    ),
}
assert tuple(ITEM_SCORES) == scores.ITEM_SCORES, "one list of per-item scores"


@dataclass
class Report:
    """Every score of a batch of items; the scores whose reference the card lacks are under ``unavailable``."""

    fpr: float
    scores: dict[str, Calibrated] = field(default_factory=dict)
    compressors: dict[str, str] = field(default_factory=dict)
    combined_parts: tuple[str, ...] = ()
    typicality: Typicality | None = None
    bootstrap_draws: int = 0
    reference_split: str | None = None
    reference_size: int = 0
    unavailable: dict[str, str] = field(default_factory=dict)


def unavailable_reason(card: ModelCard, refs: References | None, score: ScoreName) -> str | None:
    """Why ``score`` cannot be computed for this model, or ``None`` when it can."""
    spec = ITEM_SCORES.get(score)
    if spec is not None and spec.images_only and not card.is_image:
        return f"{score} needs 8-bit images; model {card.name!r} is a vector model"
    exported = f"exported {card.created_at}" if card.created_at else "exported"
    if refs is None:
        return (
            f"reference scores for {score!r} missing from card of model {card.name!r} ({exported} without "
            f"reference_scores); {REEXPORT}"
        )
    if spec is None:  # typicality: a bootstrap of the reference bits/dim
        if refs.bits_per_dim.size < 2:
            return f"typicality needs at least 2 reference scores; the card of model {card.name!r} has 1"
        return None
    missing = [need for need in spec.needs if getattr(refs, need) is None]
    if missing:
        label = repr(score) + (f" (of {' and '.join(map(repr, spec.needs))})" if spec.parts else "")
        stored = " and ".join(need for need in spec.needs if not need.endswith(("_gaussian", "_dims")))
        return (
            f"reference scores for {label} missing from card of model {card.name!r} ({exported}, before cards "
            f"stored {stored} references); {REEXPORT}, {OTHER_SCORES}"
        )
    return None


def require(card: ModelCard, refs: References | None, score: ScoreName) -> None:
    """Raise when the score that decides a request cannot be computed.

    Raises:
        InvalidInputError: an images-only score asked of a vector model (422).
        ReferenceMissingError: the card lacks the reference scores the score needs (409).
    """
    reason = unavailable_reason(card, refs, score)
    if reason is None:
        return
    spec = ITEM_SCORES.get(score)
    if spec is not None and spec.images_only and not card.is_image:
        allowed = [name for name in scores.SCORES if not (name in ITEM_SCORES and ITEM_SCORES[name].images_only)]
        raise InvalidInputError(
            f"score: expected {', '.join(map(repr, allowed[:-1]))} or {allowed[-1]!r} for vector model "
            f"{card.name!r}, got {score!r}"
        )
    raise ReferenceMissingError(reason)


async def score_batch(card: ModelCard, refs: References | None, items: Items, fpr: float) -> Report:
    """Every score the model can give for ``items``, calibrated at ``fpr``."""
    report = Report(fpr=fpr)
    if refs is not None:
        report.reference_split, report.reference_size = refs.split, int(refs.bits_per_dim.size)
    for name, spec in ITEM_SCORES.items():
        reason = unavailable_reason(card, refs, name)
        if reason is not None:
            report.unavailable[name] = reason
            continue
        assert refs is not None, "unavailable_reason covers missing references"
        reference = spec.reference(refs)
        assert reference is not None, "ItemScore.needs covers a missing reference"
        values = await spec.compute(items, refs, report.scores)
        report.scores[name] = scores.calibrate(values, reference, fpr)
        if name == "complexity":
            report.compressors[name] = refs.compressor
        if name == "combined":
            report.combined_parts = refs.combined_parts
    reason = unavailable_reason(card, refs, "typicality")
    if reason is not None:
        report.unavailable["typicality"] = reason
    else:
        assert refs is not None, "unavailable_reason covers missing references"
        entropy, bootstrap = refs.typicality(len(items.bits_per_dim))
        report.typicality = scores.typicality_test(items.bits_per_dim, entropy, bootstrap, fpr)
        report.bootstrap_draws = int(bootstrap.size)
    if refs is not None and refs.drift is not None:  # every scoring route passes here: the drift window's feed
        default = report.scores.get(scores.default_score(card.is_image))
        refs.drift.observe(items.bits_per_dim, None if default is None else default.p_value)
    return report


def decision(report: Report, score: ScoreName, count: int) -> list[bool]:
    """``is_anomaly`` per item by ``score`` (typicality flags the whole batch together)."""
    if score == "typicality":
        assert report.typicality is not None, "require() checked that typicality is available"
        return [bool(report.typicality.calibrated.is_anomaly[0])] * count
    return report.scores[score].is_anomaly.tolist()
