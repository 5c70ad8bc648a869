"""Dynamic batching of tensor work for one model.

Requests put rows (samples) on one queue per model; a background task merges queued rows that share a
direction (``encode``: log-likelihood and encode; ``decode``: sample, decode and interpolate) and a precision
(``fp32``, or ``bf16`` for decodes that ask for it: a pass runs at one precision) into batches of
at most ``max_batch_size`` samples, waiting at most ``max_wait_s`` after the first queued request arrived, and
runs each batch on the device's single executor thread under ``torch.inference_mode``. The model-facing
callables never see the queue.

Guarantees:
    * each request's future is registered before its rows are enqueued; answers come back in request order;
    * a request larger than a batch is split into chunks and reassembled;
    * the queue is bounded in samples (``max_queue``): beyond it ``submit`` raises ``UnavailableError`` (503);
    * a request past its deadline gets ``DeadlineExceededError`` (504) and its queued rows are dropped;
    * a batch whose callable raises, or returns the wrong number of rows, fails only its own requests;
    * ``exclusive`` requests (seeded sampling) run in batches of their own, so their results are bit-identical
      whatever else is queued;
    * a batch the device has no memory for is halved and retried down to single rows (``batch_run``); when even
      one row does not fit, its requests get ``DeviceOutOfMemoryError`` (503 + ``Retry-After``) and the model
      stays ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import torch

from service.core.errors import (
    DeadlineExceededError,
    DeviceOutOfMemoryError,
    InferenceFailedError,
    UnavailableError,
)
from service.core.metrics import Metrics
from service.engine.batch_run import BatchFn, is_out_of_memory, split_rows, timed_batch
from service.engine.precision import FP32, PRECISIONS

logger = logging.getLogger(__name__)

__all__ = ["BatchFn", "Batcher"]


@dataclass(eq=False)
class _Entry:
    """A chunk of one request's rows waiting in the queue."""

    direction: str
    rows: torch.Tensor
    future: asyncio.Future[tuple[torch.Tensor, ...]]
    enqueued_at: float
    deadline: float
    exclusive: bool = False
    precision: str = FP32
    counted: bool = field(default=True)

    @property
    def size(self) -> int:
        return int(self.rows.shape[0])


