"""Against a real uvicorn process (``python -m service``) on a free port: HTTP over TCP and SIGTERM drain."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.helpers import digit_images, metric_value, png_b64
from tests.support.server import spawn_server

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def running_server(
    store: Path, log_path: Path, command: list[str] | None = None, **env: str
) -> Iterator[tuple[subprocess.Popen, str]]:
    with spawn_server(store, log_path, env=env, command=command) as (process, base_url):
        yield process, base_url


@pytest.mark.slow
def test_http_over_tcp(store: Path, tmp_path: Path) -> None:
    with running_server(store, tmp_path / "server.log", API_KEY="k") as (_, base_url):
        headers = {"Authorization": "Bearer k"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
            sample = client.post("/sample", json={"model": "digits", "n": 2, "seed": 4})
            assert sample.status_code == 200 and sample.json()["shape"] == [2, 1, 8, 8]
            grid = client.get("/sample.png", params={"model": "digits", "n": 4, "seed": 1})
            assert grid.headers["content-type"] == "image/png" and grid.content.startswith(b"\x89PNG")
            image = base64.b64decode(png_b64(digit_images(1)[0]))
            scored = client.post(
                "/log-likelihood", data={"model": "digits"}, files=[("files", ("x.png", image, "image/png"))]
            )
            assert scored.status_code == 200 and len(scored.json()["bits_per_dim"]) == 1
            assert (
                client.post("/sample", json={"model": "digits"}, headers={"Authorization": "Bearer no"}).status_code
                == 401
            )
            too_big = client.post(
                "/log-likelihood", content=b"x" * (11 * 1024 * 1024), headers={"content-type": "application/json"}
            )
            assert too_big.status_code == 413
            metrics = httpx.get(f"{base_url}/metrics").text
            assert (
                metric_value(metrics, "realnvp_requests_total", endpoint="/sample", model="digits", status="200") == 1
            )
            assert httpx.get(f"{base_url}/docs").status_code == 200


@pytest.mark.slow
def test_console_script_starts_the_service(store: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("realnvp-serve")
    if not script.exists():
        pytest.skip("realnvp-serve is not installed in this environment")
    with running_server(store, tmp_path / "script.log", command=[str(script)]) as (_, base_url):
        assert httpx.get(f"{base_url}/models", timeout=10).json()["models"][0]["name"] == "digits"


@pytest.mark.slow
def test_sigterm_drains_queued_requests_then_exits(store: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "drain.log"
    with running_server(store, log_path, MAX_BATCH_SIZE="64", MAX_WAIT_MS="1500") as (process, base_url):
        results: list[int] = []

        def ask() -> None:
            response = httpx.post(f"{base_url}/sample", json={"model": "moons", "n": 3}, timeout=30)
            results.append(response.status_code)

        threads = [threading.Thread(target=ask) for _ in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while metric_value(httpx.get(f"{base_url}/metrics").text, "realnvp_queue_depth_samples", model="moons") < 12:
            assert time.monotonic() < deadline, "requests never reached the queue"
            time.sleep(0.02)
        sent_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        refused = False
        while time.monotonic() - sent_at < 1.2:  # before the queued batch is due, new connections fail
            try:
                httpx.get(f"{base_url}/healthz", timeout=0.5)
            except httpx.TransportError:
                refused = True
                break
            time.sleep(0.05)
        for thread in threads:
            thread.join(timeout=30)
        assert results == [200, 200, 200, 200]  # the queued work finished
        assert refused, "the server kept accepting connections after SIGTERM"
        # uvicorn re-raises the signal once shut down, so the status is SIGTERM's (or 0 on other platforms)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)
    log = log_path.read_text()
    assert "service stopped: queues drained" in log
    assert "Traceback" not in log
    assert log.index("Shutting down") < log.index("service stopped: queues drained")
