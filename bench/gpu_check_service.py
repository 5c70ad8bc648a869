"""The service stages of ``bench/gpu_check.py``: the runner, the OOM probe, every endpoint, the load benchmark and
``pytest -m cuda``.

Each stage takes the check's state (``bench.gpu_check.Check``) and returns its figures with a ``status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root, for tests.*
from tests.support.server import spawn_server
from training.checkpoint import load_flow
from training.export import export_checkpoint

if TYPE_CHECKING:
    from bench.gpu_check import Check

REPO = Path(__file__).resolve().parents[1]
PASS, FAIL, SKIPPED = "PASS", "FAIL", "SKIPPED"
OOM_PLAN = (
    "serve the exported model in-process on the GPU; (1) hold all but 512 MiB of the free GPU memory in this "
    "process and POST /sample with n = MAX_SAMPLES = MAX_BATCH_SIZE, one batch far too large for what is left "
    "(recorded: the service halves a batch that runs out of memory, so 200 is the good answer); (2) hold all "
    "but 2 MiB and POST a small /sample: not even one row fits, expect 503 with Retry-After and /readyz 200; "
    "(3) release the memory, expect a small /sample 200"
)


def _artifact(check: Check) -> tuple[Path, str] | None:
    store, model = check.produced.get("store"), check.produced.get("model")
    return (store, model) if store is not None else None


# --------------------------------------------------------------------------------------------------- runner
def stage_runner(check: Check) -> dict[str, Any]:
    """Export the fit's checkpoint; the service's runner on the device: latency, agreement with float64 CPU."""
    from service.engine.runner import ModelRunner, resolve_device

    checkpoint = check.produced.get("checkpoint")
    if checkpoint is None:
        return {"status": FAIL, "error": "needs the checkpoint of stage fit"}
    store = check.workdir / "store"
    shutil.rmtree(store, ignore_errors=True)
    with contextlib.redirect_stdout(sys.stderr):
        card = export_checkpoint(checkpoint, store / "synthetic", name="synthetic")
    check.produced["store"], check.produced["model"] = store, "synthetic"
    device = resolve_device(check.device)  # as the service does: TF32 off on CUDA
    runner = ModelRunner.load(store / "synthetic", device)
    latency = {str(b): first_and_warm_ms(runner, b, check.sizes.warm_calls) for b in check.sizes.latency_batches}
    runner.warm_up()  # the service's own contract check, on the device
    flow, _ = load_flow(checkpoint, use_ema=bool(card["metrics"].get("weights_ema")))
    agreement = {"tf32_off": agreement_nats(runner, flow, check.sizes.agreement_items)}
    if check.cuda:
        agreement["tf32_on"] = with_tf32(lambda: agreement_nats(runner, flow, check.sizes.agreement_items))
    else:
        agreement["tf32_on"] = "not applicable on CPU"
    ok = agreement["tf32_off"]["max_abs_nats"] <= agreement["tf32_off"]["tolerance_nats"]
    return {"status": PASS if ok else FAIL, "device": str(device), "latency_ms": latency, "agreement": agreement}


def first_and_warm_ms(runner: Any, batch: int, calls: int) -> dict[str, float]:
    """Milliseconds of the first ``encode`` and ``decode`` at ``batch`` and the median of ``calls`` warm ones.

    The runner returns CPU tensors, so each call has waited for the device when it returns.
    """
    x = runner.scoring_input(runner.example_batch(batch, seed=batch))
    with torch.inference_mode():
        (z, _), encode_ms = time_calls(lambda: runner.encode(x), calls)
        _, decode_ms = time_calls(lambda: runner.decode(z), calls)
    return {
        "encode_first": encode_ms[0],
        "encode_warm_median": encode_ms[1],
        "decode_first": decode_ms[0],
        "decode_warm_median": decode_ms[1],
    }


def time_calls(call: Callable[[], Any], calls: int) -> tuple[Any, tuple[float, float]]:
    """``(last result, (first call ms, median of the next calls ms))``."""
    times = []
    for _ in range(calls + 1):
        started = time.perf_counter()
        result = call()
        times.append(1000 * (time.perf_counter() - started))
    warm = sorted(times[1:])
    return result, (round(times[0], 3), round(warm[len(warm) // 2], 3))


def agreement_nats(runner: Any, flow: torch.nn.Module, items: int) -> dict[str, float]:
    """Largest ``|log p|`` difference (nats) between the runner on its device and the eager flow in float64 on CPU."""
    x = runner.example_batch(items, seed=1)  # (items, C, H, W) 8-bit values
    with torch.inference_mode():
        served = runner.log_likelihood(*runner.encode(runner.scoring_input(x)))  # float64 (items,)
        reference = flow.double().eval().log_prob(x.double())  # eval mode: the bin centre, as the service scores
    flow.float()
    difference = (served - reference).abs().max().item()
    scale = 1.0 + reference.abs().max().item()
    return {"max_abs_nats": difference, "relative": difference / scale, "tolerance_nats": 1e-4 * scale}


def with_tf32(call: Callable[[], Any]) -> Any:
    """``call()`` with TF32 matmuls and convolutions allowed, then back to what the service sets (off)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        return call()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


