"""The model card (``card.json``) as docs/artifact.md defines it, validated strictly."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Keys dropped from the public view of a card: per-sample arrays that can hold thousands of numbers.
BULKY_KEYS = ("reference_scores",)


class DatasetInfo(BaseModel):
    """Where the training data came from."""

    model_config = ConfigDict(extra="allow")

    name: str
    splits: dict[str, int] = Field(default_factory=dict)


class ReferenceScores(BaseModel):
    """Per-sample scores of held-out data, as ``log_prob`` returns them."""

    model_config = ConfigDict(extra="allow")

    split: str
    log_likelihood: list[float]
    bits_per_dim: list[float]
    # Optional (cards exported before the anomaly scores lack them; docs/anomaly.md): Serrà et al.'s
    # S = bits/dim − L per item, and the compressor that measured L.
    complexity: list[float] | None = None
    complexity_compressor: Literal["png", "deflate"] | None = None
    # Optional, all three or none: the diagonal Gaussian fitted to the reference latents (D values each,
    # latent_std > 0) and each reference item's ``latent`` score under it (docs/anomaly.md).
    latent: list[float] | None = None
    latent_mean: list[float] | None = None
    latent_std: list[float] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ReferenceScores:
        count = len(self.bits_per_dim)
        for key in ("log_likelihood", "bits_per_dim", "complexity", "latent", "latent_mean", "latent_std"):
            if not all(math.isfinite(value) for value in getattr(self, key) or ()):
                raise ValueError(f"reference_scores.{key}: expected finite numbers, got NaN or Inf")
        if len(self.log_likelihood) != count:
            raise ValueError(
                f"reference_scores: expected as many log_likelihood as bits_per_dim values ({count}), "
                f"got {len(self.log_likelihood)}"
            )
        if self.complexity is not None and (len(self.complexity) != count or self.complexity_compressor is None):
            raise ValueError(
                f"reference_scores.complexity: expected {count} values and a complexity_compressor, "
                f"got {len(self.complexity)} values and compressor {self.complexity_compressor!r}"
            )
        latent = (self.latent, self.latent_mean, self.latent_std)
        if any(part is not None for part in latent):
            if any(part is None for part in latent):
                raise ValueError("reference_scores: expected latent, latent_mean and latent_std together, got some")
            assert self.latent is not None and self.latent_mean is not None and self.latent_std is not None
            if len(self.latent) != count or len(self.latent_mean) != len(self.latent_std):
                raise ValueError(
                    f"reference_scores.latent: expected {count} values and latent_mean, latent_std of equal length, "
                    f"got {len(self.latent)}, {len(self.latent_mean)} and {len(self.latent_std)}"
                )
            if not all(value > 0 for value in self.latent_std):
                raise ValueError("reference_scores.latent_std: expected positive values, got zero or negative")
        return self


class ModelCard(BaseModel):
    """``card.json``: what the service needs to serve a model, plus descriptive metadata.

    The keys the service relies on are required; descriptive keys are optional but type-checked when present.
    Unknown keys are kept (and shown by ``GET /models/{name}``).
    """

    model_config = ConfigDict(extra="allow", strict=True, protected_namespaces=())

    format_version: Literal[1]
    name: str = Field(min_length=1)
    version: str
    flow_type: Literal["RealNVP", "NVPNet", "PiecewiseLinearFlow"]
    data_kind: Literal["image", "vector"]
    shape: list[int] = Field(min_length=1, max_length=3)
    dimension: int = Field(ge=1)
    value_range: tuple[float, float] | None
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    dataset: DatasetInfo | None = None
    metrics: dict[str, Any] | None = None
    num_parameters: int | None = None
    training_config: dict[str, Any] | None = None
    torch_version: str | None = None
    created_at: str | None = None
    reference_scores: ReferenceScores | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if any(size < 1 for size in self.shape):
            raise ValueError(f"shape: expected positive sizes, got {self.shape}")
        if math.prod(self.shape) != self.dimension:
            raise ValueError(f"dimension: expected prod(shape) = {math.prod(self.shape)}, got {self.dimension}")
        scores = self.reference_scores
        if scores is not None and scores.latent_mean is not None and len(scores.latent_mean) != self.dimension:
            raise ValueError(
                f"reference_scores.latent_mean: expected {self.dimension} values (the dimension), "
                f"got {len(scores.latent_mean)}"
            )
        if self.data_kind == "image":
            if len(self.shape) != 3 or self.shape[0] not in (1, 3):
                raise ValueError(f"shape: expected [C, H, W] with C in (1, 3) for an image, got {self.shape}")
            if self.value_range is None or tuple(self.value_range) != (0, 255):
                raise ValueError(f"value_range: expected [0, 255] for an image, got {self.value_range}")
        else:
            if len(self.shape) != 1:
                raise ValueError(f"shape: expected [D] for a vector model, got {self.shape}")
            if self.value_range is not None and not self.value_range[0] < self.value_range[1]:
                raise ValueError(f"value_range: expected [low, high] with low < high, got {self.value_range}")
        return self

    @property
    def is_image(self) -> bool:
        """Whether items are 8-bit images ``(C, H, W)`` rather than float vectors ``(D,)``."""
        return self.data_kind == "image"

    def public_view(self) -> dict[str, Any]:
        """The card as JSON, without bulky per-sample arrays."""
        return self.model_dump(mode="json", exclude=set(BULKY_KEYS), exclude_none=True)
