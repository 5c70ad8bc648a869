"""Soak test of the HTTP service (not part of the test suite): many requests, mixed endpoints, memory watched.

Starts ``python -m service`` on a free loopback port with the bundled models (``model_store/``), sends
``--requests`` requests (default 20,000) from ``--concurrency`` closed-loop async clients (default 64), mixed over
every endpoint and every bundled model, with a small share of deliberately invalid requests (unknown model,
wrong shape: their 4xx is expected). Reports JSON on stdout (and in ``--out``):

* statuses, unexpected answers (anything but 200 for a valid request or the expected 4xx for an invalid one;
  ``503`` + ``Retry-After`` counts as intended back-pressure), transport errors;
* latency p50/p95/p99/max over the requests after warm-up, overall and per endpoint;
* server resident memory (``VmRSS``) after warm-up (the first ``--warmup`` requests), at the end, its maximum,
  and the growth between the two; the server log's ERROR/Traceback lines.

Exits 1 when a goal is missed: an unexpected answer, RSS growth >= 50 MiB, or the run exceeding ``--max-seconds``.

    python bench/soak.py                                # 20,000 requests, concurrency 64
    python bench/soak.py --requests 2000 --out soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for tests.*
from tests.support.server import cpu_seconds, rss_mib, spawn_server

REPO = Path(__file__).resolve().parents[1]
RSS_GROWTH_LIMIT_MIB = 50.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=REPO / "model_store")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2_000, help="requests before the memory baseline")
    parser.add_argument("--invalid-share", type=float, default=0.05, help="share of deliberately invalid requests")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="give up (and fail) after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of the server process (repeatable), e.g. MALLOC_ARENA_MAX=2",
    )
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


# --------------------------------------------------------------------------------------------------- server
@contextmanager
def server(
    model_dir: Path, log_path: Path, torch_threads: int, extra_env: dict[str, str]
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``python -m service`` on a free port; yields ``(base URL, process)`` once ``/readyz`` is 200."""
    env = {"LOG_LEVEL": "warning", "TORCH_THREADS": str(torch_threads), **extra_env}
    with spawn_server(model_dir, log_path, env=env, ready_timeout_s=300) as (process, url):
        yield url, process


