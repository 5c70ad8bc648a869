"""Out-of-distribution detection with the service's anomaly scores: AUROC per score and OOD family.

In-distribution: the held-out test digits of the artifact's ``mnist5k`` split (never trained on, and not the
validation digits whose scores the card stores). The out-of-distribution families (``FAMILIES``, 30 of them in
five groups) are built without downloads, each by a named function whose docstring says what it is and why it is
out of distribution:

* ``synthetic``: uniform noise, the 256 constant images;
* ``geometric``: the test digits shifted (3 and 6 pixels), flipped, rotated, scaled, sheared, elastically warped;
* ``photometric``: the test digits inverted, dimmed, gamma-curved, brightened, noisy, occluded, partly erased,
  blurred, with thick or thin strokes;
* ``characters``: other digits and characters: scikit-learn's 8×8 digits, digits and letters rendered from the
  fonts on this machine, random pen strokes, two test digits overlaid;
* ``natural``: scikit-image's ``lfw_subset`` faces, crops of its bundled photographs, crops of its photographed
  text.

Each family draws from its own generator, seeded by ``--seed`` and the family's name, so a family is the same
whichever others are built. Families from the test digits transform all 500 of them; the others build 500 items
(``constant``: 256, ``lfw_faces``: 200).

Scores are computed exactly as the service computes them (``service.engine.runner`` + ``artifact.scores``):
``nll`` (bits/dim), ``complexity`` with the PNG and the deflate compressor, ``latent`` (the latent's negative
log-density per dimension under the Gaussian the card fitted to the validation latents), ``coarse`` (the
coarsest scale's latent under the prior), ``combined`` (Fisher's combination of the conformal p-values of
``complexity``, ``latent`` and ``coarse``; the service's default), ``combined (no coarse)`` (the two-part default
of cards exported before ``coarse``, side by side), and ``typicality`` of single items (``|bits/dim − H|``, batch
size 1) and of batches of 10 and 50 items drawn from one set.

    python bench/ood.py                                   # model_store/mnist, markdown tables on stdout
    python bench/ood.py --model-dir model_store/mnist --json ood.json
    python bench/ood.py --families shifted hflip          # a few families only
    python bench/ood.py --protocol development --seed 1   # training digits: a check that leaves the test digits alone

``--protocol development`` takes training digits 500–999 as the in-distribution set and builds the families
from training digits 0–499: a second look at a candidate score that does not touch the test digits. The flow
has trained on both, so its likelihood-based scores look better there than on unseen digits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from artifact import scores as anomaly
from service.engine.runner import ModelRunner
from service.scoring.references import References

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for bench.*
from bench.ood_families import FAMILIES, family_rng, font_files, held_out_digits, ood_sets

TYPICALITY_BATCHES = (10, 50)  # batch sizes M of the batch-level typicality columns
GOAL = 0.95  # the AUROC goal of the default score (issue 11); cells at or above it are bold


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


def service_references(runner: ModelRunner) -> References:
    """The card's references as the service holds them (the parts ``combined`` takes, its reference scores)."""
    refs = References.from_card(runner.card)
    assert refs is not None and refs.combined_parts, "re-export: the card lacks complexity or latent references"
    return refs


def combined_of(parts: dict[str, np.ndarray], refs: References, names: tuple[str, ...]) -> np.ndarray:
    """Fisher's combination of the ``names`` parts of ``parts`` against their references."""
    return anomaly.combined_scores([parts[name] for name in names], [getattr(refs, name) for name in names])


def item_scores(
    runner: ModelRunner, pixels: np.ndarray, entropy: float, gaussian: anomaly.LatentGaussian
) -> dict[str, np.ndarray]:
    """Every per-item score of ``pixels``."""
    latents, bits = latents_and_bits_per_dim(runner, pixels)
    complexity = {c: anomaly.complexity_scores(bits, pixels, c) for c in anomaly.COMPRESSORS}
    latent = anomaly.latent_scores(latents, gaussian)
    refs = service_references(runner)
    parts = {"complexity": complexity[refs.compressor], "latent": latent}
    scores = {"nll": bits, **{f"complexity ({c})": values for c, values in complexity.items()}, "latent": latent}
    if refs.coarse_dims is not None:
        scores["coarse"] = parts["coarse"] = anomaly.coarse_scores(latents, refs.coarse_dims)
    scores["combined"] = combined_of(parts, refs, refs.combined_parts)
    if "coarse" in refs.combined_parts:  # beside it, the two-part default of cards exported before coarse
        scores["combined (no coarse)"] = combined_of(parts, refs, anomaly.COMBINED_REQUIRED)
    scores["typicality (M=1)"] = np.abs(bits - entropy)
    return scores


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
    }
    refs = service_references(runner)
    if refs.coarse is not None:
        pairs["coarse"] = (scores["coarse"], refs.coarse)
    pairs["combined"] = (scores["combined"], refs.combined)
    if "combined (no coarse)" in scores:
        two_parts = [getattr(refs, part) for part in anomaly.COMBINED_REQUIRED]
        pairs["combined (no coarse)"] = (scores["combined (no coarse)"], anomaly.combined_reference(two_parts))
    pairs["typicality (M=1)"] = (scores["typicality (M=1)"], bootstrap)
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


