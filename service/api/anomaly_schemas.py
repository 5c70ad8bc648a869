"""Request and response bodies of ``POST /anomaly`` and the score fields ``POST /log-likelihood`` adds."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from artifact.scores import Calibrated, ScoreName
from service.api.schemas import EXAMPLE_PNG, InputsRequest, LogLikelihoodResponse
from service.scoring.scores import Report

_FPR_DESCRIPTION = "False-positive rate in (0, 1) at which items are flagged; default: the ANOMALY_FPR setting."


class AnomalyRequest(InputsRequest):
    """Items to score (``inputs`` or ``images``, as ``/log-likelihood``) and how to decide."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "mnist", "images": [EXAMPLE_PNG], "fpr": 0.01, "explain": True},
                {"model": "moons", "inputs": [[0.5, -0.25], [4.0, 4.0]], "score": "nll", "fpr": 0.05},
            ]
        }
    )

    fpr: float | None = Field(default=None, gt=0, lt=1, allow_inf_nan=False, description=_FPR_DESCRIPTION)
    score: ScoreName | None = Field(
        default=None,
        description="The score that decides `is_anomaly`: `combined` (image models' default: Fisher's "
        "combination of the `complexity`, `latent` and `coarse` p-values; `parts` names those a card has), `nll` "
        "(vector models' default), `complexity` (bits/dim minus compressed length), `latent` (the latent's "
        "log-density under a Gaussian fitted to held-out latents), `coarse` (the log-density of the coarsest "
        "scale's latent under the prior) or `typicality` (the whole batch, flagged together).",
    )
    explain: bool = Field(
        default=False, description="Also return a PNG per image of |d log p / dx| (where the likelihood is lost)."
    )


class ItemScores(BaseModel):
    """One score per item, placed against the card's reference scores (higher = more anomalous)."""

    values: list[float] = Field(
        description="The scores: bits/dim for `nll`, S(x) in bits/dim for `complexity`, nats/dim for `latent` "
        "and `coarse`, −Σ log p over its `parts` for `combined`."
    )
    percentile: list[float] = Field(description="Percentage of reference scores strictly below each score.")
    p_value: list[float] = Field(description="Conformal p-value (1 + #{ref ≥ s}) / (n + 1), in (0, 1].")
    is_anomaly: list[bool] = Field(description="p_value ≤ fpr.")
    threshold: float | None = Field(
        description="Scores strictly above it are flagged; null when fpr < 1/(n+1): n references cannot flag any."
    )
    compressor: str | None = Field(default=None, description="`complexity` only: the compressor measuring L(x).")
    parts: list[str] | None = Field(
        default=None, description="`combined` only: the scores whose p-values it combines (the card's)."
    )


class TypicalityScore(BaseModel):
    """Typicality of the whole batch: ``|mean bits/dim − H|`` against a seeded bootstrap of reference batches."""

    batch_size: int
    mean_nll: float = Field(description="Mean bits/dim of the items.")
    entropy: float = Field(description="H: mean bits/dim of the reference items.")
    value: float = Field(description="|mean_nll − entropy|.")
    percentile: float
    p_value: float = Field(description="(1 + #{bootstrap ≥ value}) / (draws + 1).")
    is_anomaly: bool
    threshold: float | None
    bootstrap_draws: int


class ReferenceInfo(BaseModel):
    """Where the reference scores come from."""

    split: str = Field(description="The held-out split of the card's `reference_scores` (never trained on).")
    size: int


class AnomalyScores(BaseModel):
    """Every score of a batch of items; the scores whose reference the card lacks are under ``unavailable``."""

    fpr: float
    scores: dict[str, ItemScores]
    typicality: TypicalityScore | None
    reference: ReferenceInfo | None
    unavailable: dict[str, str] = Field(description="Score → why it could not be computed for this model.")


class AnomalyDecision(BaseModel):
    """What ``/anomaly`` decided, per item."""

    model_config = ConfigDict(protected_namespaces=())

    model: str
    score: ScoreName = Field(description="The score that decided `is_anomaly`.")
    is_anomaly: list[bool] = Field(description="Per item, by `score` at `fpr`.")


