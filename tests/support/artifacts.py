"""Tiny artifacts for the service tests: untrained flows exported with ``models.export.to_torchscript``.

The card comes from the contract's own ``artifact.build_card`` (the service never imports ``models``; tests may).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

import artifact
import models
from models.export import to_torchscript


def write_artifact(
    directory: Path,
    flow: torch.nn.Module,
    *,
    flow_type: str,
    data_kind: str,
    shape: list[int],
    value_range: list[float] | None,
    card_overrides: dict[str, Any] | None = None,
) -> Path:
    """Export ``flow`` to ``directory/model.ts`` and write a matching ``card.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    module_path = directory / "model.ts"
    torch.manual_seed(0)
    torch.jit.save(to_torchscript(flow), str(module_path))
    card = artifact.build_card(
        name=directory.name,
        version="0.0.1",
        flow_type=flow_type,
        data_kind=data_kind,  # type: ignore[arg-type]
        shape=shape,
        sha256=hashlib.sha256(module_path.read_bytes()).hexdigest(),
        dataset={"name": "none", "splits": {"train": 0, "val": 0, "test": 0}},
        metrics={"test_bits_per_dim": 0.0, "test_nll_nats": 0.0},
        reference_scores={"split": "val", "log_likelihood": [-1.0] * 50, "bits_per_dim": [1.0] * 50},
        num_parameters=sum(p.numel() for p in flow.parameters()),
        training_config={"note": "untrained test artifact"},
        torch_version=torch.__version__,
        created_at="2026-11-28T12:00:00Z",
    )
    card["value_range"] = value_range
    card.update(card_overrides or {})
    (directory / "card.json").write_text(json.dumps(card, indent=2))
    return directory


def image_flow(seed: int = 0) -> torch.nn.Module:
    """A 1x8x8 RealNVP (two scales, 8 channels, one block), perturbed so it is not the identity at init."""
    torch.manual_seed(seed)
    flow = models.RealNVP(in_channels=1, image_size=8, num_scales=2, mid_channels=8, num_blocks=1)
    _perturb(flow)
    return flow.eval()


def vector_flow(seed: int = 0) -> torch.nn.Module:
    """A 2-D NVPNet (4 couplings of a 16-unit MLP), perturbed likewise."""
    torch.manual_seed(seed)
    flow = models.NVPNet(dim=2, hidden_dim=16, depth=4)
    _perturb(flow)
    return flow.eval()


def _perturb(flow: torch.nn.Module) -> None:
    # Zero-initialised output layers make a fresh coupling the identity; small noise makes rows interact
    # with the weights so that batching bugs would show.
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))


def build_store(root: Path) -> Path:
    """``root/digits`` (image, 1x8x8) and ``root/moons`` (vector, D=2)."""
    write_artifact(
        root / "digits", image_flow(), flow_type="RealNVP", data_kind="image", shape=[1, 8, 8], value_range=[0, 255]
    )
    write_artifact(root / "moons", vector_flow(), flow_type="NVPNet", data_kind="vector", shape=[2], value_range=None)
    return root
