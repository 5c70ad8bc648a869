"""Score a stream of items against a running service: batches, concurrent requests, retries, per-item errors.

``concurrency`` workers each take the next batch from the source (read off the event loop), post it to
``/anomaly`` and write its rows, so at most ``concurrency`` batches are in memory at once. A 503 is retried after
its ``Retry-After``, connection errors and 504s with exponential backoff; a batch refused for its content (413,
422) or failed by the model (500) is split in halves until the items at fault answer alone and become error
rows. Only what no item can fix stops the run: a refused API key, an unknown model or URL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from service.client.results import ResultWriter, Row, error_row, rows_from_response
from service.client.sources import Item

RETRY_STATUSES = (503, 504)
SPLIT_STATUSES = (413, 422, 500)
FATAL_STATUSES = (401, 403, 404)
MAX_RETRY_AFTER_S = 30.0


class ScoringAbortedError(Exception):
    """The run cannot go on: every request would fail the same way (key, model or URL)."""


@dataclass(frozen=True)
class ScoreConfig:
    """How to score.

    Attributes:
        model: the model's name (None: the service's default model).
        batch: items per request.
        concurrency: requests in flight at once.
        fpr: false-positive rate of ``is_anomaly`` (None: the service's ``ANOMALY_FPR``).
        api_key: sent as ``Authorization: Bearer``.
        retries: attempts after the first, for 503/504 and connection errors.
        backoff_s: first backoff; doubles per attempt, with jitter.
        timeout_s: per request.
    """

    model: str | None = None
    batch: int = 32
    concurrency: int = 8
    fpr: float | None = None
    api_key: str | None = None
    retries: int = 5
    backoff_s: float = 0.5
    timeout_s: float = 120.0


@dataclass
class Summary:
    """What a run did."""

    scored: int = 0
    errors: int = 0
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0
    endpoint: str = "/anomaly"

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready numbers, with the throughput."""
        rate = (self.scored + self.errors) / self.seconds if self.seconds > 0 else 0.0
        return {**self.__dict__, "items_per_s": rate}


def batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    """Consecutive items of one kind, at most ``size`` per batch (unreadable items go in batches of their own)."""
    current: list[Item] = []
    for item in items:
        if current and (item.kind != current[0].kind or len(current) == size):
            yield current
            current = []
        current.append(item)
    if current:
        yield current


def request_body(batch: list[Item], config: ScoreConfig) -> dict[str, Any]:
    """The JSON body of a batch: base64 ``images`` or numeric ``inputs``."""
    body: dict[str, Any] = {}
    if batch[0].image is not None:
        body["images"] = [base64.b64encode(item.image or b"").decode() for item in batch]
    else:
        body["inputs"] = [item.inputs for item in batch]
    if config.model is not None:
        body["model"] = config.model
    if config.fpr is not None:
        body["fpr"] = config.fpr
    return body


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)[:200]


class Scorer:
    """Posts batches to one service and turns the answers into rows.

    Args:
        client: an ``httpx.AsyncClient`` whose ``base_url`` is the service (any transport).
        config: how to score.
        summary: counts, updated as the run goes.
    """

    def __init__(self, client: httpx.AsyncClient, config: ScoreConfig, summary: Summary) -> None:
        self.client = client
        self.config = config
        self.summary = summary

    async def _post(self, body: dict[str, Any]) -> httpx.Response | str:
        """The answer to ``body``, retried on 503/504 and connection errors; a string when retries ran out."""
        for attempt in range(self.config.retries + 1):
            last = attempt == self.config.retries
            self.summary.requests += 1
            try:
                response = await self.client.post(self.summary.endpoint, json=body)
            except httpx.TransportError as exc:
                if last:
                    return f"expected an answer, got {type(exc).__name__} after {attempt + 1} attempts: {exc}"
                await self._wait(attempt, None)
                continue
            if response.status_code not in RETRY_STATUSES or last:
                return response
            await self._wait(attempt, response.headers.get("Retry-After"))
        raise AssertionError("the loop returns on its last attempt")

    async def _wait(self, attempt: int, retry_after: str | None) -> None:
        self.summary.retries += 1
        delay = self.config.backoff_s * 2**attempt * random.uniform(0.5, 1.0)  # jitter: retries do not align
        if retry_after is not None:
            with contextlib.suppress(ValueError):  # an HTTP date instead of seconds: keep the backoff
                delay = max(float(retry_after), 0.0)
        await asyncio.sleep(min(delay, MAX_RETRY_AFTER_S))

    async def score(self, batch: list[Item]) -> list[Row]:
        """Rows for ``batch``: scored, or with the error that concerns each item.

        Raises:
            ScoringAbortedError: the key is refused, or the model or URL does not exist.
        """
        if batch[0].kind == "error":
            return [error_row(item.id, item.error or "") for item in batch]
        answer = await self._post(request_body(batch, self.config))
        if isinstance(answer, str):
            return [error_row(item.id, answer) for item in batch]
        if answer.status_code == 200:
            return rows_from_response([item.id for item in batch], answer.json())
        if answer.status_code == 409 and self.summary.endpoint == "/anomaly":
            # the card has no reference scores: bits/dim (and whatever scores exist) from /log-likelihood
            self.summary.endpoint = "/log-likelihood"
            return await self.score(batch)
        if answer.status_code in FATAL_STATUSES:
            raise ScoringAbortedError(f"{self.summary.endpoint} answered {answer.status_code}: {_detail(answer)}")
        if answer.status_code in SPLIT_STATUSES and len(batch) > 1:
            half = len(batch) // 2
            return [*await self.score(batch[:half]), *await self.score(batch[half:])]
        return [error_row(item.id, f"HTTP {answer.status_code}: {_detail(answer)}") for item in batch]


async def run(
    items: Iterator[Item],
    writer: ResultWriter,
    client: httpx.AsyncClient,
    config: ScoreConfig,
    progress: Any = None,
) -> Summary:
    """Score every item and write its row; ``progress`` (a tqdm bar) is advanced per row.

    Raises:
        ScoringAbortedError: see ``Scorer.score``; rows written until then stay (a rerun resumes after them).
    """
    summary = Summary()
    scorer = Scorer(client, config, summary)
    pending = batches(items, config.batch)
    lock = asyncio.Lock()
    started = time.perf_counter()

    async def next_batch() -> list[Item] | None:
        async with lock:  # one reader at a time: archives are read as streams
            return await asyncio.to_thread(next, pending, None)

    async def worker() -> None:
        while (batch := await next_batch()) is not None:
            rows = await scorer.score(batch)
            writer.write(rows)
            for row in rows:
                if row.get("error"):
                    summary.errors += 1
                else:
                    summary.scored += 1
            if progress is not None:
                progress.update(len(rows))

    workers = [asyncio.create_task(worker()) for _ in range(config.concurrency)]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        summary.seconds = time.perf_counter() - started
    return summary