class AnomalyResponse(AnomalyScores, AnomalyDecision):
    """Anomaly scores per item, the decision, and optionally where each image loses likelihood."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": "mnist",
                    "score": "combined",
                    "is_anomaly": [True],
                    "fpr": 0.01,
                    "scores": {
                        "nll": {
                            "values": [87.862],
                            "percentile": [100.0],
                            "p_value": [0.001996],
                            "is_anomaly": [True],
                            "threshold": 1.802,
                        },
                        "complexity": {
                            "values": [79.525],
                            "percentile": [100.0],
                            "p_value": [0.001996],
                            "is_anomaly": [True],
                            "threshold": -0.026,
                            "compressor": "png",
                        },
                        "latent": {
                            "values": [2863.847],
                            "percentile": [100.0],
                            "p_value": [0.001996],
                            "is_anomaly": [True],
                            "threshold": 1.013,
                        },
                        "combined": {
                            "values": [12.433],
                            "percentile": [100.0],
                            "p_value": [0.001996],
                            "is_anomaly": [True],
                            "threshold": 6.953,
                        },
                    },
                    "typicality": {
                        "batch_size": 1,
                        "mean_nll": 87.862,
                        "entropy": 1.058,
                        "value": 86.804,
                        "percentile": 100.0,
                        "p_value": 0.0005,
                        "is_anomaly": True,
                        "threshold": 0.817,
                        "bootstrap_draws": 2000,
                    },
                    "reference": {"split": "val", "size": 500},
                    "unavailable": {},
                    "explanations": [EXAMPLE_PNG],
                    "explanation_scale": [433.4],
                }
            ]
        },
    )

    explanations: list[str] | None = Field(
        default=None, description="`explain`: base64 PNG per image, |d log p / dx| scaled to its maximum (white)."
    )
    explanation_scale: list[float] | None = Field(
        default=None, description="`explain`: the maximum of each map, in nats per intensity unit (white = this)."
    )


class ScoredLogLikelihoodResponse(AnomalyScores, LogLikelihoodResponse):
    """``/log-likelihood``: the log-likelihood per item, with its anomaly scores (docs/anomaly.md)."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": "moons",
                    "log_likelihood": [-0.649],
                    "bits_per_dim": [0.468],
                    "fpr": 0.01,
                    "scores": {
                        "nll": {
                            "values": [0.468],
                            "percentile": [73.55],
                            "p_value": [0.265],
                            "is_anomaly": [False],
                            "threshold": 2.606,
                        }
                    },
                    "typicality": {
                        "batch_size": 1,
                        "mean_nll": 0.468,
                        "entropy": 0.301,
                        "value": 0.168,
                        "percentile": 22.25,
                        "p_value": 0.778,
                        "is_anomaly": False,
                        "threshold": 2.215,
                        "bootstrap_draws": 2000,
                    },
                    "reference": {"split": "val", "size": 2000},
                    "unavailable": {
                        "complexity": "complexity needs 8-bit images; model 'moons' is a vector model",
                        "combined": "combined needs 8-bit images; model 'moons' is a vector model",
                    },
                }
            ]
        },
    )


def _item_scores(calibrated: Calibrated, compressor: str | None, parts: tuple[str, ...] | None) -> ItemScores:
    return ItemScores.model_construct(
        values=calibrated.values.tolist(),
        percentile=calibrated.percentile.tolist(),
        p_value=calibrated.p_value.tolist(),
        is_anomaly=calibrated.is_anomaly.tolist(),
        threshold=calibrated.threshold,
        compressor=compressor,
        parts=None if parts is None else list(parts),
    )


def anomaly_fields(report: Report) -> dict[str, object]:
    """The :class:`AnomalyScores` fields of a scoring report, to splice into a response."""
    typicality = None
    if report.typicality is not None:
        test = report.typicality
        typicality = TypicalityScore.model_construct(
            batch_size=test.batch_size,
            mean_nll=test.mean_nll,
            entropy=test.entropy,
            value=float(test.calibrated.values[0]),
            percentile=float(test.calibrated.percentile[0]),
            p_value=float(test.calibrated.p_value[0]),
            is_anomaly=bool(test.calibrated.is_anomaly[0]),
            threshold=test.calibrated.threshold,
            bootstrap_draws=report.bootstrap_draws,
        )
    reference = None
    if report.reference_split is not None:
        reference = ReferenceInfo.model_construct(split=report.reference_split, size=report.reference_size)
    return {
        "fpr": report.fpr,
        "scores": {
            name: _item_scores(c, report.compressors.get(name), report.combined_parts if name == "combined" else None)
            for name, c in report.scores.items()
        },
        "typicality": typicality,
        "reference": reference,
        "unavailable": report.unavailable,
    }
