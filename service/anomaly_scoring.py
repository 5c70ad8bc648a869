"""Anomaly scores of a request's items against the card's reference scores, and ``explain`` maps (no HTTP here).

The maths lives in ``service.anomaly``; this module reads the references from a model's card, says which
scores a model cannot give and why, and runs the gradient of ``explain`` on the device's executor thread.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import torch

from service import anomaly
from service.anomaly import Compressor, ScoreName
from service.anomaly_schemas import AnomalyScores, ItemScores, ReferenceInfo, TypicalityScore
from service.card import ModelCard, ReferenceScores
from service.codec import encode_png_base64
from service.errors import DeadlineExceededError, InvalidInputError, ReferenceMissingError
from service.registry import ServedModel
from service.runner import ModelRunner

INLINE_COMPRESSION_PIXELS = 16 * 28 * 28  # up to ~1 ms of compression runs on the event loop
REEXPORT = "re-export it with `python -m training export --checkpoint CHECKPOINT --out model_store/NAME`"


@dataclass(eq=False)
class References:
    """The reference scores of one model's card, and the typicality bootstraps computed from them so far."""

    split: str
    bits_per_dim: np.ndarray
    complexity: np.ndarray | None
    compressor: Compressor
    latent: np.ndarray | None = None
    latent_gaussian: anomaly.LatentGaussian | None = None
    _bootstraps: dict[int, tuple[float, np.ndarray]] = field(default_factory=dict)

    @functools.cached_property
    def combined(self) -> np.ndarray | None:
        """The ``combined`` scores of the reference items (``None`` without complexity and latent references)."""
        if self.complexity is None or self.latent is None:
            return None
        return anomaly.combined_reference([self.complexity, self.latent])

    def typicality(self, batch_size: int) -> tuple[float, np.ndarray]:
        """``(H, bootstrap statistics)`` for batches of ``batch_size`` (seeded; cached per batch size)."""
        if batch_size not in self._bootstraps:
            self._bootstraps[batch_size] = anomaly.bootstrap_typicality(self.bits_per_dim, batch_size)
        return self._bootstraps[batch_size]


_references: weakref.WeakKeyDictionary[ServedModel, References | None] = weakref.WeakKeyDictionary()


def references(served: ServedModel) -> References | None:
    """The model's references (read once per served model), ``None`` when its card has none."""
    if served not in _references:
        scores = served.card.reference_scores
        _references[served] = (
            None
            if scores is None or not scores.bits_per_dim
            else References(
                split=scores.split,
                bits_per_dim=np.asarray(scores.bits_per_dim, dtype=np.float64),
                complexity=None if scores.complexity is None else np.asarray(scores.complexity, dtype=np.float64),
                compressor=scores.complexity_compressor or anomaly.DEFAULT_COMPRESSOR,
                **_latent_references(scores),
            )
        )
    return _references[served]


def _latent_references(scores: ReferenceScores) -> dict[str, object]:
    """The card's ``latent`` reference scores and fitted Gaussian, or nothing when the card predates them."""
    if scores.latent is None or scores.latent_mean is None or scores.latent_std is None:
        return {}
    gaussian = anomaly.LatentGaussian(
        mean=np.asarray(scores.latent_mean, dtype=np.float64), std=np.asarray(scores.latent_std, dtype=np.float64)
    )
    return {"latent": np.asarray(scores.latent, dtype=np.float64), "latent_gaussian": gaussian}


def unavailable_reason(card: ModelCard, refs: References | None, score: ScoreName) -> str | None:
    """Why ``score`` cannot be computed for this model, or ``None`` when it can."""
    if score in ("complexity", "combined") and not card.is_image:
        return f"{score} needs 8-bit images; model {card.name!r} is a vector model"
    exported = f"exported {card.created_at}" if card.created_at else "exported"
    if refs is None:
        return (
            f"reference scores for {score!r} missing from card of model {card.name!r} ({exported} without "
            f"reference_scores); {REEXPORT}"
        )
    if score == "complexity" and refs.complexity is None:
        return (
            f"reference scores for 'complexity' missing from card of model {card.name!r} ({exported}, before "
            f"cards stored complexity references); {REEXPORT}, or choose score 'nll' or 'typicality'"
        )
    if score == "latent" and (refs.latent is None or refs.latent_gaussian is None):
        return (
            f"reference scores for 'latent' missing from card of model {card.name!r} ({exported}, before "
            f"cards stored latent references); {REEXPORT}, or choose score 'nll' or 'typicality'"
        )
    if score == "combined" and (refs.complexity is None or refs.latent is None):
        return (
            f"reference scores for 'combined' (of 'complexity' and 'latent') missing from card of model "
            f"{card.name!r} ({exported}, before cards stored both); {REEXPORT}, or choose score 'nll' or 'typicality'"
        )
    if score == "typicality" and refs.bits_per_dim.size < 2:
        return f"typicality needs at least 2 reference scores; the card of model {card.name!r} has 1"
    return None


def require(card: ModelCard, refs: References | None, score: ScoreName) -> None:
    """Raise when the score that decides a request cannot be computed.

    Raises:
        InvalidInputError: ``complexity`` asked of a vector model (422).
        ReferenceMissingError: the card lacks the reference scores the score needs (409).
    """
    reason = unavailable_reason(card, refs, score)
    if reason is None:
        return
    if score in ("complexity", "combined") and not card.is_image:
        raise InvalidInputError(
            f"score: expected 'nll', 'latent' or 'typicality' for vector model {card.name!r}, got {score!r}"
        )
    raise ReferenceMissingError(reason)


