"""The body of ``GET /models/{name}/drift``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from artifact.scores import ScoreName


class DriftResponse(BaseModel):
    """The model's window of recently scored items, tested against its card's reference scores."""

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": "mnist",
                    "window": 1000,
                    "horizon_s": 3600.0,
                    "items": 1000,
                    "oldest_age_s": 412.5,
                    "mean_bits_per_dim": 1.071,
                    "reference_bits_per_dim": 1.058,
                    "statistic": 0.013,
                    "p_value": 0.41,
                    "score": "combined",
                    "fpr": 0.01,
                    "flag_rate": 0.012,
                    "flagged_items": 1000,
                    "bootstrap_draws": 2000,
                }
            ]
        },
    )

    model: str
    window: int = Field(description="DRIFT_WINDOW: most items kept.")
    horizon_s: float = Field(description="DRIFT_HORIZON_S: items older than this have left the window.")
    items: int = Field(description="Items in the window now.")
    oldest_age_s: float | None = Field(description="Age of the oldest item, seconds (null when empty).")
    mean_bits_per_dim: float | None = Field(description="Mean bits/dim of the window (images at the bin centre).")
    reference_bits_per_dim: float = Field(description="H: mean bits/dim of the card's reference items.")
    statistic: float | None = Field(description="|mean_bits_per_dim − H|.")
    p_value: float | None = Field(
        description="Typicality p-value of the window against a two-sample bootstrap of the references (null "
        "under 2 items); small means the recent items are not like the data the model was checked on."
    )
    score: ScoreName = Field(description="The default anomaly score, whose flags make `flag_rate`.")
    fpr: float = Field(description="ANOMALY_FPR: the rate at which `flag_rate` counts an item flagged.")
    flag_rate: float | None = Field(description="Fraction of the items flagged by `score` (expected ≈ fpr).")
    flagged_items: int = Field(description="Items with a `score` p-value (those `flag_rate` is over).")
    bootstrap_draws: int
