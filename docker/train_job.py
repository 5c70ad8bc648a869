"""The compose ``train`` job: ``fit`` a config, then ``export`` the best checkpoint into ``MODEL_DIR/NAME``.

Usage (the compose service's command is the arguments)::

    docker compose -f docker/compose.yaml --profile train run --rm train moons
    docker compose -f docker/compose.yaml --profile train run --rm train mnist --set train.epochs=5
    docker compose -f docker/compose.yaml --profile train run --rm train /models/my.toml --name mine

CONFIG is a TOML path, or the name of a config shipped with the package (``training/configs/NAME.toml``).
Checkpoints go to ``RUNS_DIR/NAME`` (a volume), the artifact to ``MODEL_DIR/NAME`` (the volume the ``api``
serves); ``export`` swaps it in atomically. A running ``api`` picks it up when restarted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def resolve_config(config: str) -> Path:
    """A config path as given, or the bundled ``training/configs/CONFIG.toml``."""
    path = Path(config)
    if path.suffix == ".toml" or os.sep in config:
        return path
    import training

    return Path(training.__file__).parent / "configs" / f"{config}.toml"


def fit_launcher(python: str, gpu_count: str | None) -> list[str]:
    """``python -m training`` for one process, or ``torchrun`` with one process per GPU.

    ``GPU_COUNT`` unset or empty: every visible GPU (one process on a CPU-only host).
    """
    count = int(gpu_count) if gpu_count else _visible_gpus()
    if count <= 1:
        return [python, "-m", "training"]
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={count}", "-m", "training"]


def _visible_gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run(command: list[str]) -> None:
    """Run one ``python -m training`` step, echoing it; exit with its status when it fails."""
    print("+", " ".join(command), flush=True)
    status = subprocess.call(command)
    if status != 0:
        sys.exit(status)


def main(argv: list[str] | None = None) -> None:
    """Parse the job's arguments, then fit and export."""
    parser = argparse.ArgumentParser(prog="train", description="fit a config, export it into MODEL_DIR")
    parser.add_argument("config", help="TOML path, or a bundled config name (moons, mnist, ...)")
    parser.add_argument("--name", help="model name in MODEL_DIR (default: the config file's name)")
    parser.add_argument("--version", default="1.0.0", help="artifact version written to card.json")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override passed to fit (repeatable)",
    )
    args = parser.parse_args(argv)

    config = resolve_config(args.config)
    if not config.is_file():
        parser.error(f"expected a TOML file or a bundled config name, got '{args.config}' ({config} is missing)")
    name = args.name or config.stem
    run_dir = Path(os.environ.get("RUNS_DIR", "runs")) / name
    model_dir = Path(os.environ.get("MODEL_DIR", "model_store")) / name
    python = [sys.executable, "-m", "training"]
    fit = [*fit_launcher(sys.executable, os.environ.get("GPU_COUNT")), "fit", "--config", str(config)]
    fit += ["--set", f"out_dir={run_dir}"]
    for override in args.overrides:
        fit += ["--set", override]
    run(fit)
    export = ["--checkpoint", str(run_dir / "best.pt"), "--out", str(model_dir), "--name", name]
    run([*python, "export", *export, "--version", args.version])
    print(f"exported {model_dir}; restart the api to serve it", flush=True)


if __name__ == "__main__":
    main()
