"""The batcher alone, with plain tensor functions standing in for a model.

The tests of *when* things happen (batch windows, deadlines) run on a virtual clock
(``tests/support/virtual_time.py``): exact times, no sleeping, the same on any machine. The others run on the
real event loop and the real single-thread executor.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from service.core.errors import DeadlineExceededError, InferenceFailedError, UnavailableError
from service.core.metrics import Metrics
from service.engine.batcher import Batcher
from tests.support.virtual_time import InlineExecutor, VirtualClock, run_in_virtual_time

pytestmark = pytest.mark.anyio


class Recorder:
    """A batch function that doubles its input and records what it saw (and when, on a virtual clock).

    ``delay_s`` is the time each batch takes: slept on the real clock, or added to ``clock`` when one is given.
    """

    def __init__(self, delay_s: float = 0.0, fail_on: float | None = None, clock: VirtualClock | None = None) -> None:
        self.batches: list[torch.Tensor] = []
        self.times: list[float] = []
        self.threads: set[str] = set()
        self.inference_mode: list[bool] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.clock = clock

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.clone())
        self.threads.add(threading.current_thread().name)
        self.inference_mode.append(torch.is_inference_mode_enabled())
        if self.clock is not None:
            self.times.append(self.clock())
            self.clock.advance(self.delay_s)
        elif self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("poisoned batch")
        return 2 * x

    @property
    def sizes(self) -> list[int]:
        return [int(batch.shape[0]) for batch in self.batches]

    @property
    def contents(self) -> list[list[float]]:
        return [batch.flatten().tolist() for batch in self.batches]


MakeBatcher = Callable[..., Batcher]


@pytest.fixture
async def make_batcher() -> AsyncIterator[MakeBatcher]:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-test")
    created: list[Batcher] = []

    def make(operations: dict, **options: float) -> Batcher:
        settings = {"max_batch_size": 4, "max_wait_s": 0.05, "max_queue": 64, **options}
        batcher = Batcher("m", operations, executor, metrics=Metrics(), **settings)  # type: ignore[arg-type]
        batcher.start()
        created.append(batcher)
        return batcher

    yield make
    for batcher in created:
        await batcher.close()
    executor.shutdown()


# The batchers of the virtual-time tests get a clock of their own, 1000 s ahead of the loop's: a time read from
# the loop instead of the injected clock, or compared across the two, is off by 1000 s and fails the test.
AHEAD = 1000.0


def at(seconds: float) -> float:
    """The injected clock's reading ``seconds`` into a virtual-time test (a deadline, say)."""
    return AHEAD + seconds


def run_virtually(clock: VirtualClock, scenario: Callable[[MakeBatcher], Awaitable[None]]) -> None:
    """Run ``scenario(make)`` on a loop on ``clock``; ``make`` builds started batchers on ``clock + AHEAD``.

    Batches run inline (no executor thread), so nothing races the clock's jumps.
    """

    async def main() -> None:
        created: list[Batcher] = []

        def make(operations: dict, **options: float) -> Batcher:
            settings = {"max_batch_size": 4, "max_wait_s": 0.05, "max_queue": 64, **options}
            batcher = Batcher(
                "m", operations, InlineExecutor(), metrics=Metrics(), clock=lambda: clock() + AHEAD, **settings
            )  # type: ignore[arg-type]
            batcher.start()
            created.append(batcher)
            return batcher

        try:
            await scenario(make)
        finally:
            for batcher in created:
                await batcher.close()

    run_in_virtual_time(main(), clock)


def deadline(seconds: float = 10.0) -> float:
    return asyncio.get_running_loop().time() + seconds


def rows(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None]


async def test_concurrent_requests_share_a_batch_and_get_their_own_rows(make_batcher) -> None:
    recorder = Recorder()
    batcher = make_batcher({"decode": recorder}, max_batch_size=8, max_wait_s=0.2)
    results = await asyncio.gather(*(batcher.submit("decode", rows(i, i + 0.5), deadline()) for i in range(4)))
    assert recorder.sizes == [8]
    for i, (out,) in enumerate(results):
        assert out.flatten().tolist() == [2 * i, 2 * i + 1]
    assert recorder.threads == {"torch-test_0"} and all(recorder.inference_mode)


async def test_batches_are_capped_in_samples_and_large_requests_split(make_batcher) -> None:
    recorder = Recorder()
    batcher = make_batcher({"decode": recorder}, max_batch_size=4, max_wait_s=0.05)
    big = torch.arange(10, dtype=torch.float32)[:, None]
    small = rows(100, 101, 102)
    (out_big,), (out_small,) = await asyncio.gather(
        batcher.submit("decode", big, deadline()), batcher.submit("decode", small, deadline())
    )
    assert max(recorder.sizes) <= 4 and sum(recorder.sizes) == 13
    assert out_big.flatten().tolist() == (2 * big).flatten().tolist()
    assert out_small.flatten().tolist() == [200, 202, 204]


