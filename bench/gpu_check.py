"""The GPU readiness check of issue 12: one command, PASS/FAIL per stage, JSON to ``--out``.

Stages (each records its figures and a status; a failing stage does not stop the next ones):

1. ``versions``: Python, torch, CUDA, cuDNN, NCCL, the device and its memory.
2. ``train_step``: a training step of ``training/configs/cifar10.toml`` on synthetic 3×32×32 8-bit images, fp32
   and bf16 autocast at batch 64 and 256, through the training loop's own ``train_step``/``apply_update``:
   images/s timed with CUDA events, peak memory.
3. ``fit``: a short ``fit`` (bf16 on CUDA; the cifar10 layout with fewer features and blocks): finite and
   falling loss, checkpoints and sample grids written, a resume taking the expected steps.
4. ``ddp``: the same run under ``torchrun --nproc_per_node 1`` (a process group of one: NCCL on CUDA, gloo on CPU).
5. ``runner``: export of the fit's checkpoint, then the service's ``ModelRunner`` on the device: first-call
   and warm latency per batch size, agreement with the eager flow in float64 on CPU (nats), TF32 off and on.
6. ``oom``: through an in-process service, a batch too large for the GPU's memory (most of it held by this
   process): expected 503, the service still ready, and the next small request answered.
7. ``service``: ``python -m service`` with ``DEVICE`` set: every endpoint answers, seeded ``/sample`` is
   reproducible.
8. ``service_load``: ``bench/service_load.py`` (short) at two ``MAX_BATCH_SIZE`` values.
9. ``cuda_tests``: ``pytest -m cuda``.

``--device cpu --quick`` runs every stage at toy sizes on CPU (the OOM probe is then recorded as skipped, with
what it would do), as the test suite does in ``tests/bench/test_gpu_check.py``. Needs no network.

    python bench/gpu_check.py --out gpu_check.json                       # on a CUDA host, ~5-8 minutes
    python bench/gpu_check.py --device cpu --quick --out /tmp/check.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for bench.*
from bench import gpu_check_service
from bench.gpu_check_service import FAIL, PASS, SKIPPED
from training import train
from training.checkpoint import load_checkpoint
from training.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = REPO / "training" / "configs" / "cifar10.toml"


@dataclass(frozen=True)
class Sizes:
    """How big each stage runs: the GPU sizes, or toy ones (``--quick``)."""

    image: tuple[int, int, int] = (3, 32, 32)
    step_model: tuple[str, ...] = ()  # the cifar10 config as it is
    step_batches: tuple[int, ...] = (64, 256)
    step_warmup: int = 3
    step_timed: int = 10
    fit_model: tuple[str, ...] = ("model.mid_channels=32", "model.num_blocks=2")
    fit_items: int = 2048
    fit_batch: int = 64
    held_out: int = 128
    latency_batches: tuple[int, ...] = (1, 16, 64, 256)
    warm_calls: int = 10
    agreement_items: int = 32
    oom_samples: int = 8192
    load_batches: tuple[int, ...] = (16, 128)  # each run also measures MAX_BATCH_SIZE=1 (its unbatched server)
    load_duration_s: float = 2.0
    load_concurrency: tuple[int, ...] = (1, 64)  # at 64 clients batches can outgrow the smaller MAX_BATCH_SIZE
    load_reference_s: float = 2.0  # service_load.py --reference-seconds (its in-process timing)


QUICK = Sizes(
    image=(3, 8, 8),
    step_model=("model.mid_channels=8", "model.num_blocks=1"),
    step_batches=(4, 8),
    step_warmup=1,
    step_timed=2,
    fit_model=("model.mid_channels=4", "model.num_blocks=1"),
    fit_items=224,
    fit_batch=16,
    held_out=32,
    latency_batches=(1, 4),
    warm_calls=3,
    agreement_items=8,
    oom_samples=0,
    load_batches=(4,),  # with the unbatched server service_load.py always runs: MAX_BATCH_SIZE 4 and 1
    load_duration_s=0.5,
    load_concurrency=(4,),
    load_reference_s=0.3,
)


@dataclass
class Check:
    """The state the stages share: options, working folder, what earlier stages produced, the report."""

    device: str
    quick: bool
    sizes: Sizes
    workdir: Path
    out: Path
    deadline: float
    report: dict[str, Any] = field(default_factory=dict)
    produced: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        """Whether the check runs on a CUDA device."""
        return self.device.startswith("cuda")

    def env(self) -> dict[str, str]:
        """Environment of the subprocesses: the repo on the path, the device, one thread on CPU."""
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        env["DEVICE"] = self.device
        if not self.cuda:
            env["OMP_NUM_THREADS"] = "1"
        return env

    def save(self) -> None:
        """Write the report as it stands (after every stage, so a check cut short still leaves its figures)."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.report, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------------------------------- data
