"""``bench/gpu_check.py --device cpu --quick``: every stage at toy sizes on CPU, as a GPU host would run them."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = [REPO / "bench" / "gpu_check.py", REPO / "bench" / "gpu_check_service.py"]


@pytest.mark.slow
def test_the_quick_cpu_check_runs_every_stage_and_passes(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=420, env=env, cwd=REPO)
    report = json.loads(out.read_text())
    stages = report["stages"]
    assert list(stages) == [
        "versions", "train_step", "fit", "ddp", "runner", "oom", "service", "service_load", "cuda_tests",
    ]  # fmt: skip
    failed = {name: stage for name, stage in stages.items() if stage["status"] == "FAIL"}
    assert done.returncode == 0 and report["status"] == "PASS", (failed, done.stderr[-3000:])
    # What only a GPU can do is recorded as skipped, with what it would have done.
    assert stages["oom"]["status"] == "SKIPPED" and "503" in stages["oom"]["would"]
    assert stages["cuda_tests"]["status"] == "SKIPPED" and stages["cuda_tests"]["counts"]["skipped"] >= 3
    # The figures a reader of the report looks for are there.
    runs = stages["train_step"]["runs"]
    assert {(r["precision"], r["batch_size"]) for r in runs} == {
        (p, b) for p in ("fp32", "bf16-autocast") for b in (4, 8)
    }
    assert all(r["images_per_s"] > 0 and r["finite"] for r in runs)
    assert stages["fit"]["checks"] == dict.fromkeys(stages["fit"]["checks"], True)
    assert "DDP x1 (gloo)" in stages["ddp"]["startup_line"]
    assert stages["runner"]["agreement"]["tf32_off"]["max_abs_nats"] < 1e-2
    assert set(stages["runner"]["latency_ms"]) == {"1", "4"}
    assert stages["service"]["unchecked_endpoints"] == [] and stages["service"]["checks"]["seeded_sample_reproducible"]
    assert stages["service_load"]["max_batch_sizes_measured"] == [1, 4]
    print(f"gpu_check --device cpu --quick: {report['wall_s']} s")  # seen with -s


def test_no_function_of_the_check_is_longer_than_80_lines() -> None:
    long = [
        f"{path.name}:{node.lineno} {node.name}"
        for path in MODULES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 80
    ]
    assert not long, long