def _item_scores(calibrated: anomaly.Calibrated, compressor: str | None = None) -> ItemScores:
    return ItemScores.model_construct(
        values=calibrated.values.tolist(),
        percentile=calibrated.percentile.tolist(),
        p_value=calibrated.p_value.tolist(),
        is_anomaly=calibrated.is_anomaly.tolist(),
        threshold=calibrated.threshold,
        compressor=compressor,
    )


async def score_batch(
    served: ServedModel, x: torch.Tensor, latents: torch.Tensor, bits_per_dim: torch.Tensor, fpr: float
) -> AnomalyScores:
    """Every score the model can give for items ``x`` ``(N, *shape)`` with latents ``(N, D)`` and bits/dim ``(N,)``.

    Scores the card has no reference for are listed under ``unavailable`` with the reason.
    """
    card = served.card
    refs = references(served)
    bits = bits_per_dim.detach().cpu().numpy().astype(np.float64)
    scores: dict[str, ItemScores] = {}
    unavailable: dict[str, str] = {}
    typicality = None
    part_p_values: dict[str, np.ndarray] = {}  # complexity and latent (computed first), which combined combines
    for score in anomaly.SCORES:
        reason = unavailable_reason(card, refs, score)
        if reason is not None:
            unavailable[score] = reason
            continue
        assert refs is not None, "unavailable_reason covers missing references"
        if score == "nll":
            scores["nll"] = _item_scores(anomaly.calibrate(bits, refs.bits_per_dim, fpr))
        elif score == "complexity":
            assert refs.complexity is not None, "unavailable_reason covers a missing complexity reference"
            values = await _complexity(bits, x, refs.compressor)
            calibrated = anomaly.calibrate(values, refs.complexity, fpr)
            part_p_values["complexity"] = calibrated.p_value
            scores["complexity"] = _item_scores(calibrated, refs.compressor)
        elif score == "latent":
            assert refs.latent is not None and refs.latent_gaussian is not None, "unavailable_reason covers it"
            calibrated = anomaly.calibrate(anomaly.latent_scores(latents, refs.latent_gaussian), refs.latent, fpr)
            part_p_values["latent"] = calibrated.p_value
            scores["latent"] = _item_scores(calibrated)
        elif score == "combined":
            assert refs.combined is not None, "unavailable_reason covers missing complexity or latent references"
            values = anomaly.fisher_statistic([part_p_values[part] for part in anomaly.COMBINED_PARTS])
            scores["combined"] = _item_scores(anomaly.calibrate(values, refs.combined, fpr))
        else:
            entropy, bootstrap = refs.typicality(len(bits))
            test = anomaly.typicality_test(bits, entropy, bootstrap, fpr)
            typicality = TypicalityScore.model_construct(
                batch_size=test.batch_size,
                mean_nll=test.mean_nll,
                entropy=test.entropy,
                value=float(test.calibrated.values[0]),
                percentile=float(test.calibrated.percentile[0]),
                p_value=float(test.calibrated.p_value[0]),
                is_anomaly=bool(test.calibrated.is_anomaly[0]),
                threshold=test.calibrated.threshold,
                bootstrap_draws=int(bootstrap.size),
            )
    reference = None if refs is None else ReferenceInfo.model_construct(split=refs.split, size=refs.bits_per_dim.size)
    return AnomalyScores.model_construct(
        fpr=fpr, scores=scores, typicality=typicality, reference=reference, unavailable=unavailable
    )


async def _complexity(bits: np.ndarray, x: torch.Tensor, compressor: Compressor) -> np.ndarray:
    """Complexity scores, compressed off the event loop only when that is worth a thread hop.

    A 28×28 PNG takes ~80 µs; handing it to a thread costs more latency than that, so small requests are
    compressed inline and only large ones (compression releases the GIL) go to a worker thread.
    """
    if x[0].numel() * len(x) <= INLINE_COMPRESSION_PIXELS:
        return anomaly.complexity_scores(bits, x, compressor)
    return await asyncio.to_thread(anomaly.complexity_scores, bits, x, compressor)


def decision(result: AnomalyScores, score: ScoreName, count: int) -> list[bool]:
    """``is_anomaly`` per item by ``score`` (typicality flags the whole batch together)."""
    if score == "typicality":
        assert result.typicality is not None, "require() checked that typicality is available"
        return [result.typicality.is_anomaly] * count
    return list(result.scores[score].is_anomaly)


def _gradient_maps(runner: ModelRunner, x: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Executor side: ``d log p / dx`` at the scored points, as 8-bit maps and their scales."""
    gradients = [
        anomaly.log_likelihood_gradient(runner.encode, runner.log_likelihood, runner.scoring_input(part))
        for part in x.split(chunk)
    ]
    return anomaly.saliency_maps(torch.cat(gradients))


async def explain(
    served: ServedModel, executor: Executor, x: torch.Tensor, deadline: float, chunk: int
) -> tuple[list[str], list[float]]:
    """Where each image loses likelihood: base64 PNGs of ``|d log p / dx|`` and each map's maximum.

    Runs on the device's executor thread (outside the batcher: one request's items, ``chunk`` at a time) with
    autograd enabled, through the same TorchScript module that scores the items.

    Raises:
        DeadlineExceededError: the request's deadline passed first.
    """
    assert served.runner is not None, "only ready models are served"
    loop = asyncio.get_running_loop()
    work = loop.run_in_executor(executor, _gradient_maps, served.runner, x, chunk)
    try:
        maps, scale = await asyncio.wait_for(work, timeout=max(deadline - loop.time(), 0.0))
    except asyncio.TimeoutError as exc:
        raise DeadlineExceededError(
            f"request to model {served.name!r} expected to finish within the request timeout, got no explanation "
            "in time"
        ) from exc
    return encode_png_base64(maps), scale.tolist()
