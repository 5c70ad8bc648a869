"""Command line: ``python -m training {fit,evaluate,sample,export} ...`` (console script ``realnvp-train``).

Examples::

    python -m training fit --config training/configs/moons.toml --set train.epochs=5
    python -m training fit --config training/configs/moons.toml --resume            # runs/moons/last.pt
    torchrun --nproc_per_node 2 -m training fit --config training/configs/mnist.toml
    python -m training evaluate --checkpoint runs/mnist/best.pt --split test --samples 16
    python -m training sample --checkpoint runs/mnist/best.pt --n 64 --temperature 0.7 --out grid.png
    python -m training export --checkpoint runs/mnist/best.pt --out model_store/mnist
    python -m training curves --metrics runs/mnist/metrics.jsonl --out docs/mnist_curve.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.checkpoint import CheckpointError
from training.config import ConfigError
from training.data_files import DataError

EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="realnvp-train", description="Train, evaluate, sample and export RealNVP normalizing flows."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser("fit", help="train a flow from a TOML config")
    fit.add_argument("--config", type=Path, help="TOML config (optional with --resume PATH)")
    fit.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=3e-4 (repeatable)",
    )
    fit.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        metavar="CHECKPOINT",
        help="continue from CHECKPOINT (default: OUT_DIR/last.pt of the config)",
    )
    fit.add_argument("--device", help="force a device: cpu, cuda, cuda:N (same as --set train.device=...)")

    evaluate = commands.add_parser("evaluate", help="bits/dim of a checkpoint on a split")
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    evaluate.add_argument("--split", default="test", choices=("train", "val", "test"))
    evaluate.add_argument(
        "--samples",
        type=int,
        default=0,
        metavar="K",
        help="also an importance-weighted estimate over K dequantization draws (images)",
    )
    evaluate.add_argument("--batch-size", type=int, default=0)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--no-ema", action="store_true", help="evaluate the raw weights, not the EMA")

    sample = commands.add_parser("sample", help="a PNG of samples from a checkpoint")
    sample.add_argument("--checkpoint", type=Path, required=True)
    sample.add_argument("--n", type=int, default=64)
    sample.add_argument("--temperature", type=float, default=0.7)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", type=Path, required=True)
    sample.add_argument("--device", default="cpu")

    curves = commands.add_parser("curves", help="PNG of the training curves of a run's metrics.jsonl")
    curves.add_argument("--metrics", type=Path, required=True, help="e.g. runs/mnist/metrics.jsonl")
    curves.add_argument("--out", type=Path, required=True)
    curves.add_argument("--title", default="")

    export = commands.add_parser("export", help="write and verify a model_store artifact")
    export.add_argument("--checkpoint", type=Path, required=True)
    export.add_argument("--out", type=Path, required=True, help="artifact folder, e.g. model_store/mnist")
    export.add_argument("--name", help="artifact name (default: the folder name)")
    export.add_argument("--version", default="1.0.0")
    export.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA")
    export.add_argument(
        "--ema", action="store_true", help="export the EMA (default: whichever of EMA and raw validates better)"
    )
    export.add_argument(
        "--iw-samples",
        type=int,
        default=0,
        metavar="K",
        help="also record the importance-weighted test bits/dim over K dequantization draws",
    )
    refresh = commands.add_parser(
        "refresh-card", help="recompute an artifact's density figures from its model.ts (a current card)"
    )
    refresh.add_argument("artifact", help="the artifact folder, e.g. model_store/mnist")
    refresh.add_argument("--iw-samples", type=int, default=16, metavar="K", help="k of the importance-weighted bound")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "fit":
            return _fit(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "sample":
            return _sample(args)
        if args.command == "curves":
            return _curves(args)
        if args.command == "refresh-card":
            return _refresh_card(args)
        return _export(args)
    except (ConfigError, DataError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _fit(args: argparse.Namespace) -> int:
    from training.checkpoint import load_checkpoint
    from training.config import apply_overrides, load_config
    from training.train import Interrupted, TrainingError, fit

    overrides = list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])
    resume = None
    if args.config is not None:
        config = load_config(args.config, overrides)
        if args.resume is not None:
            resume = Path(config.out_dir) / "last.pt" if args.resume == "last" else Path(args.resume)
    elif args.resume not in (None, "last"):
        resume = Path(args.resume)  # the checkpoint's own config, with the overrides on top
        config = apply_overrides(load_checkpoint(resume).config, overrides)
    else:
        raise ConfigError("fit needs --config FILE (or --resume CHECKPOINT to continue a run)")
    if resume is not None and not resume.is_file():
        raise CheckpointError(f"nothing to resume: checkpoint '{resume}' does not exist")
    try:
        last = fit(config, resume=resume)
    except Interrupted as stop:
        print(f"{stop}; continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"checkpoint": str(last), "best": str(Path(config.out_dir) / "best.pt")}))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.checkpoint, args.split, args.samples, args.batch_size, args.device, use_ema=not args.no_ema
    )
    print(json.dumps(result, indent=2))
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch

    from training.checkpoint import load_flow
    from training.data import load_data
    from training.plots import save_image_grid, save_vector_samples

    if args.n < 1 or not args.temperature > 0:
        raise ConfigError(f"expected --n >= 1 and --temperature > 0, got {args.n} and {args.temperature}")
    flow, checkpoint = load_flow(args.checkpoint, device=args.device)
    with torch.no_grad():
        samples = flow.sample(args.n, args.temperature, generator=torch.Generator().manual_seed(args.seed))
    if flow.data_kind == "image":
        path = save_image_grid(samples, args.out, scale=max(1, 64 // flow.event_shape[-1]))
    else:
        try:  # held-out data next to the samples, when the data set is at hand
            reference = load_data(checkpoint.config.data).split("val")
        except DataError:
            reference = None
        path = save_vector_samples(samples, args.out, reference=reference, title=checkpoint.config.name, flow=flow)
        if path is None:
            raise ConfigError("plotting vector samples needs matplotlib (optional 'data' extra) and D <= 2")
    print(json.dumps({"out": str(path), "n": args.n, "temperature": args.temperature}))
    return 0


def _curves(args: argparse.Namespace) -> int:
    from training.plots import plot_training_curves

    if not args.metrics.is_file():
        raise ConfigError(f"metrics file '{args.metrics}' does not exist")
    path = plot_training_curves(args.metrics, args.out, title=args.title)
    if path is None:
        raise ConfigError("plotting curves needs matplotlib (optional 'data' extra)")
    print(json.dumps({"out": str(path)}))
    return 0


def _export(args: argparse.Namespace) -> int:
    from training.export import ExportError, export_checkpoint

    try:
        card = export_checkpoint(
            args.checkpoint,
            args.out,
            name=args.name,
            version=args.version,
            iw_samples=args.iw_samples,
            use_ema=False if args.no_ema else (True if args.ema else None),
        )
    except ExportError as err:
        print(f"error: export refused: {err}", file=sys.stderr)
        return 1
    summary = {k: card[k] for k in ("name", "flow_type", "data_kind", "shape", "metrics", "sha256")}
    print(json.dumps({"artifact": str(args.out), **summary}, indent=2))
    return 0


def _refresh_card(args: argparse.Namespace) -> int:
    from artifact import ArtifactError
    from training.export import refresh_card

    try:
        card = refresh_card(args.artifact, iw_samples=args.iw_samples)
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"artifact": str(args.artifact), "metrics": card["metrics"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
