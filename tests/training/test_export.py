"""Export: the artifact of docs/artifact.md, verified before it exists; broken flows are refused."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from models import Flow, NVPNet, PiecewiseLinearFlow, RealNVP
from models.base import Transform
from models.flow import standard_normal_log_prob
from training import export as export_module
from training.export import ExportError, export_artifact
from training.train import fit

from .conftest import image_config, run_cli

DATASET = {"name": "toy", "splits": {"train": 10, "val": 8, "test": 8}}
METRICS = {"test_bits_per_dim": 1.5, "test_nll_nats": 2.0}
CARD_TYPES = {
    "format_version": int,
    "name": str,
    "version": str,
    "flow_type": str,
    "data_kind": str,
    "shape": list,
    "dimension": int,
    "dataset": dict,
    "metrics": dict,
    "num_parameters": int,
    "training_config": dict,
    "torch_version": str,
    "created_at": str,
    "sha256": str,
    "reference_scores": dict,
}


def perturbed(flow: Flow) -> Flow:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return flow.eval()


def flows_and_references():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8)
    return {
        "RealNVP": (perturbed(RealNVP(1, 8, 2, 4, 1)), images),
        "NVPNet": (perturbed(NVPNet(2, 16, 4)), torch.randn(12, 2)),
        "PiecewiseLinearFlow": (perturbed(PiecewiseLinearFlow(8, -3.0, 3.0)), 2 * torch.randn(12, 1)),
    }


@pytest.mark.parametrize("flow_type", ["RealNVP", "NVPNet", "PiecewiseLinearFlow"])
def test_export_writes_the_documented_artifact(tmp_path, flow_type):
    flow, reference = flows_and_references()[flow_type]
    card = export_artifact(
        flow,
        tmp_path / "store" / "toy",
        name="toy",
        dataset=DATASET,
        metrics=METRICS,
        reference=reference,
        config={"seed": 0},
    )
    folder = tmp_path / "store" / "toy"
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["toy"]  # no temporary folder left
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.ts"]
    on_disk = json.loads((folder / "card.json").read_text())
    assert on_disk == card
    for key, kind in CARD_TYPES.items():
        assert isinstance(card[key], kind), key
    assert card["flow_type"] == flow_type
    assert card["dimension"] == math.prod(card["shape"]) == flow.dim
    assert card["value_range"] == ([0, 255] if flow_type == "RealNVP" else None)
    assert card["sha256"] == hashlib.sha256((folder / "model.ts").read_bytes()).hexdigest()
    assert card["created_at"].endswith("Z") and card["torch_version"] == torch.__version__
    module = torch.jit.load(str(folder / "model.ts"))
    scores = card["reference_scores"]
    assert scores["split"] == "val" and len(scores["log_likelihood"]) == len(reference)
    with torch.no_grad():
        log_prob = module.log_prob(reference.float())
        expected = torch.tensor(scores["log_likelihood"], dtype=torch.float64)
        assert torch.allclose(expected, log_prob.double(), atol=1e-4, rtol=1e-5)
        bits = -log_prob.double() / (flow.dim * math.log(2))
        assert torch.allclose(torch.tensor(scores["bits_per_dim"], dtype=torch.float64), bits, atol=1e-5)
        # The contract's identity: log_prob(x) = log N(encode(x').z) + log_det, x' = x + 0.5 for images.
        shifted = reference.float() + (0.5 if flow_type == "RealNVP" else 0.0)
        z, log_det = module.encode(shifted)
        assert torch.allclose(log_prob, standard_normal_log_prob(z) + log_det, atol=1e-3)


def test_export_replaces_an_existing_artifact_only_when_verified(tmp_path, monkeypatch):
    flow, reference = flows_and_references()["NVPNet"]
    target = tmp_path / "toy"
    first = export_artifact(flow, target, name="toy", dataset=DATASET, metrics=METRICS, reference=reference)
    other = perturbed(NVPNet(2, 16, 4))
    second = export_artifact(
        other, target, name="toy", dataset=DATASET, metrics=METRICS, reference=reference, version="2.0.0"
    )
    assert second["version"] == "2.0.0" and second["sha256"] != first["sha256"]
    assert json.loads((target / "card.json").read_text())["version"] == "2.0.0"

    monkeypatch.setattr(export_module, "to_torchscript", lambda f: torch.jit.script(perturbed(NVPNet(2, 16, 4))))
    with pytest.raises(ExportError):
        export_artifact(flow, target, name="toy", dataset=DATASET, metrics=METRICS, reference=reference)
    assert json.loads((target / "card.json").read_text())["sha256"] == second["sha256"]  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


def test_export_refuses_a_module_that_differs_from_eager(tmp_path, monkeypatch):
    flow, reference = flows_and_references()["NVPNet"]
    different = NVPNet(2, 16, 4)
    different.load_state_dict(flow.state_dict())
    with torch.no_grad():
        different.transform.transforms[0].net.t[0].bias.add_(0.01)  # a small but real difference
    monkeypatch.setattr(export_module, "to_torchscript", lambda f: torch.jit.script(different.eval()))
    with pytest.raises(ExportError, match="TorchScript log_prob differs from the eager flow by"):
        export_artifact(flow, tmp_path / "toy", name="toy", dataset=DATASET, metrics=METRICS, reference=reference)
    assert not any(tmp_path.iterdir())


class WrongInverse(Transform):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 2.0 * x, torch.full((x.shape[0],), x.shape[1] * math.log(2.0))

    @torch.jit.export
    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y / 2.01


class MixesRows(Transform):
    """y = x + 0.1 · mean over the batch: invertible for a given batch, but rows depend on each other."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + 0.1 * x.mean(dim=0, keepdim=True), torch.zeros(x.shape[0])

    @torch.jit.export
    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y - (0.1 / 1.1) * y.mean(dim=0, keepdim=True)


@pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning")
def test_export_refuses_a_bad_round_trip(tmp_path):
    with pytest.raises(ExportError, match=r"round trip decode\(encode\(x\)\) misses x by"):
        export_artifact(
            Flow(WrongInverse(), [2], "vector"),
            tmp_path / "toy",
            name="toy",
            dataset=DATASET,
            metrics=METRICS,
            reference=torch.randn(12, 2),
        )
    assert not any(tmp_path.iterdir())


@pytest.mark.filterwarnings("ignore:The TorchScript type system:UserWarning")
def test_export_refuses_rows_that_depend_on_each_other(tmp_path):
    with pytest.raises(ExportError, match="batch rows are not independent"):
        export_artifact(
            Flow(MixesRows(), [2], "vector"),
            tmp_path / "toy",
            name="toy",
            dataset=DATASET,
            metrics=METRICS,
            reference=torch.randn(12, 2),
        )
    assert not any(tmp_path.iterdir())


def test_export_checks_its_inputs(tmp_path):
    flow, reference = flows_and_references()["NVPNet"]
    with pytest.raises(ExportError, match=r"expected a finite number for metrics\['test_nll_nats'\]"):
        export_artifact(
            flow, tmp_path / "a", name="a", dataset=DATASET, metrics={"test_bits_per_dim": 1.0}, reference=reference
        )
    with pytest.raises(ExportError, match=r"expected reference items of shape \(N >= 2, \[2\]\)"):
        export_artifact(flow, tmp_path / "a", name="a", dataset=DATASET, metrics=METRICS, reference=torch.randn(5, 3))


def test_cli_export_evaluate_and_sample_a_checkpoint(tmp_path):
    last = fit(image_config(tmp_path, "train.epochs=1", "train.sample_every=0"))
    store = tmp_path / "model_store" / "tiny"
    result = run_cli("export", "--checkpoint", str(last), "--out", str(store), "--iw-samples", "2")
    summary = json.loads(result.stdout)
    card = json.loads((store / "card.json").read_text())
    assert summary["sha256"] == card["sha256"] and card["name"] == "tiny"
    assert card["dataset"] == {"name": "array", "splits": {"train": 472, "val": 64, "test": 64}}
    assert len(card["reference_scores"]["log_likelihood"]) == 64
    assert card["training_config"]["model"]["type"] == "RealNVP"
    assert card["metrics"]["test_iw_samples"] == 2 and math.isfinite(card["metrics"]["test_iw_bits_per_dim"])
    evaluated = json.loads(run_cli("evaluate", "--checkpoint", str(last), "--split", "test").stdout)
    assert evaluated["bits_per_dim"] == pytest.approx(card["metrics"]["test_bits_per_dim"], rel=1e-6)
    grid = tmp_path / "grid.png"
    run_cli("sample", "--checkpoint", str(last), "--n", "16", "--temperature", "0.7", "--out", str(grid))
    from PIL import Image

    with Image.open(grid) as image:
        assert image.size[0] == image.size[1] > 8 * 4


def test_refresh_card_recomputes_the_standard_figures_from_the_module(tmp_path):
    """An older card (format 1, bin-centre headline) becomes a current one with export's own figures."""
    from training.export import export_checkpoint, refresh_card

    last = fit(image_config(tmp_path, "train.epochs=1", "train.sample_every=0"))
    store = tmp_path / "tiny"
    exported = export_checkpoint(last, store, iw_samples=2)["metrics"]
    old = json.loads((store / "card.json").read_text())
    old["format_version"] = 1
    old["metrics"] = {"test_bits_per_dim": exported["test_bin_centre_bits_per_dim"], "test_nll_nats": 1.0}
    (store / "card.json").write_text(json.dumps(old))
    refreshed = refresh_card(store, iw_samples=2)
    assert refreshed["format_version"] == 2 and refreshed["sha256"] == old["sha256"]
    for key in ("test_bits_per_dim", "test_bin_centre_bits_per_dim", "test_iw_bits_per_dim", "val_bits_per_dim"):
        assert refreshed["metrics"][key] == pytest.approx(exported[key], rel=1e-5), key
    assert refreshed["metrics"]["test_bits_per_dim"] > refreshed["metrics"]["test_bin_centre_bits_per_dim"]
    (store / "model.ts").write_bytes((store / "model.ts").read_bytes() + b"x")
    with pytest.raises(Exception, match="checksum"):
        refresh_card(store)