# ------------------------------------------------------------------------------------------------- requests
class Mix:
    """Draws the next request: ``(endpoint label, method, path, kwargs, expected statuses)``."""

    def __init__(self, cards: dict[str, dict[str, Any]], invalid_share: float, seed: int) -> None:
        self.rng = random.Random(seed)
        self.invalid_share = invalid_share
        self.images = {name: card for name, card in cards.items() if card["data_kind"] == "image"}
        self.vectors = {name: card for name, card in cards.items() if card["data_kind"] == "vector"}
        rng = np.random.default_rng(seed)
        self.pngs: dict[str, list[str]] = {}
        for name, card in self.images.items():
            channels, height, width = card["shape"]
            pixels = rng.integers(0, 256, size=(32, height, width, channels), dtype=np.uint8)
            pixels[:16] = (pixels[:16] > 200) * 255  # sparse strokes, closer to digits than noise
            self.pngs[name] = [self._png(item) for item in pixels]

    @staticmethod
    def _png(pixels: np.ndarray) -> str:
        buffer = io.BytesIO()
        Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    def _vector(self, card: dict[str, Any], count: int) -> list[list[float]]:
        return [[self.rng.gauss(0, 1) for _ in range(card["dimension"])] for _ in range(count)]

    def next(self) -> tuple[str, str, str, dict[str, Any], tuple[int, ...]]:
        if self.rng.random() < self.invalid_share:
            return self._invalid()
        rng = self.rng
        image = rng.random() < 0.5 and bool(self.images)
        name = rng.choice(sorted(self.images if image else self.vectors))
        card = (self.images if image else self.vectors)[name]
        kind = rng.choices(
            ["sample", "sample.png", "log-likelihood", "encode", "decode", "interpolate", "anomaly", "read"],
            weights=[20, 4 if image else 0, 20, 10, 10, 8, 12, 4],
        )[0]
        ok = (200,)
        if kind == "sample":
            body = {
                "model": name,
                "n": rng.randint(1, 8),
                "format": rng.choice(["array", "png"] if image else ["array"]),
            }
            if rng.random() < 0.3:
                body["seed"] = rng.randrange(2**31)
            return "/sample", "POST", "/sample", {"json": body}, ok
        if kind == "sample.png":
            return "/sample.png", "GET", "/sample.png", {"params": {"model": name, "n": rng.randint(1, 16)}}, ok
        if kind in ("log-likelihood", "encode", "anomaly"):
            count = rng.randint(1, 4)
            if image and rng.random() < 0.2:  # multipart upload
                files = [
                    ("files", (f"{i}.png", base64.b64decode(rng.choice(self.pngs[name])), "image/png"))
                    for i in range(count)
                ]
                return f"/{kind}", "POST", f"/{kind}", {"data": {"model": name}, "files": files}, ok
            body: dict[str, Any] = {"model": name}
            if image:
                body["images"] = [rng.choice(self.pngs[name]) for _ in range(count)]
            else:
                body["inputs"] = self._vector(card, count)
            if kind == "anomaly":
                body["score"] = "nll"
            return f"/{kind}", "POST", f"/{kind}", {"json": body}, ok
        if kind == "decode":
            latents = [[0.7 * rng.gauss(0, 1) for _ in range(card["dimension"])] for _ in range(rng.randint(1, 4))]
            return "/decode", "POST", "/decode", {"json": {"model": name, "latents": latents}}, ok
        if kind == "interpolate":
            method = rng.choice(["linear", "slerp", "manifold"])
            count = 4 if method == "manifold" else 2
            body = {"model": name, "method": method, "steps": rng.randint(2, 6)}
            if image:
                body["images"] = [rng.choice(self.pngs[name]) for _ in range(count)]
            else:
                body["inputs"] = self._vector(card, count)
            return "/interpolate", "POST", "/interpolate", {"json": body}, ok
        path = rng.choice(["/models", f"/models/{name}", "/healthz", "/readyz", "/metrics"])
        return "read", "GET", path, {}, ok

    def _invalid(self) -> tuple[str, str, str, dict[str, Any], tuple[int, ...]]:
        name = self.rng.choice(sorted(self.vectors))
        case = self.rng.choice(["unknown model", "wrong shape", "unknown field", "too many"])
        if case == "unknown model":
            return "invalid", "POST", "/sample", {"json": {"model": "nope"}}, (404,)
        if case == "wrong shape":
            return "invalid", "POST", "/encode", {"json": {"model": name, "inputs": [[1, 2, 3, 4, 5, 6, 7]]}}, (422,)
        if case == "unknown field":
            return "invalid", "POST", "/sample", {"json": {"model": name, "nn": 3}}, (422,)
        return "invalid", "POST", "/sample", {"json": {"model": name, "n": 100_000}}, (413,)


