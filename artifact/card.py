"""The model card (``card.json``) as docs/artifact.md defines it: its schema, how to build one, how to read one."""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from artifact.contract import CARD_FILE, FORMAT_VERSION, ArtifactError

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
    # Optional, both or none (multi-scale image flows; cards exported before it lack them): each reference item's
    # ``coarse`` score, and how many trailing coordinates of the latent the flow's coarsest scale produces.
    coarse: list[float] | None = None
    coarse_dims: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> ReferenceScores:
        count = len(self.bits_per_dim)
        for key in ("log_likelihood", "bits_per_dim", "complexity", "latent", "latent_mean", "latent_std", "coarse"):
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
        if (self.coarse is None) != (self.coarse_dims is None):
            raise ValueError("reference_scores: expected coarse and coarse_dims together, got one of them")
        if self.coarse is not None and len(self.coarse) != count:
            raise ValueError(f"reference_scores.coarse: expected {count} values, got {len(self.coarse)}")
        return self


class ModelCard(BaseModel):
    """``card.json``: what the service needs to serve a model, plus descriptive metadata.

    The keys the service relies on are required; descriptive keys are optional but type-checked when present.
    Unknown keys are kept (and shown by ``GET /models/{name}``).
    """

    model_config = ConfigDict(extra="allow", strict=True, protected_namespaces=())

    format_version: Literal[1, 2]
    name: str = Field(min_length=1)
    version: str
    # Any flow honouring the module contract can be served: the type is descriptive, not a closed list.
    flow_type: str = Field(min_length=1)
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
        if scores is not None and scores.coarse_dims is not None and scores.coarse_dims > self.dimension:
            raise ValueError(
                f"reference_scores.coarse_dims: expected at most {self.dimension} (the dimension), "
                f"got {scores.coarse_dims}"
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

    @property
    def notes(self) -> list[str]:
        """What a reader must know to compare this card's figures with others (empty for a current card)."""
        notes = []
        if self.format_version == 1 and self.is_image:
            notes.append(
                "format 1 card: metrics.test_bits_per_dim is the density at the bin centre (-log2 p(x + 0.5) / D), "
                "not the standard bits/dim of uniform dequantization; re-export the checkpoint for the standard "
                "figure (docs/artifact.md)"
            )
        scores = self.reference_scores
        two_part = scores is not None and scores.latent is not None and scores.complexity is not None
        if self.is_image and two_part and scores is not None and scores.coarse is None:
            notes.append(
                "card exported before the coarse score: the default anomaly score combined is Fisher's "
                "combination of complexity and latent only; re-export the checkpoint to add coarse (docs/anomaly.md)"
            )
        return notes

    def public_view(self) -> dict[str, Any]:
        """The card as JSON, without bulky per-sample arrays, with :attr:`notes` when there are any."""
        view = self.model_dump(mode="json", exclude=set(BULKY_KEYS), exclude_none=True)
        if self.notes:
            view["notes"] = self.notes
        return view


def read_card(directory: Path) -> ModelCard:
    """Read and validate ``directory/card.json``.

    Raises:
        ArtifactError: the file is missing, is not JSON, or breaks the card schema.
    """
    path = directory / CARD_FILE
    try:
        return ModelCard.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path}: expected a model card, got no such file") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'card'}: {err['msg'].removeprefix('Value error, ')}"
            for err in exc.errors()[:5]
        )
        raise ArtifactError(f"{path}: invalid card: {problems}") from exc


def build_card(
    *,
    name: str,
    flow_type: str,
    data_kind: Literal["image", "vector"],
    shape: list[int],
    sha256: str,
    dataset: dict[str, Any],
    metrics: dict[str, float],
    reference_scores: dict[str, Any] | None,
    num_parameters: int | None = None,
    training_config: dict[str, Any] | None = None,
    torch_version: str | None = None,
    version: str = "1.0.0",
    created_at: str | None = None,
) -> dict[str, Any]:
    """The ``card.json`` of an artifact as a plain dict, checked against :class:`ModelCard` before it is returned.

    Args:
        name: artifact name.
        flow_type: the flow's class name (descriptive).
        data_kind: ``image`` (8-bit ``[C, H, W]``) or ``vector`` (``[D]``).
        shape: one item's shape.
        sha256: hex digest of ``model.ts``.
        dataset: ``{"name": str, "splits": {"train": int, "val": int, "test": int}}``.
        metrics: at least ``test_bits_per_dim`` and ``test_nll_nats``.
        reference_scores: what :func:`artifact.reference_scores` returned, or None.
        num_parameters: trainable scalars of the flow.
        training_config: the resolved training configuration.
        torch_version: the torch that scripted the module.
        version: artifact version.
        created_at: ISO-8601 UTC time (default: now).

    Raises:
        ValueError: the card would break the schema (the message says which key).
    """
    card = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "version": version,
        "flow_type": flow_type,
        "data_kind": data_kind,
        "shape": [int(size) for size in shape],
        "dimension": math.prod(int(size) for size in shape),
        "value_range": [0, 255] if data_kind == "image" else None,
        "dataset": {"name": str(dataset["name"]), "splits": {k: int(v) for k, v in dataset["splits"].items()}},
        "metrics": {k: float(v) for k, v in metrics.items()},
        "num_parameters": num_parameters,
        "training_config": training_config or {},
        "torch_version": torch_version,
        "created_at": created_at or datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sha256": sha256,
        "reference_scores": reference_scores,
    }
    try:
        ModelCard.model_validate_json(json.dumps(card))  # as a reader will see it
    except ValidationError as exc:
        raise ValueError(f"the card of {name!r} breaks the card schema: {exc}") from exc
    return card
