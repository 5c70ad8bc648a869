"""Bulk-scoring benchmark (not a test): images/s of ``python -m service.client score`` against the in-process rate.

A real server (``python -m service``, ``TORCH_THREADS`` as given) serves the model; ``--count`` of its own samples
are written as PNG files into a temporary folder; the client scores the folder over HTTP (``/anomaly``: PNG decode,
log-likelihood, every anomaly score) at each ``--concurrency``. The reference is the artifact itself in this
process (``torch.jit.load``): ``encode`` + ``log_prob``-equivalent work at the client's batch size with nothing
else running, an upper bound on what any client can get. JSON on stdout (and in ``--out``).

    python bench/bulk_score.py                                   # bundled mnist, 2,000 images, ~1-2 min on 2 cores
    python bench/bulk_score.py --count 500 --concurrency 1 4 8 --batch 16 --out bulk.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the service and tests packages

from service.client.__main__ import score_path  # noqa: E402
from service.client.scorer import ScoreConfig  # noqa: E402
from tests.support.server import cpu_seconds, spawn_server  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=REPO / "model_store")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--count", type=int, default=2000, help="images to score")
    parser.add_argument("--batch", type=int, default=32, help="items per request (the client's --batch)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--torch-threads", type=int, default=1, help="TORCH_THREADS of the server and the reference")
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def write_samples(url: str, model: str, count: int, folder: Path) -> None:
    """``count`` of the model's own samples (T = 0.8, seeded) as PNG files: in-distribution-looking digits."""
    written = 0
    with httpx.Client(base_url=url, timeout=120) as client:
        while written < count:
            n = min(256, count - written)
            body = {"model": model, "n": n, "temperature": 0.8, "seed": written, "format": "png"}
            response = client.post("/sample", json=body)
            response.raise_for_status()
            for image in response.json()["images"]:
                (folder / f"{written:06d}.png").write_bytes(base64.b64decode(image))
                written += 1


def in_process_rate(artifact: Path, batch: int, threads: int, seconds: float = 5.0) -> dict[str, float]:
    """Images/s of the artifact's ``encode`` at ``batch`` in this process, as the service runs it (no optimiser)."""
    torch.set_num_threads(threads)
    module = torch.jit.load(str(artifact / "model.ts"), map_location="cpu").eval()
    card = json.loads((artifact / "card.json").read_text())
    x = torch.randint(0, 256, (batch, *card["shape"]), generator=torch.Generator().manual_seed(0)).float() + 0.5
    times = []
    with torch.inference_mode(), torch.jit.optimized_execution(False):
        for _ in range(3):
            module.encode(x)
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at or len(times) < 5:
            started = time.perf_counter()
            module.encode(x)
            times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {"batch": batch, "seconds_per_batch": median, "images_per_s": batch / median}


def client_rate(folder: Path, url: str, model: str, batch: int, concurrency: int, pid: int) -> dict[str, Any]:
    """One client run over the whole folder (a fresh output file, so nothing is skipped)."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "scores.csv"
        config = ScoreConfig(model=model, batch=batch, concurrency=concurrency)
        cpu_before = cpu_seconds(pid)
        summary = asyncio.run(score_path(folder, url, out, config))
        server_cpu = cpu_seconds(pid) - cpu_before
    result = summary.as_dict()
    result.update(concurrency=concurrency, batch=batch, server_cpu_s_per_image=server_cpu / max(summary.scored, 1))
    return result


def main() -> None:
    args = parse_args()
    artifact = args.model_dir / args.model
    env = {"TORCH_THREADS": str(args.torch_threads), "LOG_LEVEL": "warning"}
    results: dict[str, Any] = {"model": args.model, "count": args.count, "cpus": os.cpu_count(), "runs": []}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "images"
        folder.mkdir()
        with spawn_server(args.model_dir, Path(scratch) / "server.log", env=env) as (process, url):
            write_samples(url, args.model, args.count, folder)
            for concurrency in args.concurrency:
                run = client_rate(folder, url, args.model, args.batch, concurrency, process.pid)
                print(f"client c={concurrency:<3d} {run['items_per_s']:8.1f} images/s", file=sys.stderr)
                results["runs"].append(run)
    reference = in_process_rate(artifact, args.batch, args.torch_threads)
    results["in_process"] = reference
    for run in results["runs"]:
        run["vs_in_process"] = run["items_per_s"] / reference["images_per_s"]
    print(f"in-process encode   {reference['images_per_s']:8.1f} images/s", file=sys.stderr)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