def test_wait_starts_at_the_first_request() -> None:
    clock = VirtualClock()
    recorder = Recorder(clock=clock)

    async def scenario(make: MakeBatcher) -> None:
        batcher = make({"decode": recorder}, max_batch_size=64, max_wait_s=0.4)
        first = asyncio.ensure_future(batcher.submit("decode", rows(1), deadline=at(10)))
        await asyncio.sleep(0.3)
        second = asyncio.ensure_future(batcher.submit("decode", rows(2), deadline=at(10)))
        await asyncio.sleep(0.15)  # t = 0.45: past the first request's window, inside a window counted from the second
        third = asyncio.ensure_future(batcher.submit("decode", rows(3), deadline=at(10)))
        await asyncio.gather(first, second, third)

    run_virtually(clock, scenario)
    # The window closes 0.4 s after the first arrival (counted from the second: one batch [1, 2, 3] at 0.7 s).
    assert recorder.contents == [[1, 2], [3]]
    assert recorder.times == [pytest.approx(0.4, abs=1e-9), pytest.approx(0.85, abs=1e-9)]


def test_a_full_batch_runs_without_waiting() -> None:
    clock = VirtualClock()
    recorder = Recorder(clock=clock)

    async def scenario(make: MakeBatcher) -> None:
        batcher = make({"decode": recorder}, max_batch_size=2, max_wait_s=5.0)
        (out,) = await batcher.submit("decode", rows(1, 2), deadline=at(10))
        assert out.flatten().tolist() == [2, 4] and clock() == 0.0
        # a batch that cannot take the next request closes at once too (order is kept: nothing overtakes it)
        await asyncio.gather(batcher.submit("decode", rows(3), at(10)), batcher.submit("decode", rows(4, 5), at(10)))

    run_virtually(clock, scenario)
    assert recorder.contents == [[1, 2], [3], [4, 5]]
    assert recorder.times == [0.0, 0.0, 0.0]


async def test_directions_are_never_mixed(make_batcher) -> None:
    encode, decode = Recorder(), Recorder()
    batcher = make_batcher({"encode": encode, "decode": decode}, max_batch_size=8, max_wait_s=0.1)
    await asyncio.gather(
        batcher.submit("encode", rows(1), deadline()),
        batcher.submit("decode", rows(2), deadline()),
        batcher.submit("encode", rows(3), deadline()),
        batcher.submit("decode", rows(4), deadline()),
    )
    assert sorted(torch.cat(encode.batches).flatten().tolist()) == [1, 3]
    assert sorted(torch.cat(decode.batches).flatten().tolist()) == [2, 4]
    assert encode.sizes == [2] and decode.sizes == [2]


def test_full_queue_raises_unavailable_with_retry_after() -> None:
    clock = VirtualClock()

    async def scenario(make: MakeBatcher) -> None:
        batcher = make({"decode": Recorder(clock=clock)}, max_batch_size=64, max_wait_s=0.3, max_queue=4)
        waiting = asyncio.ensure_future(batcher.submit("decode", rows(1, 2, 3), at(10)))
        await asyncio.sleep(0.1)  # inside the batch window: the rows are still counted as queued
        assert batcher.queued_samples == 3
        with pytest.raises(UnavailableError) as refused:
            await batcher.submit("decode", rows(4, 5), at(10))
        assert "expected at most 4 queued samples" in refused.value.detail
        assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= 1
        (out,) = await waiting
        assert out.flatten().tolist() == [2, 4, 6]
        assert batcher.queued_samples == 0
        await batcher.submit("decode", rows(4, 5), at(10))  # space again

    run_virtually(clock, scenario)


def test_deadline_drops_the_work() -> None:
    clock = VirtualClock()
    recorder = Recorder(clock=clock)
    expired_at: list[float] = []

    async def scenario(make: MakeBatcher) -> None:
        batcher = make({"decode": recorder}, max_batch_size=64, max_wait_s=0.3)
        with pytest.raises(DeadlineExceededError, match="expected to finish within the request timeout"):
            await batcher.submit("decode", rows(7), deadline=at(0.05))  # expires inside the batch window
        expired_at.append(clock())
        assert batcher.queued_samples == 0
        await batcher.submit("decode", rows(8), deadline=at(10))

    run_virtually(clock, scenario)
    assert expired_at == [pytest.approx(0.05, abs=1e-9)]
    assert recorder.contents == [[8]]  # the expired row never reached the model
    # the next request joined the window the expired one had opened: it closed on time, 0.3 s after it opened
    assert recorder.times == [pytest.approx(0.3, abs=1e-9)]


