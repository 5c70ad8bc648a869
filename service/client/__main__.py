"""``python -m service.client score PATH --url URL``: score a folder, archive, ``.npz`` or NDJSON file in bulk.

    python -m service.client score digits/ --url http://localhost:8000 --out scores.csv
    realnvp-score score test.npz --url http://scorer:8000 --model mnist --key x_test --out scores.ndjson

Rows go to ``--out`` (``.csv``, or NDJSON for ``.ndjson``/``.jsonl``; CSV on stdout without it). A rerun with the
same ``--out`` skips the ids already there and appends. Exit status 0 when every item has a row (scored or with
its error), 2 when the run had to stop (refused key, unknown model or URL, unreadable ``PATH``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

import httpx
from tqdm import tqdm

from service.client.results import ResultWriter, done_ids
from service.client.scorer import ScoreConfig, ScoringAbortedError, Summary, run
from service.client.sources import open_source


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``score``."""
    parser = argparse.ArgumentParser(prog="python -m service.client", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="score every item of PATH", description=__doc__.split("\n\n")[0])
    score.add_argument("path", type=Path, metavar="PATH", help="folder of PNG/JPEG, .zip, .tar(.gz), .npz, .ndjson")
    score.add_argument("--url", required=True, help="the service, e.g. http://localhost:8000")
    score.add_argument("--out", type=Path, default=None, help="results.csv or results.ndjson (default: CSV on stdout)")
    score.add_argument("--model", default=None, help="model name (default: the service's default model)")
    score.add_argument("--concurrency", type=_positive, default=8, help="requests in flight (8)")
    score.add_argument("--batch", type=_positive, default=32, help="items per request (32)")
    score.add_argument("--fpr", type=float, default=None, help="false-positive rate of is_anomaly (ANOMALY_FPR)")
    score.add_argument(
        "--api-key", default=os.environ.get("API_KEY"), help="bearer token (default: $API_KEY; argv is visible in ps)"
    )
    score.add_argument("--key", action="append", default=None, help=".npz only: score this array (repeatable)")
    score.add_argument("--retries", type=int, default=5, help="retries on 503/504 and connection errors (5)")
    score.add_argument("--timeout", type=float, default=120.0, help="seconds per request (120)")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


async def score_path(
    path: Path,
    url: str,
    out: Path | None,
    config: ScoreConfig,
    keys: list[str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    show_progress: bool = False,
) -> Summary:
    """Score every item of ``path`` not yet in ``out`` and append its row (``transport``: e.g. ``ASGITransport``).

    Raises:
        ValueError: ``path`` cannot be read as a source, or ``out`` is a CSV of other columns.
        ScoringAbortedError: see ``Scorer.score``.
    """
    source = open_source(path, set(keys) if keys else None)
    skip = done_ids(out) if out is not None else set()
    total = source.total()
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else None
    limits = httpx.Limits(max_connections=config.concurrency, keepalive_expiry=2.0)  # below uvicorn's 5 s keep-alive
    writer = ResultWriter(out)
    progress = tqdm(
        total=None if total is None else max(total - len(skip), 0),
        unit="item",
        disable=not show_progress,
        file=sys.stderr,
    )
    try:
        async with httpx.AsyncClient(
            base_url=url, headers=headers, timeout=config.timeout_s, limits=limits, transport=transport
        ) as client:
            return await run(source.items(skip), writer, client, config, progress)
    finally:
        progress.close()
        writer.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m service.client`` and ``realnvp-score``."""
    args = parse_args(argv)
    if args.fpr is not None and not 0 < args.fpr < 1:
        sys.exit(f"--fpr: expected a number in (0, 1), got {args.fpr}")
    config = ScoreConfig(
        model=args.model,
        batch=args.batch,
        concurrency=args.concurrency,
        fpr=args.fpr,
        api_key=args.api_key,
        retries=args.retries,
        timeout_s=args.timeout,
    )
    try:
        summary = asyncio.run(
            score_path(args.path, args.url, args.out, config, args.key, show_progress=not args.no_progress)
        )
    except (ValueError, ScoringAbortedError) as exc:
        print(f"realnvp-score: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summary.as_dict()), file=sys.stderr)


if __name__ == "__main__":
    main()
