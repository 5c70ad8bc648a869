"""The artifact contract between ``training`` (which writes ``model_store/NAME/``) and ``service`` (which reads it).

A leaf package: it imports neither ``models``, ``training`` nor ``service``, and no torch. It owns the card
schema and format version, the file names, the methods a module must offer, the density measure and the maths
of the reference scores that calibrate the anomaly scores (docs/artifact.md, docs/anomaly.md).
"""

from artifact import scores
from artifact.card import DatasetInfo, ModelCard, ReferenceScores, build_card, read_card
from artifact.contract import (
    CARD_FILE,
    DEQUANTIZATION_OFFSET,
    FORMAT_VERSION,
    MAX_REFERENCE_SCORES,
    MODULE_FILE,
    REQUIRED_METHODS,
    ArtifactError,
    bits_per_dim,
)
from artifact.references import reference_scores

__all__ = [
    "CARD_FILE",
    "DEQUANTIZATION_OFFSET",
    "FORMAT_VERSION",
    "MAX_REFERENCE_SCORES",
    "MODULE_FILE",
    "REQUIRED_METHODS",
    "ArtifactError",
    "DatasetInfo",
    "ModelCard",
    "ReferenceScores",
    "bits_per_dim",
    "build_card",
    "read_card",
    "reference_scores",
    "scores",
]