async def soak(url: str, pid: int, mix: Mix, args: argparse.Namespace) -> dict[str, Any]:
    """Closed-loop clients until ``args.requests`` are sent; latencies and RSS after the warm-up."""
    issued = 0
    statuses: Counter[str] = Counter()
    unexpected: list[str] = []
    latencies: dict[str, list[float]] = defaultdict(list)
    rss_samples: list[tuple[int, float]] = []
    warm_rss: list[float] = []
    warm_done = asyncio.Event()

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < args.requests:
            index = issued
            issued += 1
            label, method, path, kwargs, expected = mix.next()
            started = time.perf_counter()
            try:
                response = await client.request(method, path, **kwargs)
                outcome = str(response.status_code)
                if response.status_code == 503 and response.headers.get("retry-after") is None:
                    unexpected.append(f"{method} {path}: 503 without Retry-After")
                elif response.status_code not in (*expected, 503):
                    unexpected.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
                unexpected.append(f"{method} {path}: {outcome}")
            elapsed = time.perf_counter() - started
            statuses[outcome] += 1
            if index >= args.warmup:
                latencies[label].append(elapsed)
            if index + 1 == args.warmup:
                warm_done.set()

    async def watch_memory() -> None:
        await warm_done.wait()
        await asyncio.sleep(0.5)  # let the requests in flight at the warm-up mark finish
        warm_rss.append(rss_mib(pid))
        while issued < args.requests:
            rss_samples.append((issued, rss_mib(pid)))
            await asyncio.sleep(1.0)

    # Idle connections are dropped after 2 s, below uvicorn's 5 s keep-alive timeout: with httpx's default (also
    # 5 s) a request sent on a connection the server is closing at that instant fails with ReadError (a race
    # of HTTP/1.1 keep-alive, not a service error; proxies in front of it need the same ordering).
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency, keepalive_expiry=2.0
    )
    started, cpu_started = time.perf_counter(), cpu_seconds(pid)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        watcher = asyncio.create_task(watch_memory())
        await asyncio.wait_for(
            asyncio.gather(*(worker(client) for _ in range(args.concurrency))), timeout=args.max_seconds
        )
        duration = time.perf_counter() - started
        server_cpu = cpu_seconds(pid) - cpu_started
        await asyncio.sleep(1.0)  # idle: the last responses are released
        end_rss = rss_mib(pid)
        watcher.cancel()
        final_health = (await client.get("/readyz")).status_code
        queue_left = sum(
            float(line.rsplit(" ", 1)[1])
            for line in (await client.get("/metrics")).text.splitlines()
            if line.startswith("realnvp_queue_depth_samples{")
        )
    every = sorted(value for values in latencies.values() for value in values)
    baseline = warm_rss[0] if warm_rss else float("nan")
    return {
        "requests": sum(statuses.values()),
        "concurrency": args.concurrency,
        "warmup_requests": args.warmup,
        "duration_s": round(duration, 1),
        "throughput_rps": round(sum(statuses.values()) / duration, 1),
        "server_cpu_ms_per_request": round(1000 * server_cpu / sum(statuses.values()), 2),
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "statuses": dict(sorted(statuses.items())),
        "unexpected": len(unexpected),
        "unexpected_examples": unexpected[:10],
        "intended_503": statuses.get("503", 0),
        "latency_s": _percentiles(every),
        "latency_by_endpoint_s": {label: _percentiles(sorted(values)) for label, values in sorted(latencies.items())},
        "rss_mib": {
            "after_warmup": round(baseline, 1),
            "end": round(end_rss, 1),
            "max": round(max([baseline, end_rss, *(rss for _, rss in rss_samples)]), 1),
            "growth": round(end_rss - baseline, 1),
            "by_requests_sent": {
                str(count): round(rss, 1) for count, rss in rss_samples[:: max(1, len(rss_samples) // 20)]
            },
        },
        "readyz_after": final_health,
        "queue_depth_after": queue_left,
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 4)

    return {
        "count": len(values),
        "p50": round(statistics.median(values), 4),
        "p95": at(0.95),
        "p99": at(0.99),
        "max": round(values[-1], 4),
    }


def main() -> int:
    args = parse_args()
    log_path = Path(tempfile.mkdtemp(prefix="soak-")) / "server.log"
    extra_env = dict(item.split("=", 1) for item in args.server_env)
    with server(args.model_dir, log_path, args.torch_threads, extra_env) as (url, process):
        models = httpx.get(f"{url}/models", timeout=10).json()["models"]
        cards = {card["name"]: card for card in models}
        mix = Mix(cards, args.invalid_share, args.seed)
        result = asyncio.run(soak(url, process.pid, mix, args))
    log = log_path.read_text(errors="replace")
    result["models"] = sorted(cards)
    result["server_env"] = extra_env
    result["server_log_error_lines"] = sum(1 for line in log.splitlines() if " ERROR " in line or "Traceback" in line)
    result["server_log"] = str(log_path)
    goals = {
        "no_unexpected_answers": result["unexpected"] == 0 and result["server_log_error_lines"] == 0,
        "rss_growth_under_50_mib": result["rss_mib"]["growth"] < RSS_GROWTH_LIMIT_MIB,
        "healthy_after": result["readyz_after"] == 200 and result["queue_depth_after"] == 0,
    }
    result["goals"] = goals
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
