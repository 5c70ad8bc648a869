"""Write a ``model_store/NAME/`` artifact (``model.ts`` + ``card.json``, see ``docs/artifact.md``) and verify it.

``export_artifact`` scripts the flow (``models.export.to_torchscript``), writes both files into a temporary
folder next to the destination, reloads the module from disk and checks it before renaming the folder into
place. It refuses (``ExportError``) an artifact whose

- TorchScript outputs differ from the eager flow (``encode``, ``decode``, ``log_prob``) by more than
  ``EAGER_TOLERANCE`` relative to the output's scale (``1 + max |value|``),
- round trip ``decode(encode(x))`` misses ``x`` by more than ``ROUNDTRIP_TOLERANCE`` (pixel units for images,
  relative to ``1 + |x|`` for vectors),
- batch rows are not independent (a row's output changes with the rest of the batch),
- outputs are not finite on held-out data.

A tiny artifact for a test::

    flow = NVPNet(dim=2, hidden_dim=8, depth=2)
    export_artifact(flow, tmp_path / "toy", name="toy", dataset={"name": "moons", "splits": {"train": 8,
                    "val": 8, "test": 8}}, metrics={"test_bits_per_dim": 1.0, "test_nll_nats": 1.39},
                    reference=torch.randn(64, 2))
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import artifact
from models import Flow
from models.export import to_torchscript
from training.checkpoint import Checkpoint, check_same_data, load_flow
from training.config import config_from_dict, config_to_dict
from training.data import DataSplits, load_data
from training.evaluate import (
    held_out_log_likelihoods,
    importance_weighted_log_likelihoods,
    log_likelihoods,
    summarize,
)

__all__ = ["EAGER_TOLERANCE", "ROUNDTRIP_TOLERANCE", "ExportError", "export_artifact", "export_checkpoint"]

EAGER_TOLERANCE = 1e-4
ROUNDTRIP_TOLERANCE = {"image": 1e-2, "vector": 1e-4}


class ExportError(ValueError):
    """The artifact failed verification and was not written."""


def export_artifact(
    flow: Flow,
    out_dir: str | Path,
    *,
    name: str,
    dataset: dict[str, Any],
    metrics: dict[str, float],
    reference: Tensor,
    config: dict[str, Any] | None = None,
    version: str = "1.0.0",
) -> dict[str, Any]:
    """Export ``flow`` to ``out_dir`` (replacing an existing artifact only once the new one is verified).

    Args:
        flow: a trained flow (not modified).
        out_dir: the artifact folder, e.g. ``model_store/mnist``.
        name: artifact name.
        dataset: ``{"name": str, "splits": {"train": int, "val": int, "test": int}}``.
        metrics: at least ``test_bits_per_dim`` and ``test_nll_nats`` (floats); more keys are kept.
        reference: held-out items never trained on (the validation split), ``(N, *event_shape)`` in data space
            (8-bit pixel values for images). Their per-item scores, computed by the exported module, become
            ``reference_scores``; they also serve as verification inputs.
        config: the resolved training configuration (plain dict) for the card.
        version: artifact version.

    Returns:
        The card (also written as ``card.json``).

    Raises:
        ExportError: verification failed; nothing was written to ``out_dir``.
    """
    out_dir = Path(out_dir)
    reference = _checked_reference(flow, metrics, reference)
    eager = copy.deepcopy(flow).float().cpu().eval()
    scripted = to_torchscript(eager)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp_dir.mkdir()
    try:
        model_path = tmp_dir / artifact.MODULE_FILE
        scripted.save(str(model_path))
        sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()
        loaded = torch.jit.load(str(model_path), map_location="cpu")  # verify what the service will load
        verify_module(loaded, eager, reference)
        card = artifact.build_card(
            name=name,
            version=version,
            flow_type=type(flow).__name__,
            data_kind=flow.data_kind,  # type: ignore[arg-type]
            shape=list(flow.event_shape),
            sha256=sha256,
            dataset=dataset,
            metrics=metrics,
            reference_scores=module_reference_scores(
                loaded, reference, flow.data_kind, getattr(flow, "coarse_dims", None)
            ),
            num_parameters=flow.num_parameters(),
            training_config=config,
            torch_version=torch.__version__,
        )
        (tmp_dir / artifact.CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        if hashlib.sha256(model_path.read_bytes()).hexdigest() != sha256:
            raise ExportError(f"{artifact.MODULE_FILE} changed on disk during export")
        _move_into_place(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return card


def _checked_reference(flow: Flow, metrics: dict[str, float], reference: Tensor) -> Tensor:
    """The reference items as float32 on CPU (at most ``MAX_REFERENCE_SCORES``), once the inputs are checked.

    Raises:
        ExportError: a required metric is missing or not finite, or the reference items have the wrong shape.
    """
    for key in ("test_bits_per_dim", "test_nll_nats"):
        if not isinstance(metrics.get(key), int | float) or not math.isfinite(metrics[key]):
            raise ExportError(f"expected a finite number for metrics['{key}'], got {metrics.get(key)!r}")
    if tuple(reference.shape[1:]) != tuple(flow.event_shape) or len(reference) < 2:
        raise ExportError(
            f"expected reference items of shape (N >= 2, {list(flow.event_shape)}), got {list(reference.shape)}"
        )
    return reference[: artifact.MAX_REFERENCE_SCORES].float().cpu()


@torch.no_grad()
def module_reference_scores(
    module: torch.jit.ScriptModule, reference: Tensor, kind: str, coarse_dims: int | None = None
) -> dict[str, Any]:
    """The card's ``reference_scores``, from the exported module's own outputs on the reference items.

    Latents come from the exported module with images at their bin centre, as the service encodes them.
    ``coarse_dims`` (multi-scale flows: ``RealNVP.coarse_dims``) adds the ``coarse`` references.
    """
    log_likelihood = torch.cat([module.log_prob(batch) for batch in reference.split(500)]).double()
    offset = artifact.DEQUANTIZATION_OFFSET if kind == "image" else 0.0
    latents = torch.cat([module.encode(batch + offset)[0] for batch in reference.split(500)]).double()
    pixels = reference.numpy() if kind == "image" else None
    return artifact.reference_scores(log_likelihood.numpy(), latents.numpy(), pixels, coarse_dims=coarse_dims)


def _close(actual: Tensor, expected: Tensor, tolerance: float) -> bool:
    """Max error within ``tolerance`` relative to the output's scale, ``1 + max |expected|``.

    Relative to the scale, not to each element: float32 rounding differs between the eager flow and its folded,
    frozen script by about 1e-5 of the scale (the eager flow is not closer to float64 than the script), which
    an element near zero would otherwise turn into a large relative error.
    """
    return bool((actual - expected).abs().max() <= tolerance * (1.0 + expected.abs().max()))


@torch.no_grad()
def verify_module(module: torch.jit.ScriptModule, eager: Flow, reference: Tensor) -> None:
    """Check a loaded TorchScript module against the eager flow on held-out items (see module docstring).

    Raises:
        ExportError: on the first failed check, saying which and by how much.
    """
    for method in artifact.REQUIRED_METHODS:
        if not hasattr(module, method):
            raise ExportError(f"the TorchScript module lacks method '{method}'")
    kind = eager.data_kind
    x = reference[:8]  # (B, *shape)
    # Continuous points for encode/decode: bin centres of real 8-bit images, raw vectors.
    x_continuous = x + 0.5 if kind == "image" else x
    checks = {
        "log_prob": (module.log_prob(x), eager.log_prob(x)),
        "encode z": (module.encode(x_continuous)[0], eager.encode(x_continuous)[0]),
        "encode log_det": (module.encode(x_continuous)[1], eager.encode(x_continuous)[1]),
    }
    z = eager.encode(x_continuous)[0]
    checks["decode"] = (module.decode(z), eager.decode(z))
    for label, (actual, expected) in checks.items():
        if not torch.isfinite(actual).all():
            raise ExportError(f"TorchScript {label} is not finite on held-out data")
        if actual.shape != expected.shape or not _close(actual, expected, EAGER_TOLERANCE):
            diff = (actual - expected).abs().max().item() if actual.shape == expected.shape else math.inf
            raise ExportError(
                f"TorchScript {label} differs from the eager flow by {diff:.3g} "
                f"(tolerance {EAGER_TOLERANCE} relative to 1 + max |value|)"
            )
    roundtrip = module.decode(module.encode(x_continuous)[0])
    error = (roundtrip - x_continuous).abs()
    bound = ROUNDTRIP_TOLERANCE[kind] * (1.0 if kind == "image" else 1.0 + x_continuous.abs())
    if not torch.isfinite(roundtrip).all() or not bool((error <= bound).all()):
        raise ExportError(
            f"round trip decode(encode(x)) misses x by {error.max().item():.3g} (tolerance {ROUNDTRIP_TOLERANCE[kind]})"
        )
    batched_lp, batched_x = module.log_prob(x), module.decode(z)
    for i in range(min(3, len(x))):  # a few rows alone: each shape costs a TorchScript specialization
        single_lp, single_x = module.log_prob(x[i : i + 1]), module.decode(z[i : i + 1])
        if not _close(batched_lp[i : i + 1], single_lp, EAGER_TOLERANCE) or not _close(
            batched_x[i : i + 1], single_x, EAGER_TOLERANCE
        ):
            raise ExportError(
                f"batch rows are not independent: row {i} of a batch of {len(x)} differs from the same item alone"
            )
    # A permuted batch must give permuted outputs (catches mixing between rows of equal size).
    permutation = torch.arange(len(x) - 1, -1, -1)
    if not _close(module.log_prob(x[permutation]), batched_lp[permutation], EAGER_TOLERANCE):
        raise ExportError("batch rows are not independent: reversing the batch changes the outputs")


def _move_into_place(tmp_dir: Path, out_dir: Path) -> None:
    """Rename ``tmp_dir`` to ``out_dir``; an old artifact is moved aside first and deleted after."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        out_dir.rename(old)
    tmp_dir.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def held_out_metrics(
    flow: Flow, data: DataSplits, batch_size: int, device: str, iw_samples: int = 0
) -> dict[str, float]:
    """The card's figures (docs/artifact.md), from the one held-out estimator.

    The standard bits/dim of the test and validation splits (k = 1), the bin-centre density the service scores
    per item, and the importance-weighted bound with its ``k``.
    """
    test_items, val_items = data.split("test"), data.split("val")
    test = summarize(held_out_log_likelihoods(flow, test_items, 1, batch_size, device), flow.dim)
    val = summarize(held_out_log_likelihoods(flow, val_items, 1, batch_size, device), flow.dim)
    metrics = {
        "test_bits_per_dim": test["bits_per_dim"],
        "test_nll_nats": test["nll_nats"],
        "test_log_likelihood_nats": test["log_likelihood"],
        "val_bits_per_dim": val["bits_per_dim"],
    }
    if data.kind == "image":
        bin_centre = summarize(log_likelihoods(flow, test_items, batch_size, device), flow.dim)
        metrics["test_dequantization_samples"] = 1.0
        metrics["test_bin_centre_bits_per_dim"] = bin_centre["bits_per_dim"]
        if iw_samples:
            iw = importance_weighted_log_likelihoods(flow, test_items, iw_samples, batch_size, device)
            metrics["test_iw_bits_per_dim"] = summarize(iw, flow.dim)["bits_per_dim"]
            metrics["test_iw_samples"] = float(iw_samples)
    return metrics


