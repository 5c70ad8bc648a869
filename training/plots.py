"""Pictures of a run: image sample grids (Pillow), 2-D/1-D sample plots and training curves (matplotlib).

matplotlib comes with the optional ``data`` extra; without it the vector plots and curves are skipped and
``None`` is returned, while image grids (Pillow, a core dependency) always work.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def to_pixels(x: Tensor) -> Tensor:
    """Continuous intensities ``(N, C, H, W)`` on the 0–256 scale → 8-bit pixels ``floor(clamp(x, 0, 255))``."""
    return torch.floor(x.detach().float().cpu().clamp(0, 255)).to(torch.uint8)


def save_image_grid(
    images: Tensor, path: str | Path, nrow: int | None = None, padding: int = 2, scale: int = 1
) -> Path:
    """Write a grid of images as a PNG.

    Args:
        images: ``(N, C, H, W)`` with C in (1, 3): ``uint8`` pixels, or floats on the 0–255 scale.
        path: output file.
        nrow: images per row (default ``ceil(sqrt(N))``).
        padding: pixels between images.
        scale: integer upscaling factor (nearest neighbour), for tiny images such as 8×8 digits.
    """
    from PIL import Image

    pixels = images if images.dtype == torch.uint8 else to_pixels(images)
    n, c, h, w = pixels.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = np.zeros((c, ncol * (h + padding) + padding, nrow * (w + padding) + padding), dtype=np.uint8)
    for i in range(n):
        row, col = divmod(i, nrow)
        top, left = padding + row * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = pixels[i].numpy()
    image = Image.fromarray(grid[0] if c == 1 else grid.transpose(1, 2, 0))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def save_vector_samples(
    samples: Tensor,
    path: str | Path,
    reference: Tensor | None = None,
    title: str = "",
    flow: torch.nn.Module | None = None,
) -> Path | None:
    """Scatter plot (2-D) or histogram (1-D) of samples ``(N, D)``, next to reference data when given.

    For 1-D data and a ``flow``, the model density ``exp(log_prob)`` is drawn over each histogram.

    Returns:
        The path, or None when matplotlib is missing or ``D > 2``.
    """
    plt = _pyplot()
    if plt is None or samples.shape[1] > 2:
        return None
    samples = samples.detach().float().cpu().numpy()
    panels = [("samples", samples)] + ([("data", reference.float().cpu().numpy())] if reference is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (label, values) in zip(axes[0], panels, strict=True):
        if values.shape[1] == 2:
            ax.scatter(values[:, 0], values[:, 1], s=2, alpha=0.5)
            ax.set_aspect("equal")
        else:
            ax.hist(values[:, 0], bins=80, density=True, alpha=0.8)
            if flow is not None:
                low, high = ax.get_xlim()
                grid = torch.linspace(low, high, 400)[:, None]
                with torch.no_grad():
                    density = flow.log_prob(grid.to(next(flow.parameters()).device)).exp().cpu()
                ax.plot(grid[:, 0].numpy(), density.numpy(), "k-", lw=1.2, label="model density")
                ax.legend()
        ax.set_title(f"{title} {label}".strip())
    if len(panels) == 2 and samples.shape[1] == 2:  # same axes for a fair comparison
        low = np.minimum(samples.min(0), panels[1][1].min(0))
        high = np.maximum(samples.max(0), panels[1][1].max(0))
        for ax in axes[0]:
            ax.set_xlim(low[0], high[0])
            ax.set_ylim(low[1], high[1])
    return _save(fig, path)


def plot_training_curves(metrics_file: str | Path, path: str | Path, title: str = "") -> Path | None:
    """Training (per logged step) and validation (per epoch) bits/dim against training time, from ``metrics.jsonl``.

    Every figure is the standard measure (one uniform dequantization draw per image). Validation is drawn for
    the EMA weights (``val_bpd``) and, when an EMA is kept, for the raw weights too (``raw_val_bpd``). Training
    steps get their wall time by interpolating between the epochs' ``elapsed_s`` (a resumed run's pause is not
    counted).

    Returns:
        The path, or None when matplotlib is missing.
    """
    plt = _pyplot()
    if plt is None:
        return None
    records = [json.loads(line) for line in Path(metrics_file).read_text().splitlines()]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    train = [r for r in records if r.get("kind") == "train"]
    clock = ([0] + [r["step"] for r in epochs], [0.0] + [r["elapsed_s"] / 60 for r in epochs])

    def minutes(step: int) -> float:
        return float(np.interp(step, *clock)) if len(clock[0]) > 1 else float(step)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([minutes(r["step"]) for r in train], [r["train_bpd"] for r in train], lw=0.8, alpha=0.6,
            label="training batches (train mode)")  # fmt: skip
    raw = [r for r in epochs if "raw_val_bpd" in r]
    label = "validation, EMA weights" if raw else "validation"
    ax.plot([r["elapsed_s"] / 60 for r in epochs], [r["val_bpd"] for r in epochs], "o-", ms=3, label=label)
    if raw:
        ax.plot([r["elapsed_s"] / 60 for r in raw], [r["raw_val_bpd"] for r in raw], "s-", ms=3,
                label="validation, raw weights")  # fmt: skip
    values = [r["train_bpd"] for r in train[len(train) // 10 :]] + [r["raw_val_bpd"] for r in raw]
    values += [] if raw else [r["val_bpd"] for r in epochs]
    if values:  # skip the first steps, whose loss is far above the rest (and a diverging average)
        low, high = min(values), max(values)
        margin = 0.05 * (high - low) + 1e-3
        ax.set_ylim(low - margin, high + margin)
    ax.set_xlabel("training time (minutes)" if len(clock[0]) > 1 else "optimizer step")
    ax.set_ylabel("bits/dim (x + U[0,1), one draw)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
