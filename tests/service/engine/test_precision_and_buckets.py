"""The runner's bf16 decode (bounded error, reproducible) and the CUDA shape buckets' padding, run on CPU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from service.engine import precision
from service.engine.buckets import bucket_for, bucket_sizes, pad_rows, warm_batch_sizes
from service.engine.inference import draw_latents, finish_decoded
from service.engine.precision import bf16_offered, native_bf16, precision_scope
from service.engine.runner import ModelRunner

CPU = torch.device("cpu")
# The stated bound for the test store's 1x8x8 image flow, in 0-255 units of the uint8 samples /sample returns
# (measured: mean 0.012-0.014, worst 1, continuous values within 0.1, over 5 seeds of 256 samples).
MEAN_PIXEL_BOUND = 0.05
WORST_PIXEL_BOUND = 2
# And for the 2-D vector flow: |bf16 - fp32| / (1 + |fp32|) per value (measured at most 0.0034; bf16 eps 0.0039).
VECTOR_RELATIVE_BOUND = 0.02


def load(store: Path, name: str) -> ModelRunner:
    return ModelRunner.load(store / name, CPU)


def decode_both(runner: ModelRunner, seed: int, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    z = draw_latents(runner.dimension, n, 1.0, seed)
    with torch.inference_mode():
        return runner.decode(z), runner.decode(z, "bf16")


@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_image_samples_are_within_the_stated_pixel_bound(store: Path, seed: int) -> None:
    runner = load(store, "digits")
    exact, reduced = decode_both(runner, seed)
    assert reduced.dtype == torch.float32 and reduced.shape == exact.shape
    assert not torch.equal(exact, reduced), "bf16 must actually change the arithmetic"
    pixels = (finish_decoded(runner, exact).short() - finish_decoded(runner, reduced).short()).abs().float()
    assert pixels.mean().item() <= MEAN_PIXEL_BOUND
    assert pixels.max().item() <= WORST_PIXEL_BOUND


def test_bf16_vectors_are_within_the_stated_relative_bound(store: Path) -> None:
    exact, reduced = decode_both(load(store, "moons"), seed=0)
    assert not torch.equal(exact, reduced)
    assert ((exact - reduced).abs() / (1 + exact.abs())).max().item() <= VECTOR_RELATIVE_BOUND


def test_bf16_decoding_is_reproducible(store: Path) -> None:
    runner = load(store, "digits")
    first = decode_both(runner, seed=3, n=16)[1]
    second = decode_both(runner, seed=3, n=16)[1]
    assert torch.equal(first, second)


def test_unknown_precisions_are_refused() -> None:
    with pytest.raises(ValueError, match=r"expected one of \['fp32', 'bf16'\], got 'fp16'"):
        precision_scope("fp16", CPU)


@pytest.fixture
def fresh_capability_cache() -> Iterator[None]:
    native_bf16.cache_clear()
    yield
    native_bf16.cache_clear()


@pytest.mark.usefixtures("fresh_capability_cache")
@pytest.mark.parametrize(
    ("flags", "onednn", "expected"),
    [
        ("fpu avx2 amx_bf16 amx_tile", True, True),
        ("fpu avx512f avx512_bf16", True, True),
        ("fpu avx2 avx512f", True, False),  # AVX-512 without its bfloat16 extension: emulated
        ("fpu amx_bf16", False, False),  # no oneDNN bfloat16 kernels in this torch
    ],
)
def test_native_bf16_on_cpu_needs_the_instructions_and_onednn(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: str, onednn: bool, expected: bool
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    assert native_bf16(CPU) is expected
    assert bf16_offered("auto", CPU) is expected
    assert bf16_offered("true", CPU) and not bf16_offered("false", CPU)


@pytest.mark.usefixtures("fresh_capability_cache")
def test_native_bf16_on_cuda_asks_cuda_without_emulation(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[bool] = []

    def supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert native_bf16(torch.device("cuda")) and asked == [False]


def test_bucket_sizes_are_powers_of_two_up_to_the_maximum() -> None:
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(64) == (1, 2, 4, 8, 16, 32, 64)
    assert bucket_sizes(100) == (1, 2, 4, 8, 16, 32, 64, 100)
    with pytest.raises(ValueError, match="expected at least 1, got 0"):
        bucket_sizes(0)


def test_warm_sizes_are_every_bucket_on_cuda_and_unchanged_on_cpu() -> None:
    assert warm_batch_sizes(256, torch.device("cuda")) == bucket_sizes(256)
    assert warm_batch_sizes(256, torch.device("cuda:1")) == bucket_sizes(256)
    assert warm_batch_sizes(64, CPU) == (1, 8)
    assert warm_batch_sizes(4, CPU) == (1, 4)
    assert warm_batch_sizes(1, CPU) == (1,)


def test_bucket_for_and_padding() -> None:
    buckets = (1, 2, 4, 8)
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 9]
    assert bucket_for(3, ()) == 3
    x = torch.arange(6.0).reshape(3, 2)
    padded = pad_rows(x, 4)
    assert padded.tolist() == [[0, 1], [2, 3], [4, 5], [4, 5]]
    assert pad_rows(x, 3) is x and pad_rows(x, 2) is x


def test_cpu_runners_do_not_pad(store: Path) -> None:
    runner = load(store, "digits")
    runner.warm_up((1, 8), repeats=1)
    assert runner.pad_to_warmed_sizes is False and runner.buckets == ()


@pytest.mark.parametrize("name", ["digits", "moons"])
def test_padding_to_a_bucket_does_not_change_results(store: Path, name: str) -> None:
    """The CUDA path's padding, forced on a CPU runner: outputs keep their rows and their values."""
    plain = load(store, name)
    padded = load(store, name)
    padded.pad_to_warmed_sizes = True
    padded.warm_up((1, 2, 4, 8), repeats=1)
    assert padded.buckets == (1, 2, 4, 8)
    z = draw_latents(plain.dimension, 5, 1.0, seed=0)  # 5 rows: padded to 8
    x = plain.example_batch(5)
    calls: list[int] = []
    inner = padded.module

    class Counting:
        def decode(self, rows: torch.Tensor) -> torch.Tensor:
            calls.append(rows.shape[0])
            return inner.decode(rows)

        def encode(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            calls.append(rows.shape[0])
            return inner.encode(rows)

    padded.module = Counting()  # type: ignore[assignment]
    with torch.inference_mode():
        decoded, expected = padded.decode(z), plain.decode(z)
        (z_pad, log_det_pad), (z_plain, log_det_plain) = padded.encode(x), plain.encode(x)
        reduced = padded.decode(z, "bf16")
    assert calls == [8, 8, 8]
    assert decoded.shape == expected.shape and reduced.shape == expected.shape
    torch.testing.assert_close(decoded, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(z_pad, z_plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_det_pad, log_det_plain, rtol=1e-5, atol=1e-4)
    with torch.inference_mode():
        assert padded.decode(z.repeat(2, 1)).shape[0] == 10  # beyond the largest bucket: unpadded
    assert calls[-1] == 10
