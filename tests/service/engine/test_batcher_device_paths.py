"""The batcher's device-facing paths: the precision key, out-of-memory splitting, two batches in flight.

CUDA out-of-memory never happens on CPU, so the functions here raise ``torch.OutOfMemoryError`` themselves (the
type exists in CPU builds too), or the plain ``RuntimeError`` TorchScript turns it into.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from service.core.errors import DeviceOutOfMemoryError, InferenceFailedError, UnavailableError
from service.core.metrics import Metrics
from service.engine.batch_run import is_out_of_memory, run_batch
from service.engine.batcher import Batcher
from tests.support.helpers import metric_value
from tests.support.virtual_time import InlineExecutor, VirtualClock, run_in_virtual_time

ALLOCATOR_DUMP = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB of which 1.2 GiB is "
    "free. Process 4242 has 77.9 GiB memory in use."
)


class Decoder:
    """Doubles its rows; records each call's rows and precision; runs out of memory above ``fits`` rows."""

    def __init__(self, fits: int | None = None, error: type[Exception] = torch.OutOfMemoryError) -> None:
        self.calls: list[tuple[str, list[float]]] = []
        self.fits = fits
        self.error = error

    def __call__(self, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
        self.calls.append((precision, x.flatten().tolist()))
        if self.fits is not None and x.shape[0] > self.fits:
            raise self.error(ALLOCATOR_DUMP)
        return 2 * x

    def sizes(self) -> list[int]:
        return [len(values) for _, values in self.calls]


def rows(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None]


def run_scenario(operation: Decoder, scenario, **options: float) -> Metrics:  # type: ignore[no-untyped-def]
    """Run ``scenario(batcher)`` on a virtual clock with batches run inline; return the batcher's metrics."""
    clock = VirtualClock()
    metrics = Metrics()

    async def main() -> None:
        settings = {"max_batch_size": 8, "max_wait_s": 0.05, "max_queue": 64, **options}
        batcher = Batcher("m", {"decode": operation}, InlineExecutor(), metrics=metrics, clock=clock, **settings)  # type: ignore[arg-type]
        batcher.start()
        try:
            await scenario(batcher)
        finally:
            await batcher.close()

    run_in_virtual_time(main(), clock)
    return metrics


def test_fp32_and_bf16_rows_never_share_a_batch() -> None:
    decoder = Decoder()

    async def scenario(batcher: Batcher) -> None:
        results = await asyncio.gather(
            batcher.submit("decode", rows(1), 10.0),
            batcher.submit("decode", rows(2), 10.0, precision="bf16"),
            batcher.submit("decode", rows(3), 10.0),
            batcher.submit("decode", rows(4), 10.0, precision="bf16"),
        )
        assert [out.flatten().tolist() for (out,) in results] == [[2], [4], [6], [8]]

    run_scenario(decoder, scenario)
    # One batch per precision, each with both of its requests (fp32 keeps the one-argument call).
    assert sorted(decoder.calls) == [("bf16", [2.0, 4.0]), ("fp32", [1.0, 3.0])]


def test_an_unknown_precision_is_an_internal_error() -> None:
    async def scenario(batcher: Batcher) -> None:
        with pytest.raises(ValueError, match="expected a precision in"):
            await batcher.submit("decode", rows(1), 10.0, precision="fp16")

    run_scenario(Decoder(), scenario)


def test_out_of_memory_splits_the_batch_down_to_what_fits() -> None:
    decoder = Decoder(fits=2)

    async def scenario(batcher: Batcher) -> None:
        big, small = await asyncio.gather(
            batcher.submit("decode", rows(1, 2, 3, 4, 5), 10.0), batcher.submit("decode", rows(6), 10.0)
        )
        assert big[0].flatten().tolist() == [2, 4, 6, 8, 10] and small[0].flatten().tolist() == [12]

    metrics = run_scenario(decoder, scenario)
    # 6 rows fail, halves of 3 fail, then 2 + 1 and 2 + 1 fit; rows stay in order.
    assert decoder.sizes() == [6, 3, 2, 1, 3, 2, 1]
    assert [values for _, values in decoder.calls if len(values) <= 2] == [[1, 2], [3], [4, 5], [6]]
    text = metrics.render().decode()
    assert metric_value(text, "realnvp_device_out_of_memory_total", model="m", outcome="split") == 3


@pytest.mark.parametrize("error", [torch.OutOfMemoryError, RuntimeError], ids=["typed", "through-torchscript"])
def test_a_single_item_out_of_memory_is_a_503_without_the_allocator_dump(error: type[Exception]) -> None:
    decoder = Decoder(fits=0, error=error)

    async def scenario(batcher: Batcher) -> None:
        with pytest.raises(DeviceOutOfMemoryError) as caught:
            await batcher.submit("decode", rows(1, 2), 10.0, precision="bf16")
        assert isinstance(caught.value, UnavailableError) and caught.value.retry_after_s is not None
        assert "out of device memory" in caught.value.detail and "Tried to allocate" not in caught.value.detail
        # The batcher keeps serving: the next request that fits gets its answer.
        decoder.fits = 1
        assert (await batcher.submit("decode", rows(3), 10.0))[0].flatten().tolist() == [6]

    metrics = run_scenario(decoder, scenario)
    text = metrics.render().decode()
    assert metric_value(text, "realnvp_device_out_of_memory_total", model="m", outcome="refused") == 1
    # [1, 2] failed, then [1] alone failed (the batch's requests all fail); the retry kept the precision.
    assert decoder.calls[:2] == [("bf16", [1.0, 2.0]), ("bf16", [1.0])]


def test_other_failures_are_not_retried() -> None:
    decoder = Decoder(fits=0, error=ValueError)

    async def scenario(batcher: Batcher) -> None:
        with pytest.raises(InferenceFailedError, match="failed on a batch"):
            await batcher.submit("decode", rows(1, 2, 3), 10.0)

    run_scenario(decoder, scenario)
    assert decoder.sizes() == [3]


def test_out_of_memory_is_recognised_by_type_and_through_torchscript() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(
        RuntimeError("The following operation failed in the TorchScript interpreter.\n" + ALLOCATOR_DUMP)
    )
    assert not is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(ValueError(ALLOCATOR_DUMP))


def test_run_batch_checks_rows_and_passes_precision_only_when_reduced() -> None:
    seen: list[object] = []

    def fp32_only(x: torch.Tensor) -> torch.Tensor:
        seen.append("one argument")
        return x

    assert run_batch(fp32_only, rows(1, 2))[0].shape == (2, 1)
    with pytest.raises(TypeError):
        run_batch(fp32_only, rows(1), precision="bf16")
    with pytest.raises(RuntimeError, match="expected 2 output rows, got 1"):
        run_batch(lambda x: x[:1], rows(1, 2))
    assert seen == ["one argument"]


@pytest.mark.parametrize("in_flight", [1, 2])
def test_a_second_batch_is_queued_on_the_device_thread_only_with_two_in_flight(in_flight: int) -> None:
    """With two slots the next batch leaves the queue while the first still runs; with one it waits for it."""
    release = threading.Event()
    started: list[int] = []

    def held(x: torch.Tensor) -> torch.Tensor:
        started.append(int(x.shape[0]))
        release.wait(timeout=30)  # the first batch holds the device thread until the test has looked
        return 2 * x

    async def main() -> None:
        executor = ThreadPoolExecutor(max_workers=1)
        batcher = Batcher("m", {"decode": held}, executor, 2, 0.0, 64, metrics=Metrics(), max_in_flight=in_flight)
        batcher.start()
        loop = asyncio.get_running_loop()
        first = asyncio.ensure_future(batcher.submit("decode", rows(1, 2), loop.time() + 30))
        while not started:  # the first batch is on the device thread
            await asyncio.sleep(0.001)
        second = asyncio.ensure_future(batcher.submit("decode", rows(3, 4), loop.time() + 30))
        for _ in range(50):  # give the loop every chance to hand the second batch over
            await asyncio.sleep(0.001)
        assert batcher.queued_samples == (2 if in_flight == 1 else 0)
        release.set()
        assert [(await f)[0].flatten().tolist() for f in (first, second)] == [[2, 4], [6, 8]]
        await batcher.close()
        executor.shutdown()

    asyncio.run(main())
    assert started == [2, 2]


def test_in_flight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_in_flight >= 1"):
        Batcher("m", {}, InlineExecutor(), 1, 0.0, 1, max_in_flight=0)
