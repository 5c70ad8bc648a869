"""Run the service in a subprocess on a free loopback port: one helper for tests and benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def spawn_server(
    model_dir: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
    ready_timeout_s: float = 90.0,
) -> Iterator[tuple[subprocess.Popen, str]]:
    """Start ``python -m service`` (or ``command``) on a free port and yield ``(process, base_url)`` once ready.

    Args:
        model_dir: served as ``MODEL_DIR``.
        log_path: the server's stdout and stderr go here.
        env: extra environment variables (setting names in upper case); ``LOG_LEVEL`` defaults to ``info``.
        command: the executable and its arguments, before ``--host``/``--port`` (default ``python -m service``).
        ready_timeout_s: how long to wait for ``/readyz`` to answer 200.

    Raises:
        RuntimeError: the server exited, reported a failed model, or was not ready in time (with its log's tail).
    """
    port = free_port()
    environment = {**os.environ, "MODEL_DIR": str(model_dir), "LOG_LEVEL": "info", **(env or {})}
    argv = command or [sys.executable, "-m", "service"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*argv, "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        give_up = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}: {_tail(log_path)}")
            try:
                ready = httpx.get(f"{base_url}/readyz", timeout=5)
                if ready.status_code == 200:
                    break
                if ready.json().get("status") == "failed":
                    raise RuntimeError(f"server not ready: {ready.text}")
            except httpx.TransportError:
                pass
            if time.monotonic() > give_up:
                raise RuntimeError(f"server not ready in {ready_timeout_s:.0f} s: {_tail(log_path)}")
            time.sleep(0.05)
        yield process, base_url
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


def _tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-2000:]


def rss_mib(pid: int) -> float:
    """Resident memory of a process (``VmRSS`` of /proc/PID/status), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
