"""A real ``python -m service`` process on a free loopback port, and what the tests read from it (RSS, fds)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.service.helpers import metric_value

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of a process (``VmRSS`` of /proc/PID/status), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    """File descriptors the process holds (sockets included)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class LiveServer:
    """A started service process."""

    process: subprocess.Popen
    url: str
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(httpx.get(f"{self.url}/metrics", timeout=10).text, name, **labels)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def live_server(model_dir: Path, log_path: Path, **env: str) -> Iterator[LiveServer]:
    """Start the service with ``env`` (setting names in upper case) and yield it once ``/readyz`` is 200."""
    port = free_port()
    environment = {**os.environ, "MODEL_DIR": str(model_dir), "LOG_LEVEL": "info", "TORCH_THREADS": "1", **env}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(process, f"http://127.0.0.1:{port}", port, log_path)
    try:
        give_up = time.monotonic() + 90
        while True:
            assert process.poll() is None, server.log()
            try:
                if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < give_up, server.log()
            time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
