"""Inference throughput of the flow library: eager vs exported TorchScript (issue 2's benchmark).

Prints JSON. Run: ``.venv/bin/python bench/flows.py`` (add ``--quick`` for a smoke run).
The model is ``RealNVP(1, 28, num_scales=2, mid_channels=64, num_blocks=8)`` with randomised weights and
batch-norm statistics (speed does not depend on training).
"""

import argparse
import functools
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import RealNVP
from models.export import to_torchscript


def randomised_model() -> RealNVP:
    torch.manual_seed(0)
    flow = RealNVP(in_channels=1, image_size=28, num_scales=2, mid_channels=64, num_blocks=8)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.02 * torch.randn_like(p))
        for m in flow.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
    return flow.eval()


def throughput(fn: Callable[[], object], batch: int, min_seconds: float, repeats: int) -> float:
    """Best-of-``repeats`` samples/s, each repeat running ``fn`` for at least ``min_seconds``."""
    fn()  # warm-up (TorchScript profiling runs, allocator)
    fn()
    best = 0.0
    for _ in range(repeats):
        calls, start = 0, time.perf_counter()
        while True:
            fn()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        best = max(best, calls * batch / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="batch 1 and 8 only, short timings")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [1, 8] if args.quick else [1, 64, 256]
    min_seconds, repeats = (0.2, 1) if args.quick else (1.0, 2)

    eager = randomised_model()
    exported = to_torchscript(eager)
    dim = eager.dim
    results = []
    for batch in batches:
        x = torch.randint(0, 256, (batch, 1, 28, 28)).float()
        z = torch.randn(batch, dim)
        with torch.no_grad():
            max_diff = (exported.log_prob(x) - eager.log_prob(x)).abs().max().item()
        row = {"batch": batch, "max_abs_diff_log_prob": max_diff}
        for mode, context in (("eval", torch.no_grad), ("inference_mode", torch.inference_mode)):
            for path, model in (("eager", eager), ("torchscript", exported)):
                with context():
                    score = functools.partial(model.log_prob, x)
                    draw = functools.partial(model.decode, z)
                    row[f"log_prob_{path}_{mode}"] = throughput(score, batch, min_seconds, repeats)
                    row[f"sample_{path}_{mode}"] = throughput(draw, batch, min_seconds, repeats)
            for op in ("log_prob", "sample"):
                row[f"{op}_speedup_{mode}"] = row[f"{op}_torchscript_{mode}"] / row[f"{op}_eager_{mode}"]
        results.append(row)
        print(json.dumps(row), file=sys.stderr)
    report = {
        "benchmark": "flows",
        "model": "RealNVP(1, 28, num_scales=2, mid_channels=64, num_blocks=8)",
        "parameters": eager.num_parameters(),
        "unit": "samples/s",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "results": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
