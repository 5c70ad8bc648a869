"""Load benchmark of the HTTP service (not a test): throughput and latency under concurrency, against references.

For ``/log-likelihood`` (one image per request, base64 PNG) and ``/sample`` (``n=1``) on one model, at each
concurrency (default 1, 8, 64), closed-loop async httpx clients send requests for ``--duration`` seconds and the
script reports requests/s and p50/p95/p99 latency for

* ``batched``: the service with the given batching settings (default: the service's defaults);
* ``unbatched``: the same service with ``MAX_BATCH_SIZE=1``;
* ``in_process``: the artifact itself (``torch.jit.load``), called in this process at the batch size the batched
  server formed at that concurrency (its mean, read from ``/metrics``), with no server running.

Goals (CPU): at concurrency 64, batched >= 0.8x in-process and >= 4x unbatched throughput; at concurrency 1,
batched p50 within 3 ms of the in-process single-item time. JSON on stdout (and in ``--out``).

    python bench/service_load.py                       # bundled model_store/mnist
    python bench/service_load.py --model-dir /tmp/store --model mnist --duration 5 --out bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from service.core.config import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for tests.*
from tests.support.server import spawn_server

REPO = Path(__file__).resolve().parents[1]
ENDPOINTS = ("log-likelihood", "sample")
DIRECTION = {"log-likelihood": "encode", "sample": "decode"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=REPO / "model_store")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load per point")
    parser.add_argument("--endpoints", nargs="+", choices=ENDPOINTS, default=list(ENDPOINTS))
    parser.add_argument("--max-batch-size", type=int, default=None, help="MAX_BATCH_SIZE of the batched server")
    parser.add_argument("--max-wait-ms", type=float, default=None, help="MAX_WAIT_MS of the batched server")
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="TORCH_THREADS of both servers and of the in-process reference"
    )
    parser.add_argument(
        "--reference-seconds",
        type=float,
        default=3.0,
        help="seconds of in-process timing at batch 1 (half that at each formed batch size), per execution mode",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    return parser.parse_args()


@contextmanager
def server(model_dir: Path, log_path: Path, **settings: Any) -> Iterator[tuple[str, int]]:
    """Run ``python -m service`` with the given settings; yield ``(base URL, pid)`` once /readyz is 200."""
    env = {"LOG_LEVEL": "warning", **{key.upper(): str(value) for key, value in settings.items() if value is not None}}
    with spawn_server(model_dir, log_path, env=env, ready_timeout_s=300) as (process, url):
        yield url, process.pid


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (Linux /proc), or of this process."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_histogram(url: str, model: str, direction: str) -> dict[float, float]:
    """Cumulative bucket counts of ``realnvp_batch_size_samples`` (``le`` → count) from /metrics."""
    buckets: dict[float, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if not line.startswith("realnvp_batch_size_samples_bucket"):
            continue
        if f'model="{model}"' not in line or f'direction="{direction}"' not in line:
            continue
        bound = line.split('le="', 1)[1].split('"', 1)[0]
        buckets[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


def batch_sizes_formed(before: dict[float, float], after: dict[float, float], max_batch: int) -> dict[int, float]:
    """Batches formed between two scrapes, as {representative size: count} (bucket midpoints)."""
    formed: dict[int, float] = {}
    lower, previous = 0.0, 0.0
    for bound in sorted(after):
        cumulative = after[bound] - before.get(bound, 0.0)
        count = cumulative - previous
        previous = cumulative
        if count > 0:
            upper = min(bound, float(max_batch))
            size = max(1, round((lower + 1 + upper) / 2))
            formed[size] = formed.get(size, 0.0) + count
        lower = bound
    return formed


def png_payloads(shape: list[int], count: int) -> list[str]:
    """Random 8-bit images of the card's shape, as base64 PNG."""
    rng = np.random.default_rng(0)
    channels, height, width = shape
    payloads = []
    for _ in range(count):
        pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels).save(buffer, format="PNG")
        payloads.append(base64.b64encode(buffer.getvalue()).decode())
    return payloads


def request_body(endpoint: str, model: str, index: int, images: list[str]) -> dict[str, Any]:
    """One image per /log-likelihood request; n=1 per /sample request."""
    if endpoint == "log-likelihood":
        return {"model": model, "images": [images[index % len(images)]]}
    return {"model": model, "n": 1}


