"""The constants of the artifact format (docs/artifact.md): file names, required methods, the density measure.

Both sides read these: ``training`` writes an artifact to them, ``service`` refuses one that breaks them.
"""

from __future__ import annotations

import math
from typing import TypeVar

# 2: ``metrics.test_bits_per_dim`` of an image model is the standard dequantized measure (docs/artifact.md);
# in format 1 it was the density at the bin centre. Readers accept both.
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
CARD_FILE = "card.json"
MODULE_FILE = "model.ts"
# What every exported TorchScript module offers; see docs/artifact.md for their shapes.
REQUIRED_METHODS = ("encode", "decode", "log_prob")
# Image models score an 8-bit pixel at the centre of its bin: ``encode(x + 0.5)`` (docs/artifact.md).
DEQUANTIZATION_OFFSET = 0.5
# Most held-out items whose scores a card stores.
MAX_REFERENCE_SCORES = 10_000
LN2 = math.log(2.0)

Numbers = TypeVar("Numbers")


class ArtifactError(Exception):
    """An artifact breaks the contract; the message names the offending file."""


def bits_per_dim(log_likelihood: Numbers, dimension: int) -> Numbers:
    """``-log_likelihood / (D ln 2)``: nats of a ``D``-dimensional item to bits per dimension.

    Works on floats, numpy arrays and torch tensors alike (elementwise).
    """
    return -log_likelihood / (dimension * LN2)  # type: ignore[operator, return-value]
