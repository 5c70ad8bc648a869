"""Out-of-distribution detection with the service's anomaly scores: AUROC per score and OOD set.

In-distribution: the held-out test digits of the artifact's ``mnist5k`` split (never trained on, and not the
validation digits whose scores the card stores). Out-of-distribution sets are built without downloads:

* ``noise``: uniform 8-bit noise;
* ``constant``: the 256 constant images, one per intensity (0 = black);
* ``inverted``: the test digits, ``255 − x``;
* ``sklearn_digits``: scikit-learn's 8×8 digits (0..16 rescaled to 0..255) upscaled to 28×28 (bilinear);
* ``lfw_faces``: scikit-image's ``lfw_subset`` faces (200, 25×25) resized to 28×28 (bilinear);
* ``shifted``: the test digits shifted by 6 pixels (up, down, left or right at random, zero fill).

Scores are computed exactly as the service computes them (``service.engine.runner`` + ``artifact.scores``):
``nll`` (bits/dim), ``complexity`` with the PNG and the deflate compressor, ``latent`` (the latent's negative
log-density per dimension under the Gaussian the card fitted to the validation latents), ``combined`` (Fisher's
combination of the conformal p-values of ``complexity`` and ``latent``; the service's default), and ``typicality`` of
single items (``|bits/dim − H|``, batch size 1) and of batches of 10 and 50 items drawn from one set.

    python bench/ood.py                                   # model_store/mnist, markdown table on stdout
    python bench/ood.py --model-dir model_store/mnist --json ood.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from artifact import scores as anomaly
from service.engine.runner import ModelRunner

SHIFT = 6
TYPICALITY_BATCHES = (10, 50)  # batch sizes M of the batch-level typicality columns


def held_out_digits(card: dict) -> np.ndarray:
    """The artifact's test split (uint8 ``(N, 1, 28, 28)``), rebuilt from the training config in its card."""
    from training.config import config_from_dict
    from training.data import load_data

    data = load_data(config_from_dict(card["training_config"]).data)
    return data.split("test").numpy()


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """``(N, H, W)`` floats in 0..255 → uint8 ``(N, 1, size, size)``, bilinear."""
    out = [
        np.asarray(Image.fromarray(np.round(image).astype(np.uint8)).resize((size, size), Image.BILINEAR))
        for image in images
    ]
    return np.stack(out)[:, None]


