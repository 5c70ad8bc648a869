"""Images per second of a full RealNVP training step (forward, loss, backward, clipping, Adam step).

Measures the configs of the bundled ``mnist`` model and of the paper's CIFAR-10 setting on synthetic 8-bit
images (the step's cost does not depend on the pixel values), on CPU (float32, and with ``--cpu-bf16`` also under
bf16 autocast, as ``fit --set train.amp=bf16`` trains) and, when CUDA is present, on the GPU in float32 and with
bf16 autocast. Prints one JSON document.

    python bench/train_step.py                       # both configs, CPU (and CUDA when present)
    python bench/train_step.py --configs mnist --threads 2 --steps 10
    python bench/train_step.py --configs mnist --threads 2 --sizes 3,16,2 3,32,2 3,16,4   # other widths/depths
    python bench/train_step.py --configs mnist --threads 2 --sizes 3,32,4 --cpu-bf16      # CPU bf16 next to fp32

CPU bf16 pays off only where the processor computes it natively (AMX-BF16 or AVX512-BF16); elsewhere oneDNN
emulates it and a step is several times slower than in float32.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from training.checkpoint import build_flow
from training.config import load_config
from training.run import LogProbObjective

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
SIZE_KEYS = ("num_scales", "mid_channels", "num_blocks")


def parse_size(text: str) -> tuple[int, int, int]:
    """``"3,32,2"`` -> ``(num_scales, mid_channels, num_blocks)``."""
    try:
        scales, channels, blocks = (int(part) for part in text.split(","))
    except ValueError:
        expected = "NUM_SCALES,MID_CHANNELS,NUM_BLOCKS, e.g. 3,32,2"
        raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}") from None
    return scales, channels, blocks


def train_step_rate(
    config_name: str,
    device: str,
    amp: bool,
    batch_size: int | None,
    steps: int,
    warmup: int,
    size: tuple[int, int, int] | None = None,
) -> dict:
    overrides = () if size is None else [f"model.{key}={value}" for key, value in zip(SIZE_KEYS, size, strict=True)]
    config = load_config(CONFIGS / f"{config_name}.toml", overrides)  # validated like `fit --set`
    shape = SHAPES[config_name]
    batch_size = batch_size or config.train.batch_size
    torch.manual_seed(0)
    flow = build_flow(config.model, "image", shape).to(device, memory_format=torch.channels_last).train()  # as fit
    objective = LogProbObjective(flow)
    optimizer = torch.optim.Adam(flow.parameters(), lr=config.optim.lr, betas=config.optim.betas)
    scales = flow.l2_penalized_weights()
    x = torch.randint(0, 256, (batch_size, *shape), device=device).float()

    def step() -> float:
        noise = torch.rand_like(x)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if amp else nullcontext():
            log_prob = objective(x, noise)
        loss = -log_prob.float().mean() / (flow.dim * math.log(2.0))
        loss = loss + config.optim.weight_norm_l2 * sum((g.float() ** 2).sum() for g in scales)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), config.optim.grad_clip)
        optimizer.step()
        return loss.item()  # synchronizes

    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    return {
        "config": config_name,
        "shape": list(shape),
        "num_scales": config.model.num_scales,
        "mid_channels": config.model.mid_channels,
        "num_blocks": config.model.num_blocks,
        "parameters": flow.num_parameters(),
        "device": device,
        "precision": "bf16-autocast" if amp else "fp32",
        "batch_size": batch_size,
        "steps": steps,
        "median_step_s": round(median, 4),
        "images_per_s": round(batch_size / median, 2),
        "mean_images_per_s": round(batch_size * steps / sum(times), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["mnist", "cifar10"], choices=sorted(SHAPES))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="default: each config's batch size")
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=parse_size,
        default=[None],
        metavar="S,C,B",
        help="instead of each config's model: num_scales,mid_channels,num_blocks (e.g. 3,32,2), each timed",
    )
    parser.add_argument("--cpu-bf16", action="store_true", help="also time the CPU step under bf16 autocast")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = []
    for name in args.configs:
        for size in args.sizes:
            for amp in (False, True) if args.cpu_bf16 else (False,):
                runs.append(train_step_rate(name, "cpu", amp, args.batch_size, args.steps, args.warmup, size))
            if torch.cuda.is_available():
                for amp in (False, True):
                    runs.append(train_step_rate(name, "cuda", amp, args.batch_size, args.steps, args.warmup, size))
    report = {
        "benchmark": "train_step",
        "torch": torch.__version__,
        "cpu_threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "cuda": torch.cuda.is_available(),
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