class Batcher:
    """Queue and batch loop of one model.

    Args:
        model: name used in logs and metric labels.
        operations: direction name → batch callable ``(B, ...) -> tensor or tuple of tensors with B rows``; a
            direction asked for at a precision other than ``fp32`` is called ``fn(rows, precision=...)``.
        executor: the device's single-thread executor.
        max_batch_size: most samples per batch.
        max_wait_s: longest wait for more work, counted from the arrival of the batch's first request.
        max_queue: most samples waiting (queued or being collected) at once.
        max_in_flight: most batches handed to the device thread and not yet back (1: the next batch is formed
            when the last returns; 2: it is formed and queued while the last runs, for devices whose batches are
            short next to the event loop's turn-around, i.e. CUDA).
        metrics: where queue, batch and inference figures go; ``None`` records nothing.
        clock: seconds now, the time base of enqueue times, batch windows and ``submit`` deadlines; ``None``
            uses the running event loop's ``time()`` (what the service's deadlines are computed with). The waits
            it implies are slept on the event loop, so it must advance at the loop's rate (a test runs the
            loop itself on a virtual clock and injects a clock offset from it).
    """

    def __init__(
        self,
        model: str,
        operations: Mapping[str, BatchFn],
        executor: Executor,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        metrics: Metrics | None = None,
        clock: Callable[[], float] | None = None,
        max_in_flight: int = 1,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0 or max_in_flight < 1:
            raise ValueError(
                "expected max_batch_size >= 1, max_queue >= 1, max_wait_s >= 0, max_in_flight >= 1, "
                f"got {max_batch_size}, {max_queue}, {max_wait_s}, {max_in_flight}"
            )
        self.model = model
        self._operations = dict(operations)
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._metrics = metrics
        self._clock = clock or _loop_time
        self._queue: deque[_Entry] = deque()
        self._queued_samples = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._recent_batch_s = 0.0
        self.max_in_flight = max_in_flight
        self._slots = asyncio.Semaphore(max_in_flight)

    @property
    def queued_samples(self) -> int:
        """Samples admitted and not yet handed to the device."""
        return self._queued_samples

    def start(self) -> None:
        """Start the batch loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.model}")

    async def close(self) -> None:
        """Stop accepting work, run everything already queued, then stop the loop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def submit(
        self,
        direction: str,
        rows: torch.Tensor,
        deadline: float,
        exclusive: bool = False,
        precision: str = FP32,
    ) -> tuple[torch.Tensor, ...]:
        """Queue ``rows`` for ``direction`` and wait for their results.

        Args:
            direction: a key of ``operations``.
            rows: ``(n, ...)`` CPU tensor; ``n`` may exceed ``max_batch_size`` (it is split).
            deadline: the clock's time (by default ``loop.time()``) after which the request is abandoned.
            exclusive: run these rows in batches of their own. A row's value never depends on its batch
                mathematically, but float32 kernels pick different code paths for different batch sizes
                (differences of ~1e-7 relative); exclusive rows get bit-identical results under any load.
            precision: ``fp32`` or ``bf16``; rows of different precisions never share a batch.

        Returns:
            The callable's outputs for exactly these rows, in order (a tuple even for one output).

        Raises:
            UnavailableError: the queue is full or the batcher is shutting down.
            DeadlineExceededError: the deadline passed first; queued rows are dropped.
            InferenceFailedError: the batch holding these rows failed.
            DeviceOutOfMemoryError: the device had no memory for even one of the batch's rows.
        """
        if direction not in self._operations:
            raise ValueError(f"expected a direction in {sorted(self._operations)}, got {direction!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"expected a precision in {list(PRECISIONS)}, got {precision!r}")
        if self._closing or self._task is None:
            raise UnavailableError(f"model {self.model!r} is not taking requests: the service is shutting down")
        size = int(rows.shape[0])
        if size < 1:
            raise ValueError(f"expected at least one row, got shape {tuple(rows.shape)}")
        if self._queued_samples + size > self.max_queue:
            raise UnavailableError(
                f"queue of model {self.model!r} is full: expected at most {self.max_queue} queued samples, "
                f"got {self._queued_samples} queued + {size} requested",
                retry_after_s=self._retry_after_s(),
            )
        loop = asyncio.get_running_loop()
        now = self._clock()
        entries = [
            _Entry(direction, chunk, loop.create_future(), now, deadline, exclusive, precision)
            for chunk in rows.split(self.max_batch_size)
        ]
        self._queue.extend(entries)
        self._count(size)
        self._wakeup.set()
        futures = [entry.future for entry in entries]
        try:
            done, pending = await asyncio.wait(
                futures, timeout=max(deadline - now, 0.0), return_when=asyncio.FIRST_EXCEPTION
            )
        except BaseException:  # the request was cancelled (client gone, shutdown)
            self._drop(entries)
            raise
        failures = [f.exception() for f in done if not f.cancelled() and f.exception() is not None]
        if failures or pending:
            self._drop(entries)
            if failures:
                raise failures[0]  # type: ignore[misc]
            raise DeadlineExceededError(
                f"request to model {self.model!r} expected to finish within the request timeout, "
                f"got no result after {deadline - now:.3f} s"
            )
        if len(futures) == 1:
            return futures[0].result()
        return tuple(torch.cat(parts) for parts in zip(*(future.result() for future in futures), strict=True))

    def _retry_after_s(self) -> int:
        per_batch = max(self._recent_batch_s, self.max_wait_s, 0.001)
        return max(1, math.ceil(per_batch * self._queued_samples / self.max_batch_size))

    def _count(self, delta: int) -> None:
        self._queued_samples += delta
        if self._metrics is not None:
            self._metrics.queue_depth.labels(model=self.model).set(self._queued_samples)

    def _uncount(self, entry: _Entry) -> None:
        if entry.counted:
            entry.counted = False
            self._count(-entry.size)

    def _drop(self, entries: Sequence[_Entry]) -> None:
        """Forget abandoned entries: cancel their futures and release their queue space."""
        for entry in entries:
            if not entry.future.done():
                entry.future.cancel()
            self._uncount(entry)
            with contextlib.suppress(ValueError):
                self._queue.remove(entry)

    async def _next_head(self) -> _Entry | None:
        """The oldest live entry, waiting for one; ``None`` once closing with nothing left."""
        while True:
            while self._queue:
                entry = self._queue.popleft()
                if not entry.future.done():
                    return entry
                self._uncount(entry)
            if self._closing:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()

    def _take(self, head: _Entry, room: int) -> tuple[_Entry | None, bool]:
        """Remove the oldest entry that may share ``head``'s batch (same direction and precision) if it fits.

        Returns:
            ``(entry, blocked)``: ``blocked`` is true when the oldest such entry does not fit in ``room`` (order is
            kept: later entries never overtake it).
        """
        for entry in self._queue:
            if entry.direction != head.direction or entry.precision != head.precision:
                continue
            if entry.exclusive or entry.future.done():
                continue
            if entry.size > room:
                return None, True
            self._queue.remove(entry)
            return entry, False
        return None, False

    async def _loop(self) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        while True:
            # A slot first: with one slot the next batch is collected only once the last one is back (it keeps
            # growing while the device is busy); with two, it is formed and queued on the device thread while the
            # previous batch runs, so the device does not wait for the event loop between batches.
            await self._slots.acquire()
            head = await self._next_head()
            if head is None:
                self._slots.release()
                await asyncio.gather(*in_flight)
                return
            batch = await self._collect(head)
            task = asyncio.get_running_loop().create_task(self._run(head, batch))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)

    async def _collect(self, head: _Entry) -> list[_Entry]:
        """``head`` and the queued entries that may join it, waiting at most until its window closes."""
        batch, size = [head], head.size
        closes_at = head.enqueued_at + self.max_wait_s
        while size < self.max_batch_size and not head.exclusive:
            entry, blocked = self._take(head, self.max_batch_size - size)
            if entry is not None:
                batch.append(entry)
                size += entry.size
                continue
            remaining = closes_at - self._clock()
            if blocked or self._closing or remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
        return batch

    async def _run(self, head: _Entry, batch: list[_Entry]) -> None:
        """Dispatch one batch, then free its slot."""
        try:
            await self._dispatch(head.direction, head.precision, batch)
        except Exception:  # a bug here must not stop the loop
            logger.exception("batch of model %r failed unexpectedly", self.model)
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(InferenceFailedError(f"model {self.model!r}: internal batching error"))
        finally:
            self._slots.release()

    async def _dispatch(self, direction: str, precision: str, batch: list[_Entry]) -> None:
        loop = asyncio.get_running_loop()
        now = self._clock()
        live = []
        for entry in batch:
            self._uncount(entry)
            if entry.future.done():
                continue
            if now >= entry.deadline:
                entry.future.set_exception(
                    DeadlineExceededError(f"request to model {self.model!r} expired in the queue; its work was dropped")
                )
                continue
            live.append(entry)
        if not live:
            return
        sizes = [entry.size for entry in live]
        if self._metrics is not None:
            for entry in live:
                self._metrics.queue_wait.labels(model=self.model).observe(now - entry.enqueued_at)
            self._metrics.batch_size.labels(model=self.model, direction=direction).observe(sum(sizes))
        operation = self._operations[direction]
        chunks = [entry.rows for entry in live]
        inputs = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        try:
            results, elapsed = await loop.run_in_executor(
                self._executor, timed_batch, operation, inputs, precision, self._count_split
            )
            outputs = split_rows(results, sizes)
        except Exception as exc:
            self._fail(live, direction, exc)
            return
        self._recent_batch_s = elapsed
        if self._metrics is not None:
            self._metrics.inference_time.labels(model=self.model, operation=direction).observe(elapsed)
        for entry, result in zip(live, outputs, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)

    def _count_split(self) -> None:
        """Executor side: one batch halved after running out of device memory (Prometheus counters are thread-safe)."""
        if self._metrics is not None:
            self._metrics.device_out_of_memory.labels(model=self.model, outcome="split").inc()

    def _fail(self, live: list[_Entry], direction: str, exc: Exception) -> None:
        """Fail a batch's requests: 503 when even one row had no device memory, else 500 with a one-line reason."""
        rows = sum(entry.size for entry in live)
        make_error: Callable[[], Exception]
        if is_out_of_memory(exc):
            # The allocator's dump (sizes, reserved memory, other processes) goes to the log, never to clients.
            logger.error(
                "model %r (%s): out of device memory even for 1 of %d rows: %s", self.model, direction, rows, exc
            )
            if self._metrics is not None:
                self._metrics.device_out_of_memory.labels(model=self.model, outcome="refused").inc()
            detail = (
                f"model {self.model!r} is out of device memory: expected room for a single item of this {direction} "
                "batch after splitting it, got none; retry later or with fewer items"
            )
            retry_after_s = self._retry_after_s()
            make_error = functools.partial(DeviceOutOfMemoryError, detail, retry_after_s=retry_after_s)
        else:
            logger.error("batch of %d samples for model %r (%s) failed: %r", rows, self.model, direction, exc)
            # Clients get the last line only: TorchScript errors carry the model's source code and file paths.
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            summary = lines[-1] if len(lines[-1]) <= 200 else lines[-1][:197] + "..."
            detail = f"model {self.model!r} failed on a batch ({direction}): {summary}"
            make_error = functools.partial(InferenceFailedError, detail)
        for entry in live:
            if not entry.future.done():
                entry.future.set_exception(make_error())  # one instance each: every request raises its own


def _loop_time() -> float:
    """The running event loop's clock (monotonic seconds): the batcher's default time base."""
    return asyncio.get_running_loop().time()