def synthetic_images(n: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Structured uint8 images ``(n, C, H, W)``: a bright bar of a random colour on dark noise (learnable fast)."""
    rng = np.random.default_rng(seed)
    channels, height, width = shape
    images = rng.integers(0, 48, size=(n, channels, height, width))
    rows, columns = rng.integers(0, height, size=n), rng.integers(0, width, size=n)
    colours = rng.integers(160, 256, size=(n, channels))
    for i in range(n):
        if i % 2:
            images[i, :, rows[i], :] = colours[i][:, None]
        else:
            images[i, :, :, columns[i]] = colours[i][:, None]
    return images.astype(np.uint8)


def data_overrides(check: Check, n: int, name: str) -> list[str]:
    """``--set`` overrides of the cifar10 config for ``n`` synthetic images written under the working folder."""
    path = check.workdir / f"{name}.npy"
    if not path.exists():
        np.save(path, synthetic_images(n, check.sizes.image))
    held_out = check.sizes.held_out
    return [
        'data.name="array"',
        f'data.path="{path}"',
        f"data.val_size={held_out}",
        f"data.test_size={held_out}",
        f'train.device="{check.device}"',
        "train.progress=false",
        "train.num_threads=1" if not check.cuda else "train.num_threads=0",
    ]


def fresh(path: Path) -> Path:
    """``path`` emptied: a reused ``--workdir`` must not resume or append to an earlier check's runs."""
    shutil.rmtree(path, ignore_errors=True)
    return path


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Training's progress lines go to stderr: stdout carries the JSON."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


# --------------------------------------------------------------------------------------------------- stages
def stage_versions(check: Check) -> dict[str, Any]:
    """Versions of everything that matters, and whether the device asked for is there."""
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    if torch.cuda.is_available():
        device = torch.device(check.device if check.cuda else "cuda")
        props = torch.cuda.get_device_properties(device)
        result.update(
            device_name=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            device_count=torch.cuda.device_count(),
            cudnn=torch.backends.cudnn.version(),
            nccl=nccl_version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    ok = torch.cuda.is_available() if check.cuda else True
    result["status"] = PASS if ok else FAIL
    if not ok:
        result["error"] = f"--device {check.device} but torch.cuda.is_available() is False"
    return result


def nccl_version() -> str | None:
    """NCCL's version as ``major.minor.patch`` (None when torch was built without it)."""
    try:
        version = torch.cuda.nccl.version()
    except Exception:  # no NCCL in this build
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def timed_steps(run: train.Run, warmup: int, timed: int, cuda: bool) -> float:
    """Seconds of ``timed`` training steps after ``warmup`` ones (CUDA events on the GPU, wall clock on CPU)."""
    batches = train.epoch_batches(run)
    bar = _NoBar()

    def step(index: int) -> None:
        result = train.train_step(run, batches[index % len(batches)])
        train.apply_update(run, result)
        train.advance(run, result, bar)

    for index in range(warmup):
        step(index)
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for index in range(warmup, warmup + timed):
            step(index)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    started = time.perf_counter()
    for index in range(warmup, warmup + timed):
        step(index)
    return time.perf_counter() - started


class _NoBar:
    """What ``advance`` needs of a tqdm bar."""

    def update(self, n: int) -> None:
        pass


def stage_train_step(check: Check) -> dict[str, Any]:
    """Images/s and peak memory of the cifar10 training step, fp32 and bf16, at two batch sizes."""
    sizes = check.sizes
    items = 2 * max(sizes.step_batches) + 2 * sizes.held_out
    runs, ok = [], True
    for amp in ("none", "bf16"):
        for batch in sizes.step_batches:
            overrides = [
                *data_overrides(check, items, "step_images"),
                *sizes.step_model,
                f'out_dir="{fresh(check.workdir / "step_run")}"',
                f"train.batch_size={batch}",
                f'train.amp="{amp}"',
                "train.log_every=1000000",
            ]
            runs.append(one_step_rate(check, load_config(CIFAR10, overrides), amp))
            ok = ok and runs[-1]["finite"]
    return {"status": PASS if ok else FAIL, "runs": runs}


def one_step_rate(check: Check, config: TrainConfig, amp: str) -> dict[str, Any]:
    """One configuration of :func:`stage_train_step`."""
    sizes = check.sizes
    if check.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with quiet():
        run = train.setup_run(config, None)
    seconds = timed_steps(run, sizes.step_warmup, sizes.step_timed, check.cuda)
    reading = run.ledger.read()
    batch = config.train.batch_size
    result = {
        "batch_size": batch,
        "precision": "bf16-autocast" if run.use_bf16 else "fp32",
        "amp_setting": amp,
        "parameters": run.flow.num_parameters(),
        "timed_steps": sizes.step_timed,
        "step_ms": round(1000 * seconds / sizes.step_timed, 2),
        "images_per_s": round(batch * sizes.step_timed / seconds, 1),
        "mean_loss": reading.loss,
        "finite": reading.new_skips == 0 and reading.loss is not None and math.isfinite(reading.loss),
        "timer": "cuda-events" if check.cuda else "perf_counter",
    }
    if check.cuda:
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    del run
    return result


def fit_overrides(check: Check) -> list[str]:
    """The short run of stages ``fit`` and ``ddp`` (also handed to ``torchrun`` as ``--set`` flags)."""
    sizes = check.sizes
    return [
        *data_overrides(check, sizes.fit_items, "fit_images"),
        *sizes.fit_model,
        f"train.batch_size={sizes.fit_batch}",
        "train.epochs=2",
        f'train.amp="{"bf16" if check.cuda else "none"}"',
        "train.log_every=2",
        "train.sample_every=1",
        "train.sample_count=16",
        "train.eval_batch_size=256",
        "optim.warmup_steps=10",
        "optim.ema_decay=0.99",
    ]


def stage_fit(check: Check) -> dict[str, Any]:
    """A short ``fit``: finite and falling loss, checkpoints and grids written; a resume takes the right steps."""
    out_dir = fresh(check.workdir / "fit_run")
    config = load_config(CIFAR10, [*fit_overrides(check), f'out_dir="{out_dir}"'])
    started = time.perf_counter()
    with quiet():
        last = train.fit(config)
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_bpd"] for r in records if r["kind"] == "train"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    checkpoint = load_checkpoint(last)
    one_more_epoch = load_config(CIFAR10, [*fit_overrides(check), f'out_dir="{out_dir}"', "train.epochs=3"])
    with quiet():
        resumed = load_checkpoint(train.fit(one_more_epoch, resume=last))
    steps_per_epoch = checkpoint.step // checkpoint.epoch
    checks = {
        "finite": all(math.isfinite(x) for x in losses) and all(math.isfinite(r["val_bpd"]) for r in epochs),
        "falling": len(losses) >= 4 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2,
        "checkpoints": (out_dir / "last.pt").is_file() and (out_dir / "best.pt").is_file(),
        "sample_grids": len(list((out_dir / "samples").glob("epoch_*.png"))) >= 2,
        "resume_steps": resumed.step == 3 * steps_per_epoch,
    }
    check.produced["checkpoint"] = last
    return {
        "status": PASS if all(checks.values()) else FAIL,
        "checks": checks,
        "seconds": round(seconds, 1),
        "steps": checkpoint.step,
        "first_train_bpd": losses[0] if losses else None,
        "last_train_bpd": losses[-1] if losses else None,
        "val_bpd": [r["val_bpd"] for r in epochs],
        "precision": "bf16-autocast" if check.cuda else "fp32",
    }


def stage_ddp(check: Check) -> dict[str, Any]:
    """The short run under ``torchrun --nproc_per_node 1``: a process group of one (NCCL on CUDA, gloo on CPU)."""
    out_dir = fresh(check.workdir / "ddp_run")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    argv += [
        "-m",
        "training",
        "fit",
        "--config",
        str(CIFAR10),
        "--set",
        f'out_dir="{out_dir}"',
        "--set",
        "train.epochs=1",
    ]
    for override in fit_overrides(check):
        argv += ["--set", override]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=check.env(), cwd=REPO)
    backend = "nccl" if check.cuda else "gloo"
    result: dict[str, Any] = {"returncode": done.returncode, "seconds": round(time.perf_counter() - started, 1)}
    line = next((x for x in done.stdout.splitlines() if x.startswith("training ")), "")
    result["startup_line"] = line
    if done.returncode != 0 or not (out_dir / "last.pt").is_file():
        return {**result, "status": FAIL, "stderr_tail": done.stderr[-2000:]}
    checkpoint = load_checkpoint(out_dir / "last.pt")
    checks = {
        "process_group": f"DDP x1 ({backend})" in line,
        "world_size": checkpoint.extra.get("world_size") == 1,
        "finite": math.isfinite(checkpoint.best_val_bpd),
    }
    return {
        **result,
        "status": PASS if all(checks.values()) else FAIL,
        "checks": checks,
        "val_bpd": checkpoint.best_val_bpd,
    }


STAGES: dict[str, Callable[[Check], dict[str, Any]]] = {
    "versions": stage_versions,
    "train_step": stage_train_step,
    "fit": stage_fit,
    "ddp": stage_ddp,
    "runner": gpu_check_service.stage_runner,
    "oom": gpu_check_service.stage_oom,
    "service": gpu_check_service.stage_service,
    "service_load": gpu_check_service.stage_service_load,
    "cuda_tests": gpu_check_service.stage_cuda_tests,
}


# --------------------------------------------------------------------------------------------------- main
def run_stage(check: Check, name: str) -> dict[str, Any]:
    """One stage, timed; an exception is its FAIL (with the traceback's tail), never the end of the check."""
    if time.monotonic() > check.deadline:
        return {"status": SKIPPED, "reason": "the time budget (--budget-s) was spent before this stage"}
    if name != "versions" and check.report["stages"]["versions"]["status"] != PASS:
        return {"status": SKIPPED, "reason": "no device (stage versions failed)"}
    started = time.perf_counter()
    try:
        result = STAGES[name](check)
    except Exception as exc:
        result = {"status": FAIL, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
    result["stage_seconds"] = round(time.perf_counter() - started, 1)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--quick", action="store_true", help="toy sizes (every stage runs, in minutes on a CPU)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON report")
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES), help="a subset, in order")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stages that would start after it are skipped")
    parser.add_argument("--workdir", type=Path, default=None, help="keep runs and artifacts here (default: temporary)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.device.startswith("cuda"):
        torch.set_num_threads(1)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        check = Check(
            args.device, args.quick, QUICK if args.quick else Sizes(), workdir, args.out, started + args.budget_s
        )
        check.report = {
            "benchmark": "gpu_check",
            "device": args.device,
            "quick": args.quick,
            "sizes": asdict(check.sizes),
        }
        check.report["stages"] = {}
        for name in ["versions", *[s for s in args.stages if s != "versions"]]:
            stage = check.report["stages"][name] = run_stage(check, name)
            print(f"{name:13s} {stage['status']:8s} {stage.get('stage_seconds', 0):7.1f} s", file=sys.stderr)
            check.save()
        statuses = [stage["status"] for stage in check.report["stages"].values()]
        check.report["status"] = FAIL if FAIL in statuses else PASS
        check.report["wall_s"] = round(time.monotonic() - started, 1)
        check.save()
    print(
        json.dumps(
            {
                "status": check.report["status"],
                "wall_s": check.report["wall_s"],
                "stages": dict(zip(check.report["stages"], statuses, strict=True)),
            }
        )
    )
    return 0 if check.report["status"] == PASS else 1


if __name__ == "__main__":
    sys.exit(main())
