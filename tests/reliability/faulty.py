"""A TorchScript artifact that fails on purpose: a whole batch raises, or turns NaN, when a sentinel is in it.

The module is a valid 2-D flow (``z = 2 x``) that passes the service's checksum, method and warm-up checks; it
misbehaves only for batches holding a marked value, so a test decides which batch breaks:

* ``RAISE_SENTINEL`` anywhere in the batch: ``encode``/``decode``/``log_prob`` raise;
* ``NAN_SENTINEL`` anywhere in the batch: every output row of the batch is NaN (a model bug, not the input's).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

RAISE_SENTINEL = 1234.5
NAN_SENTINEL = -1234.5
SCALE = 2.0


class FaultyFlow(torch.nn.Module):
    """``z = SCALE * x`` on ``(B, 2)``, breaking the whole batch when a sentinel appears in it."""

    def __init__(self) -> None:
        super().__init__()
        # Attributes, not globals: TorchScript compiles methods and cannot close over module-level floats.
        self.raise_sentinel = RAISE_SENTINEL
        self.nan_sentinel = NAN_SENTINEL
        self.scale = SCALE
        self.log_det = 2.0 * math.log(SCALE)  # log |det dz/dx| for D = 2
        self.log_2pi = math.log(2.0 * math.pi)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x == self.raise_sentinel).any()):
            raise RuntimeError("injected fault: the batch holds the raise sentinel")
        if bool((x == self.nan_sentinel).any()):
            return torch.full_like(x, float("nan"))
        return x

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._check(x)
        log_det = torch.full((x.shape[0],), self.log_det) + 0.0 * x.sum(dim=1)
        return self.scale * x, log_det

    @torch.jit.export
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._check(z) / self.scale

    @torch.jit.export
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, log_det = self.encode(x)
        return -0.5 * (z * z).sum(dim=1) - self.log_2pi + log_det

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.log_prob(x)


def write_faulty_artifact(directory: Path) -> Path:
    """``directory/model.ts`` (scripted ``FaultyFlow``) and a ``card.json`` per docs/artifact.md."""
    directory.mkdir(parents=True, exist_ok=True)
    module_path = directory / "model.ts"
    torch.jit.save(torch.jit.script(FaultyFlow().eval()), str(module_path))
    card = {
        "format_version": 1,
        "name": directory.name,
        "version": "0.0.1",
        "flow_type": "NVPNet",
        "data_kind": "vector",
        "shape": [2],
        "dimension": 2,
        "value_range": None,
        "dataset": {"name": "none", "splits": {"train": 0, "val": 0, "test": 0}},
        "metrics": {"test_bits_per_dim": 0.0, "test_nll_nats": 0.0},
        "num_parameters": 0,
        "training_config": {"note": "fault-injection test artifact"},
        "torch_version": torch.__version__,
        "created_at": "2026-11-28T12:00:00Z",
        "sha256": hashlib.sha256(module_path.read_bytes()).hexdigest(),
        "reference_scores": {"split": "val", "log_likelihood": [-2.0] * 50, "bits_per_dim": [1.4] * 50},
    }
    (directory / "card.json").write_text(json.dumps(card, indent=2))
    return directory