# --------------------------------------------------------------------------------------------------- OOM
def stage_oom(check: Check) -> dict[str, Any]:
    """Out of device memory through the service: a too-large batch, then no memory at all; ready, and it recovers."""
    if not check.cuda:
        return {"status": SKIPPED, "reason": "CPU: no device memory to exhaust", "would": OOM_PLAN}
    artifact = _artifact(check)
    if artifact is None:
        return {"status": FAIL, "error": "needs the artifact exported by stage runner"}
    result = asyncio.run(_oom_probe(*artifact, check.device, check.sizes.oom_samples))
    checks = {
        "large_batch_answered": result["large_batch"]["status_code"] in (200, 503),
        "no_memory_is_503": result["no_memory"]["status_code"] == 503,
        "retry_after": result["no_memory"]["retry_after"] is not None,
        "still_ready": result["ready_while_full"] == 200,
        "recovered": result["small_after"] == 200,
    }
    return {**result, "checks": checks, "status": PASS if all(checks.values()) else FAIL, "plan": OOM_PLAN}


async def _oom_probe(store: Path, model: str, device: str, samples: int) -> dict[str, Any]:
    from tests.support.inprocess import serve_in_process

    small = {"model": model, "n": 4, "seed": 0}
    limits = {"max_samples": samples, "max_batch_size": samples, "max_queue": samples, "request_timeout_s": 120}
    async with serve_in_process(store, device=device, **limits) as client:
        result: dict[str, Any] = {"small_before": (await client.post("/sample", json=small)).status_code}
        result["free_gib_before"] = round(torch.cuda.mem_get_info()[0] / 2**30, 1)
        with hold_device_memory(device, leave_bytes=512 * 2**20):
            large = await client.post("/sample", json={"model": model, "n": samples, "seed": 0, "format": "png"})
        result["large_batch"] = {"n": samples, "status_code": large.status_code, "body": _short(large)}
        with hold_device_memory(device, leave_bytes=2 * 2**20):
            full = await client.post("/sample", json=small)
            result["ready_while_full"] = (await client.get("/readyz")).status_code
        result["no_memory"] = {
            "status_code": full.status_code,
            "retry_after": full.headers.get("retry-after"),
            "body": _short(full),
        }
        result["small_after"] = (await client.post("/sample", json=small)).status_code
    return result


@contextlib.contextmanager
def hold_device_memory(device: str, leave_bytes: int) -> Iterator[None]:
    """Allocate all of the device's free memory but ``leave_bytes`` (in this process, which serves); free it after."""
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    blocker = torch.empty(max(0, free - leave_bytes), dtype=torch.uint8, device=device)
    try:
        yield
    finally:
        del blocker
        torch.cuda.empty_cache()


def _short(response: httpx.Response) -> str:
    return response.text[:300] if response.status_code != 200 else f"{len(response.content)} bytes"


