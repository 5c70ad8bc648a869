"""The batcher alone, with plain tensor functions standing in for a model."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from service.core.errors import DeadlineExceededError, InferenceFailedError, UnavailableError
from service.core.metrics import Metrics
from service.engine.batcher import Batcher

pytestmark = pytest.mark.anyio


class Recorder:
    """A batch function that doubles its input and records what it saw."""

    def __init__(self, delay_s: float = 0.0, fail_on: float | None = None) -> None:
        self.batches: list[torch.Tensor] = []
        self.threads: set[str] = set()
        self.inference_mode: list[bool] = []
        self.delay_s = delay_s
        self.fail_on = fail_on

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.clone())
        self.threads.add(threading.current_thread().name)
        self.inference_mode.append(torch.is_inference_mode_enabled())
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("poisoned batch")
        return 2 * x

    @property
    def sizes(self) -> list[int]:
        return [int(batch.shape[0]) for batch in self.batches]


@pytest.fixture
async def make_batcher() -> AsyncIterator[Callable[..., Batcher]]:
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


async def test_wait_starts_at_the_first_request(make_batcher) -> None:
    recorder = Recorder()
    batcher = make_batcher({"decode": recorder}, max_batch_size=64, max_wait_s=0.4)
    loop = asyncio.get_running_loop()
    started = loop.time()
    first = asyncio.ensure_future(batcher.submit("decode", rows(1), deadline()))
    await asyncio.sleep(0.3)
    second = asyncio.ensure_future(batcher.submit("decode", rows(2), deadline()))
    await asyncio.gather(first, second)
    elapsed = loop.time() - started
    assert recorder.sizes == [2]
    assert 0.38 <= elapsed < 0.65  # 0.4 s after the first arrival; counted from the second it would be >= 0.7 s


async def test_a_full_batch_runs_without_waiting(make_batcher) -> None:
    recorder = Recorder()
    batcher = make_batcher({"decode": recorder}, max_batch_size=2, max_wait_s=5.0)
    started = time.perf_counter()
    await batcher.submit("decode", rows(1, 2), deadline())
    assert time.perf_counter() - started < 1.0


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


async def test_full_queue_raises_unavailable_with_retry_after(make_batcher) -> None:
    batcher = make_batcher({"decode": Recorder()}, max_batch_size=64, max_wait_s=0.3, max_queue=4)
    waiting = asyncio.ensure_future(batcher.submit("decode", rows(1, 2, 3), deadline()))
    await asyncio.sleep(0.01)
    assert batcher.queued_samples == 3
    with pytest.raises(UnavailableError) as refused:
        await batcher.submit("decode", rows(4, 5), deadline())
    assert "expected at most 4 queued samples" in refused.value.detail
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s >= 1
    (out,) = await waiting
    assert out.flatten().tolist() == [2, 4, 6]
    assert batcher.queued_samples == 0
    await batcher.submit("decode", rows(4, 5), deadline())  # space again


async def test_deadline_drops_the_work(make_batcher) -> None:
    recorder = Recorder()
    batcher = make_batcher({"decode": recorder}, max_batch_size=64, max_wait_s=0.3)
    with pytest.raises(DeadlineExceededError):
        await batcher.submit("decode", rows(7), deadline(0.05))
    assert batcher.queued_samples == 0
    await batcher.submit("decode", rows(8), deadline())
    seen = torch.cat(recorder.batches).flatten().tolist()
    assert seen == [8]  # the expired row never reached the model


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


async def test_cancelled_request_releases_its_queue_space(make_batcher) -> None:
    recorder = Recorder()
    batcher = make_batcher({"decode": recorder}, max_batch_size=64, max_wait_s=0.2, max_queue=4)
    task = asyncio.ensure_future(batcher.submit("decode", rows(1, 2, 3, 4), deadline()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert batcher.queued_samples == 0
    await batcher.submit("decode", rows(9), deadline())
    assert torch.cat(recorder.batches).flatten().tolist() == [9]


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
