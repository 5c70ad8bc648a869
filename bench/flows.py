"""Inference throughput of the flow library: eager vs exported TorchScript (issue 2's benchmark).

Prints JSON. Run: ``.venv/bin/python bench/flows.py`` (add ``--quick`` for a smoke run).
The model is ``RealNVP(1, 28, num_scales=2, mid_channels=64, num_blocks=8)`` with randomised weights and
batch-norm statistics (speed does not depend on training).
"""

import argparse
import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import RealNVP
from models.export import to_torchscript


def randomised_model(in_channels: int = 1, image_size: int = 28) -> RealNVP:
    """The paper's CIFAR-10 layout (2 scales, 64 features, 8 blocks) on ``in_channels × image_size²`` images.

    Weights and batch-norm statistics are perturbed so that no coupling is the identity (a fresh flow's are).
    """
    torch.manual_seed(0)
    flow = RealNVP(in_channels=in_channels, image_size=image_size, num_scales=2, mid_channels=64, num_blocks=8)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.02 * torch.randn_like(p))
        for m in flow.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
    return flow.eval()


def paired_throughput(
    eager_fn: Callable[[], object], exported_fn: Callable[[], object], batch: int, rounds: int
) -> tuple[float, float]:
    """Samples/s of two paths, their calls interleaved so that load from other processes hits both alike.

    Each round times one call of each path (order alternating); the figure is the median over rounds.
    """
    for fn in (eager_fn, exported_fn, eager_fn, exported_fn):  # warm-up: allocator, TorchScript first runs
        fn()
    times: dict[int, list[float]] = {0: [], 1: []}
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for which in order:
            fn = eager_fn if which == 0 else exported_fn
            start = time.perf_counter()
            fn()
            times[which].append(time.perf_counter() - start)
    return batch / statistics.median(times[0]), batch / statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="batch 1 and 8 only, short timings")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=7, help="timed calls per path and configuration")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [1, 8] if args.quick else [1, 64, 256]
    rounds = 3 if args.quick else args.rounds

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
            with context():
                for op, eager_fn, exported_fn in (
                    ("log_prob", functools.partial(eager.log_prob, x), functools.partial(exported.log_prob, x)),
                    ("sample", functools.partial(eager.decode, z), functools.partial(exported.decode, z)),
                ):
                    eager_rate, exported_rate = paired_throughput(eager_fn, exported_fn, batch, rounds)
                    row[f"{op}_eager_{mode}"] = eager_rate
                    row[f"{op}_torchscript_{mode}"] = exported_rate
                    row[f"{op}_speedup_{mode}"] = exported_rate / eager_rate
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