# --------------------------------------------------------------------------------------------------- endpoints
def stage_service(check: Check) -> dict[str, Any]:
    """``python -m service`` with ``DEVICE`` set: every documented endpoint answers 200; seeded samples repeat."""
    artifact = _artifact(check)
    if artifact is None:
        return {"status": FAIL, "error": "needs the artifact exported by stage runner"}
    store, model = artifact
    env = {"DEVICE": check.device, "LOG_LEVEL": "warning"}
    if not check.cuda:
        env["TORCH_THREADS"] = "1"
    with (
        spawn_server(store, check.workdir / "service.log", env=env, ready_timeout_s=300) as (_, url),
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        answers = endpoint_answers(client, model, check.sizes.image)
        seeded = seeded_samples(client, model)
        documented = documented_endpoints(client)
    unchecked = sorted(documented - {key.split(" -> ")[0] for key in answers})
    checks = {
        "every_endpoint_200": all(code == 200 for code in answers.values()),
        "every_documented_endpoint_checked": not unchecked,
        **seeded,
    }
    return {
        "status": PASS if all(checks.values()) else FAIL,
        "checks": checks,
        "answers": answers,
        "unchecked_endpoints": unchecked,
    }


def endpoint_answers(client: httpx.Client, model: str, shape: tuple[int, int, int]) -> dict[str, int]:
    """``{"METHOD /path/{template}": status}`` for one plausible request to every endpoint."""
    items = np.random.default_rng(0).integers(0, 256, size=(2, *shape)).tolist()
    image = {"name": "input", "shape": [2, *shape], "datatype": "UINT8", "data": np.array(items).ravel().tolist()}
    plain = [
        ("GET", "/", None),
        ("GET", "/healthz", None),
        ("GET", "/readyz", None),
        ("GET", "/models", None),
        ("GET", "/models/{name}", None),
        ("GET", "/metrics", None),
        ("POST", "/sample", {"model": model, "n": 2, "seed": 3}),
        ("GET", "/sample.png", {"model": model, "n": 4, "seed": 3}),
        ("POST", "/log-likelihood", {"model": model, "inputs": items}),
        ("POST", "/encode", {"model": model, "inputs": items}),
        ("POST", "/anomaly", {"model": model, "inputs": items}),
        ("POST", "/interpolate", {"model": model, "inputs": items, "steps": 3}),
        ("GET", "/models/{name}/drift", None),
        ("GET", "/v2", None),
        ("GET", "/v2/health/live", None),
        ("GET", "/v2/health/ready", None),
        ("GET", "/v2/models/{name}", None),
        ("GET", "/v2/models/{name}/ready", None),
        ("POST", "/v2/models/{name}/infer", {"inputs": [image]}),
    ]
    answers: dict[str, int] = {}
    for method, template, payload in plain:
        path = template.replace("{name}", model)
        response = client.get(path, params=payload) if method == "GET" else client.post(path, json=payload)
        answers[f"{method} {template}"] = response.status_code
        if template == "/encode" and response.status_code == 200:
            latents = response.json()["latents"]
            decoded = client.post("/decode", json={"model": model, "latents": latents})
            answers["POST /decode"] = decoded.status_code
    return answers


def seeded_samples(client: httpx.Client, model: str) -> dict[str, bool]:
    """The same seed draws the same samples (twice, and after other traffic); another seed draws others."""
    request = {"model": model, "n": 3, "seed": 123, "temperature": 0.8}
    first = client.post("/sample", json=request).json()["samples"]
    client.post("/sample", json={"model": model, "n": 7})  # other traffic in between
    second = client.post("/sample", json=request).json()["samples"]
    other = client.post("/sample", json={**request, "seed": 124}).json()["samples"]
    return {"seeded_sample_reproducible": first == second, "other_seed_differs": first != other}


def documented_endpoints(client: httpx.Client) -> set[str]:
    """``"METHOD /path"`` of every operation in the service's OpenAPI document."""
    spec = client.get("/openapi.json").json()
    return {f"{method.upper()} {path}" for path, operations in spec["paths"].items() for method in operations}


# --------------------------------------------------------------------------------------------------- load
def stage_service_load(check: Check) -> dict[str, Any]:
    """``bench/service_load.py``, short, at two ``MAX_BATCH_SIZE`` values (servers on the check's device)."""
    artifact = _artifact(check)
    if artifact is None:
        return {"status": FAIL, "error": "needs the artifact exported by stage runner"}
    store, model = artifact
    sizes, runs, ok = check.sizes, {}, True
    for max_batch in sizes.load_batches:
        out = check.workdir / f"service_load_{max_batch}.json"
        argv = [sys.executable, str(REPO / "bench" / "service_load.py"), "--model-dir", str(store), "--model", model]
        argv += ["--duration", str(sizes.load_duration_s), "--max-batch-size", str(max_batch), "--out", str(out)]
        argv += ["--reference-seconds", str(sizes.load_reference_s)]
        argv += ["--concurrency", *map(str, sizes.load_concurrency), "--torch-threads", "1" if not check.cuda else "0"]
        if check.quick:
            argv += ["--endpoints", "log-likelihood"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=check.env(), cwd=REPO)
        if done.returncode != 0 or not out.is_file():
            runs[str(max_batch)] = {"returncode": done.returncode, "stderr_tail": done.stderr[-2000:]}
            ok = False
            continue
        runs[str(max_batch)] = summarize_load(json.loads(out.read_text()))
        ok = ok and not runs[str(max_batch)]["errors"]
    measured = sorted({1, *sizes.load_batches})  # every run also serves with MAX_BATCH_SIZE=1 (unbatched)
    return {
        "status": PASS if ok else FAIL,
        "max_batch_sizes_measured": measured,
        "runs_by_max_batch_size": runs,
        "duration_s": sizes.load_duration_s,
    }


def summarize_load(report: dict[str, Any]) -> dict[str, Any]:
    """The figures of one ``service_load.py`` report that a reader compares: req/s, p50, batch sizes, errors."""
    points, errors = {}, {}
    for endpoint, by_concurrency in report["results"].items():
        for concurrency, modes in by_concurrency.items():
            key = f"{endpoint} c={concurrency}"
            points[key] = {
                mode: {
                    "requests_per_s": round(modes[mode]["requests_per_s"], 1),
                    "p50_ms": round(modes[mode]["p50_ms"], 2),
                    "mean_batch_size": modes[mode].get("mean_batch_size"),
                }
                for mode in ("batched", "unbatched")
                if mode in modes
            }
            for mode in ("batched", "unbatched"):
                if modes.get(mode, {}).get("errors"):
                    errors[f"{key} {mode}"] = modes[mode]["errors"]
    return {"points": points, "errors": errors}


# --------------------------------------------------------------------------------------------------- tests
def stage_cuda_tests(check: Check) -> dict[str, Any]:
    """``pytest -m cuda`` over the test files that use the marker: on CUDA they must pass; without, they skip.

    Only those files are collected (collecting the whole suite takes half a minute on a small machine).
    """
    files = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py") if "mark.cuda" in p.read_text()
    )
    if not files:
        return {"status": FAIL, "error": "no test file under tests/ carries the cuda marker"}
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *files]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=400, env=check.env(), cwd=REPO)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    counts = {
        word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|skipped|error|deselected)", summary)
    }
    result = {"returncode": done.returncode, "files": files, "summary": summary, "counts": counts}
    if not check.cuda:
        all_skipped = done.returncode == 0 and counts.get("passed", 0) == 0 and counts.get("skipped", 0) > 0
        return {**result, "status": SKIPPED if all_skipped else FAIL, "reason": "no CUDA device: all skipped"}
    ok = done.returncode == 0 and counts.get("passed", 0) > 0
    return {**result, "status": PASS if ok else FAIL, "output_tail": "" if ok else done.stdout[-3000:]}