def scores_with_batches(
    runner: ModelRunner, pixels: np.ndarray, entropy: float, gaussian: anomaly.LatentGaussian, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """``item_scores`` and the batch-level typicality of ``TYPICALITY_BATCHES`` for one set."""
    scores = item_scores(runner, pixels, entropy, gaussian)
    for size in TYPICALITY_BATCHES:
        scores[f"typicality (M={size})"] = batch_typicality(scores["nll"], entropy, size, rng)
    return scores


def black_image(runner: ModelRunner, entropy: float, gaussian: anomaly.LatentGaussian) -> dict[str, float]:
    """Every per-item score of the all-black image (the likelihood trap; scored whichever families run)."""
    pixels = np.zeros((1, *runner.item_shape), dtype=np.uint8)
    return {score: float(values[0]) for score, values in item_scores(runner, pixels, entropy, gaussian).items()}


def evaluate(args: argparse.Namespace) -> dict:
    """Score the test digits and every requested family; the numbers that ``report`` prints and ``--json`` keeps."""
    runner = ModelRunner.load(args.model_dir, torch.device("cpu"))
    card = json.loads((args.model_dir / "card.json").read_text())
    assert runner.card.reference_scores is not None, "the card has no reference scores"
    entropy = float(np.mean(runner.card.reference_scores.bits_per_dim))
    if args.protocol == "test":
        digits = family_digits = held_out_digits(card)
    else:
        training = held_out_digits(card, "train")[:1000]
        digits, family_digits = training[500:], training[:500]
    gaussian = latent_gaussian(runner)
    inside = scores_with_batches(runner, digits, entropy, gaussian, family_rng(args.seed, "test digits batches"))
    aurocs: dict[str, dict[str, float]] = {}
    flagged = {f"test digits ({inside['nll'].mean():.2f})": flagged_fractions(runner, inside, args.fpr)}
    families: dict[str, dict] = {}
    for name, pixels in ood_sets(family_digits, args.seed, args.families).items():
        outside = scores_with_batches(runner, pixels, entropy, gaussian, family_rng(args.seed, f"{name} batches"))
        label = f"{name} ({outside['nll'].mean():.2f})"
        aurocs[label] = {score: auroc(inside[score], outside[score]) for score in inside}
        flagged[label] = flagged_fractions(runner, outside, args.fpr)
        families[name] = {"group": FAMILIES[name].group, "items": len(pixels), "label": label}
    aurocs["**worst**"] = {score: min(row[score] for row in aurocs.values()) for score in inside}
    black = black_image(runner, entropy, gaussian)
    return {
        "model": {"dir": str(args.model_dir), "name": runner.card.name, "created_at": card.get("created_at")},
        "protocol": args.protocol,
        "test_digits": len(digits),
        "entropy": entropy,
        "fpr": args.fpr,
        "seed": args.seed,
        "default_score": anomaly.default_score(runner.card.is_image),
        "fonts": len(font_files()),
        "families": families,
        "auroc": aurocs,
        "flagged": flagged,
        "black": black,
        "black_percentile": {score: 100.0 * float(np.mean(inside[score] < value)) for score, value in black.items()},
    }


def report(numbers: dict) -> list[str]:
    """The markdown tables and summary lines of ``evaluate``'s numbers."""
    model, default = numbers["model"], numbers["default_score"]
    below = {
        name: numbers["auroc"][family["label"]][default]
        for name, family in numbers["families"].items()
        if numbers["auroc"][family["label"]][default] < GOAL
    }
    return [
        f"model {model['dir']} ({model['name']}, created {model['created_at']}), {numbers['protocol']} protocol: "
        f"{numbers['test_digits']} in-distribution digits, H = {numbers['entropy']:.4f} bits/dim, seed "
        f"{numbers['seed']}, {numbers['fonts']} font files; "
        "rows: set (mean bits/dim)\n",
        *table(numbers["auroc"], "AUROC vs test digits", bold_from=GOAL),
        f"\ndefault score ({default}) ≥ {GOAL} on {len(numbers['families']) - len(below)} of "
        f"{len(numbers['families'])} families; below on: "
        + (", ".join(f"{name} ({value:.3f})" for name, value in sorted(below.items(), key=lambda i: i[1])) or "none"),
        f"\nFlagged at fpr = {numbers['fpr']} (conformal p-values against the card's reference scores):\n",
        *table(numbers["flagged"], "fraction flagged"),
        "\nall-black image: "
        + ", ".join(
            f"{s} {v:.3f} ({numbers['black_percentile'][s]:.1f}th percentile of test digits)"
            for s, v in numbers["black"].items()
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("model_store/mnist"))
    parser.add_argument("--seed", type=int, default=0, help="seeds every family's generator (with its name)")
    parser.add_argument("--fpr", type=float, default=0.01, help="false-positive rate of the flagged-fraction table")
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), help="only these (default: all)")
    parser.add_argument(
        "--protocol",
        choices=("test", "development"),
        default="test",
        help="test digits against families of test digits, or training digits (500-999) against families of others",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    numbers = evaluate(args)
    numbers["seconds"] = time.perf_counter() - started
    print("\n".join(report(numbers)))
    print(f"\n{numbers['seconds']:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
