"""A real ``python -m service`` process on a free loopback port, and what the tests read from it (RSS, fds)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.helpers import metric_value
from tests.support.server import spawn_server

REPO = Path(__file__).resolve().parents[2]


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
    with spawn_server(model_dir, log_path, env={"TORCH_THREADS": "1", **env}) as (process, url):
        yield LiveServer(process, url, int(url.rsplit(":", 1)[1]), log_path)