def shifted(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each digit moved by ``SHIFT`` pixels in one of four directions, vacated pixels black."""
    out = np.zeros_like(digits)
    for index, direction in enumerate(rng.integers(0, 4, len(digits))):
        image = digits[index, 0]
        target = out[index, 0]
        if direction == 0:
            target[SHIFT:] = image[:-SHIFT]
        elif direction == 1:
            target[:-SHIFT] = image[SHIFT:]
        elif direction == 2:
            target[:, SHIFT:] = image[:, :-SHIFT]
        else:
            target[:, :-SHIFT] = image[:, SHIFT:]
    return out


def ood_sets(digits: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """The six out-of-distribution sets, uint8 ``(N, 1, 28, 28)`` each."""
    from skimage.data import lfw_subset
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    n, size = len(digits), digits.shape[-1]
    small = load_digits().images  # (1797, 8, 8), 0..16
    picked = small[rng.choice(len(small), size=n, replace=False)] * (255.0 / 16.0)
    return {
        "noise": rng.integers(0, 256, size=digits.shape, dtype=np.uint8),
        "constant": np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None, None], (256, 1, size, size)).copy(),
        "inverted": 255 - digits,
        "sklearn_digits": resize(picked, size),
        "lfw_faces": resize(lfw_subset() * 255.0, size),
        "shifted": shifted(digits, rng),
    }


def latents_and_bits_per_dim(
    runner: ModelRunner, pixels: np.ndarray, batch_size: int = 250
) -> tuple[np.ndarray, np.ndarray]:
    """The service's latents ``(N, D)`` and bits/dim ``(N,)`` of 8-bit images (bin centre, ``log N(z) + log_det``)."""
    latents, bits = [], []
    with torch.inference_mode():
        for batch in torch.from_numpy(pixels.astype(np.float32)).split(batch_size):
            z, log_det = runner.encode(runner.scoring_input(batch))
            latents.append(z)
            bits.append(runner.bits_per_dim(runner.log_likelihood(z, log_det)))
    return torch.cat(latents).numpy(), torch.cat(bits).numpy()


def latent_gaussian(runner: ModelRunner) -> anomaly.LatentGaussian:
    """The Gaussian the card fitted to the reference latents at export."""
    references = runner.card.reference_scores
    assert references is not None and references.latent_mean is not None, "re-export: the card lacks latent"
    return anomaly.LatentGaussian(np.asarray(references.latent_mean), np.asarray(references.latent_std))


def item_scores(
    runner: ModelRunner, pixels: np.ndarray, entropy: float, gaussian: anomaly.LatentGaussian
) -> dict[str, np.ndarray]:
    """Every per-item score of ``pixels``."""
    references = runner.card.reference_scores
    assert references is not None and references.complexity is not None and references.latent is not None
    latents, bits = latents_and_bits_per_dim(runner, pixels)
    complexity = {c: anomaly.complexity_scores(bits, pixels, c) for c in anomaly.COMPRESSORS}
    latent = anomaly.latent_scores(latents, gaussian)
    card_complexity = complexity[references.complexity_compressor or anomaly.DEFAULT_COMPRESSOR]
    return {
        "nll": bits,
        **{f"complexity ({c})": values for c, values in complexity.items()},
        "latent": latent,
        "combined": anomaly.combined_scores(
            [card_complexity, latent], [np.asarray(references.complexity), np.asarray(references.latent)]
        ),
        "typicality (M=1)": np.abs(bits - entropy),
    }


def batch_typicality(
    bits: np.ndarray, entropy: float, size: int, rng: np.random.Generator, count: int = 200
) -> np.ndarray:
    """``|mean bits/dim − H|`` of ``count`` batches of ``size`` distinct items drawn from one set."""
    picks = np.stack([rng.choice(len(bits), size, replace=False) for _ in range(count)])
    return np.abs(bits[picks].mean(axis=1) - entropy)


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """Area under the ROC curve of "outside scores higher than inside"."""
    labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    return float(roc_auc_score(labels, np.r_[inside, outside]))


def flagged_fractions(runner: ModelRunner, scores: dict[str, np.ndarray], fpr: float) -> dict[str, float]:
    """Fraction flagged at ``fpr`` by the service's calibration against the card's reference scores."""
    references = runner.card.reference_scores
    assert references is not None and references.complexity is not None, "re-export: the card lacks complexity"
    compressor = references.complexity_compressor or anomaly.DEFAULT_COMPRESSOR
    _, bootstrap = anomaly.bootstrap_typicality(np.asarray(references.bits_per_dim), batch_size=1)
    pairs = {
        "nll": (scores["nll"], references.bits_per_dim),
        f"complexity ({compressor})": (scores[f"complexity ({compressor})"], references.complexity),
        "latent": (scores["latent"], references.latent),
        "combined": (
            scores["combined"],
            anomaly.combined_reference([np.asarray(references.complexity), np.asarray(references.latent)]),
        ),
        "typicality (M=1)": (scores["typicality (M=1)"], bootstrap),
    }
    return {
        name: float(anomaly.calibrate(values, np.asarray(reference), fpr).is_anomaly.mean())
        for name, (values, reference) in pairs.items()
    }


def table(rows: dict[str, dict[str, float]], first: str, bold_from: float | None = None) -> list[str]:
    """A markdown table, one row per set and one column per score."""
    columns = list(next(iter(rows.values())))
    lines = [f"| {first} | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for name, row in rows.items():
        cells = [
            f"**{row[c]:.3f}**" if bold_from is not None and row[c] >= bold_from else f"{row[c]:.3f}" for c in columns
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("model_store/mnist"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fpr", type=float, default=0.01, help="false-positive rate of the flagged-fraction table")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    runner = ModelRunner.load(args.model_dir, torch.device("cpu"))
    card = json.loads((args.model_dir / "card.json").read_text())
    assert runner.card.reference_scores is not None, "the card has no reference scores"
    entropy = float(np.mean(runner.card.reference_scores.bits_per_dim))
    digits = held_out_digits(card)
    gaussian = latent_gaussian(runner)
    inside = item_scores(runner, digits, entropy, gaussian)
    rng = np.random.default_rng(args.seed + 1)
    for size in TYPICALITY_BATCHES:
        inside[f"typicality (M={size})"] = batch_typicality(inside["nll"], entropy, size, rng)

    aurocs: dict[str, dict[str, float]] = {}
    flagged = {f"test digits ({inside['nll'].mean():.2f})": flagged_fractions(runner, inside, args.fpr)}
    for name, pixels in ood_sets(digits, args.seed).items():
        outside = item_scores(runner, pixels, entropy, gaussian)
        for size in TYPICALITY_BATCHES:
            outside[f"typicality (M={size})"] = batch_typicality(outside["nll"], entropy, size, rng)
        label = f"{name} ({outside['nll'].mean():.2f})"
        aurocs[label] = {score: auroc(inside[score], outside[score]) for score in inside}
        flagged[label] = flagged_fractions(runner, outside, args.fpr)
        if name == "constant":
            black = {
                score: float(values[0]) for score, values in outside.items() if "M=1)" in score or "M=" not in score
            }
    aurocs["**worst**"] = {score: min(row[score] for row in aurocs.values()) for score in inside}

    print(
        f"model {args.model_dir} ({runner.card.name}, created {card.get('created_at')}), "
        f"{len(digits)} test digits, H = {entropy:.4f} bits/dim; rows: set (mean bits/dim)\n"
    )
    print("\n".join(table(aurocs, "AUROC vs test digits", bold_from=0.95)))
    print(f"\nFlagged at fpr = {args.fpr} (conformal p-values against the card's reference scores):\n")
    print("\n".join(table(flagged, "fraction flagged")))
    percentiles = {score: 100.0 * float(np.mean(inside[score] < value)) for score, value in black.items()}
    print(
        "\nall-black image: "
        + ", ".join(f"{s} {v:.3f} ({percentiles[s]:.1f}th percentile of test digits)" for s, v in black.items())
    )
    print(f"\n{time.perf_counter() - started:.0f} s")
    if args.json is not None:
        numbers = {"auroc": aurocs, "flagged": flagged, "black": black, "entropy": entropy, "fpr": args.fpr}
        args.json.write_text(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