def test_a_deadline_that_passes_behind_a_slow_batch_drops_the_request() -> None:
    clock = VirtualClock()
    recorder = Recorder(delay_s=1.0, clock=clock)

    async def scenario(make: MakeBatcher) -> None:
        batcher = make({"decode": recorder}, max_batch_size=1, max_wait_s=0.0)
        outcomes = await asyncio.gather(
            batcher.submit("decode", rows(1), deadline=at(10)),  # runs 0 -> 1 s
            batcher.submit("decode", rows(2), deadline=at(0.5)),  # queued behind it, expired when the device is free
            batcher.submit("decode", rows(3), deadline=at(10)),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], DeadlineExceededError), outcomes
        assert [out.item() for (out,) in (outcomes[0], outcomes[2])] == [2, 6]
        assert batcher.queued_samples == 0

    run_virtually(clock, scenario)
    assert recorder.contents == [[1], [3]]
    assert recorder.times == [0.0, 1.0]


async def test_a_failed_batch_fails_only_its_own_requests(make_batcher) -> None:
    recorder = Recorder(fail_on=-1.0)
    batcher = make_batcher({"decode": recorder}, max_batch_size=2, max_wait_s=0.05)
    outcomes = await asyncio.gather(
        batcher.submit("decode", rows(-1, 1), deadline()),  # a batch of its own (2 samples), poisoned
        batcher.submit("decode", rows(2, 3), deadline()),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], InferenceFailedError) and "poisoned batch" in outcomes[0].detail
    assert outcomes[1][0].flatten().tolist() == [4, 6]
    (later,) = await batcher.submit("decode", rows(5), deadline())  # the loop keeps serving
    assert later.flatten().tolist() == [10]


async def test_wrong_number_of_output_rows_fails_the_batch(make_batcher) -> None:
    batcher = make_batcher({"decode": lambda x: x[:-1]}, max_batch_size=4, max_wait_s=0.0)
    with pytest.raises(InferenceFailedError, match="expected 2 output rows, got 1"):
        await batcher.submit("decode", rows(1, 2), deadline())


async def test_tuple_outputs_are_split_per_request(make_batcher) -> None:
    batcher = make_batcher({"encode": lambda x: (x + 1, x.sum(dim=1))}, max_batch_size=8, max_wait_s=0.05)
    (a_z, a_s), (b_z, b_s) = await asyncio.gather(
        batcher.submit("encode", rows(1, 2), deadline()), batcher.submit("encode", rows(3), deadline())
    )
    assert a_z.flatten().tolist() == [2, 3] and a_s.tolist() == [1, 2]
    assert b_z.flatten().tolist() == [4] and b_s.tolist() == [3]


async def test_close_drains_the_queue_then_refuses(make_batcher) -> None:
    recorder = Recorder(delay_s=0.05)
    batcher = make_batcher({"decode": recorder}, max_batch_size=1, max_wait_s=1.0)
    pending = [asyncio.ensure_future(batcher.submit("decode", rows(i), deadline())) for i in range(5)]
    await asyncio.sleep(0.01)
    await batcher.close()
    assert len(recorder.batches) == 5  # all queued work ran before close() returned
    assert [out.item() for (out,) in await asyncio.gather(*pending)] == [0, 2, 4, 6, 8]
    with pytest.raises(UnavailableError, match="shutting down"):
        await batcher.submit("decode", rows(1), deadline())


def test_cancelled_request_releases_its_queue_space() -> None:
    clock = VirtualClock()
    recorder = Recorder(clock=clock)

    async def scenario(make: MakeBatcher) -> None:
        batcher = make({"decode": recorder}, max_batch_size=64, max_wait_s=0.2, max_queue=4)
        task = asyncio.ensure_future(batcher.submit("decode", rows(1, 2, 3, 4), at(10)))
        await asyncio.sleep(0.1)  # queued, its batch window still open
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert batcher.queued_samples == 0
        await batcher.submit("decode", rows(9), at(10))

    run_virtually(clock, scenario)
    assert recorder.contents == [[9]]


async def test_exclusive_requests_get_batches_of_their_own(make_batcher) -> None:
    recorder = Recorder()
    batcher = make_batcher({"decode": recorder}, max_batch_size=8, max_wait_s=0.1)
    await asyncio.gather(
        batcher.submit("decode", rows(1), deadline()),
        batcher.submit("decode", rows(2, 3), deadline(), exclusive=True),
        batcher.submit("decode", rows(4), deadline()),
    )
    contents = sorted(batch.flatten().tolist() for batch in recorder.batches)
    assert contents == [[1.0, 4.0], [2.0, 3.0]]
