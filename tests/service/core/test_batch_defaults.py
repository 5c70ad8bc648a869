"""Batching defaults follow the device (MAX_BATCH_SIZE 64 or 256, MAX_BATCHES_IN_FLIGHT 1 or 2); a set value wins."""

from __future__ import annotations

import pytest
import torch

from service.core.config import CPU_MAX_BATCH_SIZE, CUDA_MAX_BATCH_SIZE, Settings, device_is_cuda


@pytest.fixture(autouse=True)
def _no_batch_size_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAX_BATCH_SIZE", raising=False)
    monkeypatch.delenv("DEVICE", raising=False)


@pytest.mark.parametrize(("device", "expected"), [("cpu", 64), ("cuda", 256), ("cuda:1", 256)])
def test_the_unset_default_depends_on_the_device(device: str, expected: int) -> None:
    assert (CPU_MAX_BATCH_SIZE, CUDA_MAX_BATCH_SIZE) == (64, 256)
    assert Settings(device=device).max_batch_size == expected


def test_auto_means_cuda_only_when_cuda_is_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_is_cuda("auto") and Settings().max_batch_size == CUDA_MAX_BATCH_SIZE
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not device_is_cuda("auto") and Settings().max_batch_size == CPU_MAX_BATCH_SIZE


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_set_value_wins_on_any_device(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    assert Settings(device=device, max_batch_size=64).max_batch_size == 64
    monkeypatch.setenv("MAX_BATCH_SIZE", "32")
    assert Settings(device=device).max_batch_size == 32


@pytest.mark.parametrize(("device", "expected"), [("cpu", 1), ("cuda", 2)])
def test_batches_in_flight_default_to_two_on_cuda_only(
    monkeypatch: pytest.MonkeyPatch, device: str, expected: int
) -> None:
    monkeypatch.delenv("MAX_BATCHES_IN_FLIGHT", raising=False)
    assert Settings(device=device).max_batches_in_flight == expected
    assert Settings(device=device, max_batches_in_flight=1).max_batches_in_flight == 1
