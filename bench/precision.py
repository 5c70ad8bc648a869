"""fp32 against bf16 on the ``/sample`` path (issue 12): time at one batch size, and the error in 0-255 pixels.

Prints JSON. Run: ``.venv/bin/python bench/precision.py`` (``--quick`` for a smoke run, ``--threads N``).

The ``/sample`` path is what the service runs for ``POST /sample`` minus HTTP and queueing:
``service.engine.inference.draw_latents`` (seeded), ``ModelRunner.decode(z, precision)`` on the loaded artifact
and ``finish_decoded`` (``floor(clamp(x, 0, 255))`` to uint8). Models:

* ``paper``: the paper's CIFAR-10 RealNVP (``training/configs/cifar10.toml``: 3×32×32, 2 scales, 64 feature
  maps, 8 residual blocks, 13 M parameters), randomised weights and batch-norm statistics as in
  ``bench/flows.py`` (speed does not depend on training; its pixel error is that of an untrained network),
  exported with ``models.export.to_torchscript`` and loaded by the service's own ``ModelRunner``;
* ``mnist``: the bundled ``model_store/mnist`` (errors, and its time too).

Each model's fp32 and bf16 calls are interleaved (order alternating per round) and the median kept, so load from
other processes hits both alike. The error compares the two precisions' uint8 outputs for the same latents:
mean and worst absolute pixel difference, and the share of pixels off by more than 2 and more than 16.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import artifact  # noqa: E402
from bench.flows import randomised_model  # noqa: E402
from models import RealNVP  # noqa: E402
from models.export import to_torchscript  # noqa: E402
from service.engine.inference import draw_latents, finish_decoded  # noqa: E402
from service.engine.runner import ModelRunner, resolve_device  # noqa: E402


def paper_flow() -> RealNVP:
    """The CIFAR-10 configuration of Dinh et al. (2017), weights perturbed so no coupling is the identity."""
    return randomised_model(in_channels=3, image_size=32)


def export_paper_model(directory: Path) -> Path:
    """Write the paper-sized flow as a served artifact (``model.ts`` + ``card.json``) into ``directory``."""
    import hashlib

    flow = paper_flow()
    directory.mkdir(parents=True, exist_ok=True)
    module_path = directory / artifact.MODULE_FILE
    torch.jit.save(to_torchscript(flow), str(module_path))
    card = artifact.build_card(
        name=directory.name,
        version="0.0.0",
        flow_type="RealNVP",
        data_kind="image",
        shape=[3, 32, 32],
        sha256=hashlib.sha256(module_path.read_bytes()).hexdigest(),
        dataset={"name": "none", "splits": {"train": 0, "val": 0, "test": 0}},
        metrics={"test_bits_per_dim": 0.0, "test_nll_nats": 0.0},
        reference_scores={"split": "val", "log_likelihood": [-1.0] * 50, "bits_per_dim": [1.0] * 50},
        num_parameters=flow.num_parameters(),
        training_config={"note": "randomised paper-sized flow of bench/precision.py"},
        torch_version=torch.__version__,
        created_at="2026-12-01T00:00:00Z",
    )
    card["value_range"] = [0, 255]
    (directory / artifact.CARD_FILE).write_text(json.dumps(card))
    return directory


def sample_path(runner: ModelRunner, batch: int, temperature: float, precision: str) -> Callable[[], torch.Tensor]:
    """One ``/sample`` of ``batch`` items at ``precision`` (seed 0), as a no-argument callable returning uint8."""

    def run() -> torch.Tensor:
        z = draw_latents(runner.dimension, batch, temperature, seed=0)
        with torch.inference_mode():
            return finish_decoded(runner, runner.decode(z, precision))

    return run


def paired_seconds(fp32: Callable[[], object], bf16: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median seconds per call of two paths, interleaved; one untimed call of each first (kernel set-up)."""
    fp32(), bf16()
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(rounds):
        for name in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
            start = time.perf_counter()
            (fp32 if name == "fp32" else bf16)()
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["fp32"]), statistics.median(times["bf16"])


def pixel_error(runner: ModelRunner, batch: int, temperature: float) -> dict[str, float]:
    """fp32 vs bf16 uint8 samples of the same latents, in 0-255 units."""
    exact = sample_path(runner, batch, temperature, "fp32")().to(torch.int16)
    reduced = sample_path(runner, batch, temperature, "bf16")().to(torch.int16)
    difference = (exact - reduced).abs().float()
    return {
        "mean_abs_pixel_error": difference.mean().item(),
        "worst_pixel_error": difference.max().item(),
        "fraction_pixels_off_by_more_than_2": (difference > 2).float().mean().item(),
        "fraction_pixels_off_by_more_than_16": (difference > 16).float().mean().item(),
    }


def measure(runner: ModelRunner, batch: int, temperature: float, rounds: int) -> dict[str, object]:
    fp32_s, bf16_s = paired_seconds(
        sample_path(runner, batch, temperature, "fp32"), sample_path(runner, batch, temperature, "bf16"), rounds
    )
    row: dict[str, object] = {"batch": batch, "fp32_s": fp32_s, "bf16_s": bf16_s, "speedup_bf16": fp32_s / bf16_s}
    row.update(pixel_error(runner, batch, temperature))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (the service's TORCH_THREADS)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per precision and model")
    parser.add_argument("--temperature", type=float, default=1.0, help="/sample's default is 1.0")
    parser.add_argument("--device", default="cpu", help="DEVICE setting: cpu, cuda, auto")
    parser.add_argument("--models", default="paper,mnist", help="comma-separated: paper, mnist")
    parser.add_argument("--quick", action="store_true", help="batch 4, one round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch, rounds = (4, 1) if args.quick else (args.batch, args.rounds)
    device = resolve_device(args.device)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            directory = export_paper_model(Path(scratch) / "paper") if name == "paper" else ROOT / "model_store" / name
            runner = ModelRunner.load(directory, device)
            row = measure(runner, batch, args.temperature, rounds)
            row["parameters"] = runner.card.num_parameters
            results[name] = row
            print(json.dumps({name: row}), file=sys.stderr)
    report = {
        "benchmark": "precision",
        "path": "/sample: draw_latents + ModelRunner.decode(z, precision) + finish_decoded",
        "unit": "seconds per call (median), pixel errors in 0-255 units",
        "temperature": args.temperature,
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "load_average": os.getloadavg(),
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