def choose_weights(path: str | Path, use_ema: bool | None, device: str) -> tuple[Flow, Checkpoint, bool]:
    """The flow to export, its checkpoint, and whether it is the EMA.

    ``None`` takes the EMA or the raw weights, whichever has the better standard validation bits/dim (an average
    of weights can lag far behind them, see ``training.ema``).
    """
    flow, checkpoint = load_flow(path, use_ema=use_ema is not False, device=device)
    if checkpoint.ema is None or use_ema is not None:
        return flow, checkpoint, checkpoint.ema is not None and bool(use_ema is not False)
    raw, _ = load_flow(path, use_ema=False, device=device)
    data = load_data(checkpoint.config.data)
    val_items, batch = data.split("val"), checkpoint.config.train.eval_batch_size
    ema_bpd, raw_bpd = (
        summarize(held_out_log_likelihoods(f, val_items, 1, batch, device), f.dim)["bits_per_dim"] for f in (flow, raw)
    )
    return (flow, checkpoint, True) if ema_bpd <= raw_bpd else (raw, checkpoint, False)


def export_checkpoint(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    name: str | None = None,
    version: str = "1.0.0",
    device: str = "cpu",
    iw_samples: int = 0,
    use_ema: bool | None = None,
) -> dict[str, Any]:
    """Export a training checkpoint: test metrics on the test split, reference scores on the validation split.

    Args:
        checkpoint_path: the training checkpoint.
        out_dir: the artifact folder.
        name: artifact name (default: the folder name).
        version: artifact version.
        device: where to compute the metrics.
        iw_samples: for images, also record the importance-weighted test bits/dim over this many
            dequantization draws (``test_iw_bits_per_dim``; 0 = skip).
        use_ema: export the EMA weights (True) or the raw weights (False) of a checkpoint that has both; None
            exports whichever has the better standard validation bits/dim (recorded as ``metrics.weights_ema``).

    Returns:
        The card.
    """
    flow, checkpoint, ema_exported = choose_weights(checkpoint_path, use_ema, device)
    data = load_data(checkpoint.config.data)
    check_same_data(checkpoint, data, str(checkpoint_path))
    metrics = held_out_metrics(flow, data, checkpoint.config.train.eval_batch_size, device, iw_samples)
    metrics["weights_ema"] = float(ema_exported)
    metrics.update(
        epochs=float(checkpoint.epoch),
        steps=float(checkpoint.step),
        training_seconds=float(checkpoint.extra.get("elapsed_s", 0.0)),
    )
    return export_artifact(
        flow.cpu(),
        out_dir,
        name=name or Path(out_dir).name,
        dataset={"name": data.name, "splits": data.sizes},
        metrics=metrics,
        reference=data.split("val"),
        config=config_to_dict(checkpoint.config),
        version=version,
    )


