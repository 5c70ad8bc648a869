"""The GPU deployment files, checked on a CPU host: torchrun per GPU, shared memory, GPU reservations."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


@pytest.fixture(scope="module")
def train_job():
    sys.path.insert(0, str(DOCKER))
    try:
        import train_job
    finally:
        sys.path.remove(str(DOCKER))
    return train_job


@pytest.mark.parametrize(("count", "torchrun"), [("1", False), ("4", True), ("8", True)])
def test_train_job_runs_one_process_per_gpu(train_job, count: str, torchrun: bool) -> None:
    argv = train_job.fit_launcher("python3", count)
    if torchrun:
        assert argv[:3] == ["python3", "-m", "torch.distributed.run"]
        assert "--standalone" in argv and f"--nproc-per-node={count}" in argv and argv[-2:] == ["-m", "training"]
    else:
        assert argv == ["python3", "-m", "training"]


def test_train_job_counts_visible_gpus_when_unset(train_job) -> None:
    argv = train_job.fit_launcher("python3", None)
    assert argv == ["python3", "-m", "training"] or "torch.distributed.run" in argv


def test_gpu_compose_reserves_gpus_in_forms_compose_accepts_and_gives_nccl_shared_memory() -> None:
    compose = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())
    for name in ("api", "train"):
        for device in compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]:
            assert device["count"] == "all" or isinstance(device["count"], int), (name, device["count"])
    train = compose["services"]["train"]
    assert train.get("ipc") == "host" or int(str(train.get("shm_size", "0")).rstrip("gGmM") or 0) > 0
    assert "GPU_COUNT" in train["environment"]
    # the wheel brings its own CUDA libraries: no CUDA base image under them
    assert "nvidia/cuda" not in compose["x-cuda-build-args"]["BASE_IMAGE"]