async def load(
    url: str,
    pid: int,
    endpoint: str,
    model: str,
    concurrency: int,
    duration: float,
    images: list[str],
    max_batch: int,
) -> dict[str, Any]:
    """Closed loop: ``concurrency`` clients (one httpx.AsyncClient each), each sending its next request as soon
    as the last one returns; a warm-up of a quarter of ``duration`` (at most 2 s) is not recorded."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    bodies = [json.dumps(request_body(endpoint, model, i, images)).encode() for i in range(len(images))]
    headers = {"content-type": "application/json"}

    async def worker(worker_id: int, stop_at: float, record: bool) -> None:
        index = worker_id
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    response = await client.post(f"/{endpoint}", content=bodies[index % len(bodies)], headers=headers)
                    outcome = str(response.status_code)
                except httpx.TransportError as exc:
                    outcome = type(exc).__name__
                index += concurrency
                if not record:
                    continue
                if outcome == "200":
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[outcome] = errors.get(outcome, 0) + 1

    warm_until = time.perf_counter() + min(2.0, duration / 4)
    await asyncio.gather(*(worker(i, warm_until, False) for i in range(concurrency)))
    before = batch_histogram(url, model, DIRECTION[endpoint])
    server_cpu, client_cpu = cpu_seconds(pid), cpu_seconds()
    started = time.perf_counter()
    await asyncio.gather(*(worker(i, started + duration, True) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, cpu_seconds() - client_cpu
    formed = batch_sizes_formed(before, batch_histogram(url, model, DIRECTION[endpoint]), max_batch)
    quantiles = np.percentile(np.array(latencies) * 1000, [50, 95, 99]) if latencies else [float("nan")] * 3
    batches = sum(formed.values())
    return {
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": float(quantiles[0]),
        "p95_ms": float(quantiles[1]),
        "p99_ms": float(quantiles[2]),
        "server_cpu_cores": server_cpu / elapsed,
        "client_cpu_cores": client_cpu / elapsed,
        "load_average_1m": os.getloadavg()[0],
        "batches": batches,
        "mean_batch_size": sum(size * count for size, count in formed.items()) / batches if batches else None,
        "batch_sizes": {str(size): count for size, count in sorted(formed.items())},
    }


def time_in_process(module: Any, endpoint: str, shape: list[int], batch_size: int, seconds: float) -> dict[str, float]:
    """Median seconds per call of the artifact at ``batch_size``, in both TorchScript execution modes.

    ``as_served``: graph executor optimisation off, as the service runs it; ``jit_optimized``: TorchScript's
    default profiling executor. The reference takes the faster of the two.
    """
    dimension = int(np.prod(shape))
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch_size, *shape), generator=generator).float()

    def call() -> None:
        if endpoint == "log-likelihood":
            module.log_prob(x)
        else:
            z = torch.randn(batch_size, dimension, generator=generator)
            torch.floor(torch.clamp(module.decode(z), 0, 255)).to(torch.uint8)

    result = {}
    for name, optimize in (("as_served", False), ("jit_optimized", True)):
        with torch.inference_mode(), torch.jit.optimized_execution(optimize):
            for _ in range(3):
                call()
            times = []
            stop_at = time.perf_counter() + seconds
            while time.perf_counter() < stop_at or len(times) < 5:
                started = time.perf_counter()
                call()
                times.append(time.perf_counter() - started)
        result[name] = statistics.median(times)
    return result


def main() -> None:
    args = parse_args()
    artifact = args.model_dir / args.model
    if not (artifact / "model.ts").is_file():
        sys.exit(f"no artifact at {artifact}: export one first (see README) or pass --model-dir/--model")
    card = json.loads((artifact / "card.json").read_text())
    if card["data_kind"] != "image":
        sys.exit(f"this benchmark needs an image model, got {card['data_kind']!r}")
    images = png_payloads(card["shape"], 256)
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    report: dict[str, Any] = {
        "model": args.model,
        "model_dir": str(args.model_dir),
        "cpu_count": os.cpu_count(),
        "duration_s": args.duration,
        "settings": {
            "batched": {"MAX_BATCH_SIZE": args.max_batch_size, "MAX_WAIT_MS": args.max_wait_ms},
            "TORCH_THREADS": args.torch_threads,
        },
        "results": {},
    }
    threads = args.torch_threads
    max_batch = args.max_batch_size or Settings.model_fields["max_batch_size"].default
    runs = {
        "batched": {"max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms, "torch_threads": threads},
        "unbatched": {"max_batch_size": 1, "max_wait_ms": 0, "torch_threads": threads},
    }
    for mode, settings in runs.items():
        with server(args.model_dir, logs / f"service_load_{mode}.log", **settings) as (url, pid):
            for endpoint in args.endpoints:
                for concurrency in args.concurrency:
                    limit = max_batch if mode == "batched" else 1
                    point = asyncio.run(load(url, pid, endpoint, args.model, concurrency, args.duration, images, limit))
                    report["results"].setdefault(endpoint, {}).setdefault(str(concurrency), {})[mode] = point
                    print(
                        f"{mode:9s} {endpoint:14s} c={concurrency:<3d} {point['requests_per_s']:8.1f} req/s "
                        f"p50 {point['p50_ms']:7.1f} ms  mean batch {point['mean_batch_size'] or 0:5.1f}  "
                        f"cpu server {point['server_cpu_cores']:.2f} client {point['client_cpu_cores']:.2f}",
                        file=sys.stderr,
                    )
    # The reference: the artifact alone, in this process (no server running), at the batch sizes formed above.
    if threads > 0:
        torch.set_num_threads(threads)
    report["torch_threads"] = torch.get_num_threads()
    module = torch.jit.load(str(artifact / "model.ts"), map_location="cpu")
    for endpoint in args.endpoints:
        timings: dict[int, dict[str, float]] = {
            1: time_in_process(module, endpoint, card["shape"], 1, args.reference_seconds)
        }
        for concurrency, point in report["results"][endpoint].items():
            formed = {int(size): count for size, count in point["batched"]["batch_sizes"].items()}
            for size in formed:
                if size not in timings:
                    timings[size] = time_in_process(module, endpoint, card["shape"], size, args.reference_seconds / 2)
            busy_s = sum(count * min(timings[size].values()) for size, count in formed.items())
            samples = sum(size * count for size, count in formed.items())
            point["in_process"] = {
                "requests_per_s": samples / busy_s if busy_s else None,
                "single_item_ms": 1000 * min(timings[1].values()),
                "seconds_per_batch": {str(size): timings[size] for size in sorted(formed)},
            }
            print(
                f"in-proc   {endpoint:14s} c={concurrency:<3s} {point['in_process']['requests_per_s'] or 0:8.1f} req/s "
                f"(single item {point['in_process']['single_item_ms']:.2f} ms)",
                file=sys.stderr,
            )
    report["goals"] = evaluate(report["results"])
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


def evaluate(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's three goals per endpoint, with the measured ratios."""
    goals: dict[str, Any] = {}
    for endpoint, points in results.items():
        entry: dict[str, Any] = {}
        if "64" in points:
            high = points["64"]
            vs_in_process = high["batched"]["requests_per_s"] / high["in_process"]["requests_per_s"]
            vs_unbatched = high["batched"]["requests_per_s"] / high["unbatched"]["requests_per_s"]
            entry["c64_vs_in_process"] = {"ratio": vs_in_process, "goal": 0.8, "met": vs_in_process >= 0.8}
            entry["c64_vs_unbatched"] = {"ratio": vs_unbatched, "goal": 4.0, "met": vs_unbatched >= 4.0}
            # What batching buys the artifact alone: in-process throughput at the formed batch sizes over batch 1.
            # No server can beat an overhead-free unbatched one by more than this.
            single_rate = 1000.0 / high["in_process"]["single_item_ms"]
            entry["c64_artifact_batching_speedup"] = high["in_process"]["requests_per_s"] / single_rate
        if "1" in points:
            low = points["1"]
            gap = low["batched"]["p50_ms"] - low["in_process"]["single_item_ms"]
            entry["c1_p50_gap_ms"] = {"gap_ms": gap, "goal": 3.0, "met": gap <= 3.0}
        goals[endpoint] = entry
    return goals


if __name__ == "__main__":
    main()