class ExportedFlow:
    """An exported ``model.ts`` seen through the attributes of a flow that the held-out estimators read."""

    def __init__(self, module: torch.jit.ScriptModule, card: artifact.ModelCard) -> None:
        self.module, self.data_kind, self.dim, self.training = module, card.data_kind, card.dimension, False

    def eval(self) -> ExportedFlow:
        """Exported modules are always in eval mode."""
        return self

    def train(self, mode: bool = True) -> ExportedFlow:
        """No-op (see :meth:`eval`)."""
        return self

    def log_prob(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """The module's own ``log_prob`` (bin centre, or ``x + noise`` when given)."""
        return self.module.log_prob(x, noise)


def refresh_card(directory: str | Path, iw_samples: int = 16, device: str = "cpu") -> dict[str, Any]:
    """Recompute an artifact's density figures from its own ``model.ts`` and write them as a current card.

    For artifacts whose checkpoint is gone: the weights, ``sha256`` and reference scores stay as they are; the
    ``metrics`` get the figures of docs/artifact.md (the standard bits/dim, the bin-centre density, the
    importance-weighted bound with its ``k``) on the splits the card's training config names, and
    ``format_version`` becomes current. The card is replaced atomically.

    Raises:
        artifact.ArtifactError: the card is unreadable, or ``model.ts`` does not match it.
    """
    directory = Path(directory)
    card = artifact.read_card(directory)
    data_bytes = (directory / artifact.MODULE_FILE).read_bytes()
    if hashlib.sha256(data_bytes).hexdigest() != card.sha256:
        raise artifact.ArtifactError(f"{directory / artifact.MODULE_FILE}: checksum does not match the card")
    module = torch.jit.load(str(directory / artifact.MODULE_FILE), map_location=device)
    config = config_from_dict(card.training_config or {})
    data = load_data(config.data)
    metrics = dict(card.metrics or {})
    metrics.update(held_out_metrics(ExportedFlow(module, card), data, config.train.eval_batch_size, device, iw_samples))  # type: ignore[arg-type]
    raw = json.loads((directory / artifact.CARD_FILE).read_text())
    raw.update(format_version=artifact.FORMAT_VERSION, metrics=metrics)
    artifact.ModelCard.model_validate_json(json.dumps(raw))
    tmp = directory / f".{artifact.CARD_FILE}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(raw, indent=2) + "\n")
    tmp.replace(directory / artifact.CARD_FILE)
    return raw
