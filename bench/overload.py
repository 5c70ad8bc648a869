"""Overload and shutdown benchmark of the HTTP service (not a test): how fast it refuses, recovers and drains.

``tests/reliability/test_server_faults.py`` asserts what the service does under an overload burst and under
SIGTERM (503 + ``Retry-After``, a bounded queue, recovery, in-flight requests finished, exit 0); this script
runs the same load (``tests/support/load.py``) and reports how fast. ``python -m service`` runs on a free
loopback port with the tests' tiny artifacts (``digits``: 1x8x8 RealNVP, ``moons``: 2-D NVPNet, built into a
temporary folder), ``TORCH_THREADS=1``:

* ``overload`` (default settings: queue of 1,024 samples, batches of 64): 10 single ``/sample`` requests for a
  baseline, then ``--burst`` concurrent ``POST /sample`` of 256 samples each from a bare asyncio client; answers by
  status, latency p50/p99 of the 503s and p50 of the 200s, the deepest queue the ``/metrics`` gauge showed; then
  the time from the end of the burst to the first 200 and to 20 more.
* ``sigterm`` (``MAX_WAIT_MS=400``, ``MAX_BATCH_SIZE=256``): ``--clients`` closed-loop clients on ``/sample``
  and ``/log-likelihood``, SIGTERM after 1.5 s once 16 samples are queued: requests in flight at the signal and
  how they ended (200, or no answer at all for those the server had not read yet), requests refused afterwards,
  seconds from SIGTERM to the closed listener and to the process's exit.

Goals (the bounds the reliability tests asserted before they moved here; 2 shared cores): 503 p50 < 1.5 s and
p99 < 3 s, first 200 < 1 s after the burst, 20 more within 2 s; in flight at SIGTERM: 200 or no answer, never an
error answer; exit status 0.
Exits 1 when one is missed. JSON on stdout (and in ``--out``).

    python bench/overload.py
    python bench/overload.py --burst 800 --clients 64 --out overload.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.support

from tests.support.artifacts import build_store
from tests.support.load import NO_ANSWER, burst, load_then_sigterm
from tests.support.server import spawn_server

SAMPLES_PER_REQUEST = 256  # MAX_SAMPLES, the service's default
GOALS = {"p50_503_s": 1.5, "p99_503_s": 3.0, "first_200_after_burst_s": 1.0, "twenty_more_200_within_s": 2.0}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=400, help="concurrent requests of 256 samples in the burst")
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients during SIGTERM")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank below), rounded to ms."""
    ordered = sorted(values)
    return round(ordered[int(q * (len(ordered) - 1))], 3) if ordered else float("nan")


def overload(store: Path, workdir: Path, burst_size: int, torch_threads: int) -> dict[str, Any]:
    """The burst against a server with default settings; its figures."""
    env = {"TORCH_THREADS": str(torch_threads), "LOG_LEVEL": "warning"}
    with spawn_server(store, workdir / "overload.log", env=env) as (_, url), httpx.Client(base_url=url) as client:
        sample = {"model": "digits", "n": 1}
        baseline = [client.post("/sample", json=sample).elapsed.total_seconds() for _ in range(10)]
        result = asyncio.run(burst(url, "digits", burst_size, SAMPLES_PER_REQUEST))
        burst_end = time.perf_counter()
        first_ok = None
        while first_ok is None and time.perf_counter() - burst_end < 30:
            if client.post("/sample", json=sample).status_code == 200:
                first_ok = time.perf_counter() - burst_end
        more = [client.post("/sample", json=sample).status_code for _ in range(20)]
        full_service = time.perf_counter() - burst_end
    refused = [answer.seconds for answer in result.answers if answer.status == 503]
    served = [answer.seconds for answer in result.answers if answer.status == 200]
    return {
        "burst_requests": burst_size,
        "samples_requested": burst_size * SAMPLES_PER_REQUEST,
        "ok_200": len(served),
        "refused_503": len(refused),
        "other": len(result.answers) - len(served) - len(refused),
        "refused_with_retry_after": sum(1 for a in result.answers if a.status == 503 and a.retry_after is not None),
        "p50_503_s": quantile(refused, 0.5),
        "p99_503_s": quantile(refused, 0.99),
        "p50_200_s": quantile(served, 0.5),
        "baseline_p50_s": round(statistics.median(baseline), 4),
        "max_queue_depth_seen": result.deepest_queue,
        "first_200_after_burst_s": round(first_ok, 3) if first_ok is not None else None,
        "twenty_more_200": more.count(200),
        "twenty_more_200_within_s": round(full_service, 3),
    }


def sigterm(store: Path, workdir: Path, clients: int, torch_threads: int) -> dict[str, Any]:
    """SIGTERM to a loaded server whose requests each wait 0.4 s in the queue; its figures."""
    env = {"TORCH_THREADS": str(torch_threads), "MAX_WAIT_MS": "400", "MAX_BATCH_SIZE": "256"}
    with spawn_server(store, workdir / "sigterm.log", env=env) as (process, url):
        run = load_then_sigterm(process, url, clients=clients)
    in_flight, late = run.in_flight(), run.after_close()
    return {
        "clients": clients,
        "requests": len(run.outcomes),
        "completed_before_sigterm": len(run.before()),
        "in_flight_at_sigterm": len(in_flight),
        "in_flight_ok": in_flight.count("200"),
        "in_flight_outcomes": dict(Counter(in_flight)),
        "listener_closed_after_s": round(run.listener_closed_at - run.signalled_at, 3),
        "sent_after_listener_closed": len(late),
        "refused_after": sum(1 for outcome in late if not outcome.isdigit()),
        "exit_code": run.exit_code,
        "exited_after_s": round(run.exited_after_s, 3),
    }


def missed_goals(report: dict[str, Any]) -> list[str]:
    """The goals the figures miss, as sentences."""
    missed = [
        f"{key} = {report['overload'][key]} (goal < {bound})"
        for key, bound in GOALS.items()
        if report["overload"][key] is None or not report["overload"][key] < bound
    ]
    if report["overload"]["twenty_more_200"] != 20:
        missed.append(f"{report['overload']['twenty_more_200']} of 20 requests after the burst were 200")
    unexpected = set(report["sigterm"]["in_flight_outcomes"]) - {"200"} - NO_ANSWER
    if unexpected or not report["sigterm"]["in_flight_ok"]:
        missed.append(f"requests in flight at SIGTERM ended {report['sigterm']['in_flight_outcomes']}")
    if report["sigterm"]["exit_code"] != 0:
        missed.append(f"exit status {report['sigterm']['exit_code']} after SIGTERM (goal 0)")
    return missed


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="overload-bench-") as tmp:
        workdir = Path(tmp)
        store = build_store(workdir / "store")
        report: dict[str, Any] = {
            "overload": overload(store, workdir, args.burst, args.torch_threads),
            "sigterm": sigterm(store, workdir, args.clients, args.torch_threads),
            "cpu_count": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
    report["missed_goals"] = missed_goals(report)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 1 if report["missed_goals"] else 0


if __name__ == "__main__":
    sys.exit(main())
