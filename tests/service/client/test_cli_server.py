"""``python -m service.client score`` as a process against a real ``python -m service`` on a free port."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import REPO, spawn_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(anomaly_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("client") / "server.log"
    env = {"TORCH_THREADS": "1", "LOG_LEVEL": "warning", "API_KEY": "k3y", "DEFAULT_MODEL": "digits"}
    with spawn_server(anomaly_store, log, env=env) as (_, url):
        yield url


def score(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service.client", "score", *args, "--no-progress"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin"})


def test_scores_a_folder_over_http_and_resumes(server: str, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    done = score(str(image_folder), "--url", server, "--out", str(out), "--api-key", "k3y", "--batch", "2")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stderr.strip().splitlines()[-1])
    assert (summary["scored"], summary["errors"], summary["endpoint"]) == (5, 2, "/anomaly")
    with out.open(newline="") as stream:
        rows = {row["id"]: row for row in csv.DictReader(stream)}
    assert (
        len(rows) == 7 and rows["a/img0.png"]["score"] == "combined" and float(rows["a/img0.png"]["bits_per_dim"]) > 0
    )
    again = score(str(image_folder), "--url", server, "--out", str(out), "--api-key", "k3y")
    assert again.returncode == 0 and json.loads(again.stderr.strip().splitlines()[-1])["requests"] == 0


def test_stops_with_status_2_on_what_no_item_can_fix(server: str, image_folder: Path) -> None:
    refused = score(str(image_folder), "--url", server, "--api-key", "wrong")
    assert refused.returncode == 2 and "/anomaly answered 401: expected the configured API key" in refused.stderr
    unknown = score(str(image_folder), "--url", server, "--api-key", "k3y", "--model", "cifar")
    assert unknown.returncode == 2 and "404: model: expected one of ['digits', 'legacy', 'moons']" in unknown.stderr
    missing = score("/nonexistent/folder", "--url", server)
    assert missing.returncode == 2 and "PATH: expected a folder or a file, got nothing at" in missing.stderr
