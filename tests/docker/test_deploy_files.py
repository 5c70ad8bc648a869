"""Static checks of the deployment files (no Docker needed; part of ``make test``).

The live checks are in ``test_live_service.py`` (run by ``docker/e2e.sh``).
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.core.config import Settings
from service.core.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "realnvp.json"
# Settings the image fixes itself (the container always listens on 0.0.0.0:8000).
IMAGE_SETTINGS = {"HOST", "PORT"}


def exported_sample_names() -> set[str]:
    """Every series name the service's registry can expose (``_bucket``, ``_sum``, ``_count``, ``_total``...)."""
    metrics = Metrics()
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",)}.get(family.type, ())
        names.update(family.name + suffix for suffix in suffixes)
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]


def test_dashboard_uses_only_metrics_the_service_exports() -> None:
    exported = exported_sample_names()
    for title, expr in dashboard_exprs():
        for name in re.findall(r"\brealnvp_[a-z_]+", expr):
            assert name in exported, f"panel '{title}': expected a metric of service/metrics.py, got {name}"


def test_dashboard_covers_the_operational_signals() -> None:
    used = " ".join(expr for _, expr in dashboard_exprs())
    for needed in (
        "rate(realnvp_requests_total",  # request rate
        "histogram_quantile(0.99, sum by (le, endpoint) (rate(realnvp_request_latency_seconds_bucket",  # latency
        "realnvp_batch_size_samples",  # batch size
        "realnvp_queue_depth_samples",  # queue depth
        'status=~"5.."',  # errors
        'up{job="api"}',  # replicas
        "realnvp_drift_typicality_p_value",  # drift of the inputs
    ):
        assert needed in used, f"expected the dashboard to query {needed}"


def test_dashboard_and_provisioning_agree_on_the_data_source() -> None:
    datasources = (DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    uid = re.search(r"^\s+uid:\s*(\S+)", datasources, re.MULTILINE).group(1)
    assert "url: http://prometheus:9090" in datasources
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
    provider = (DOCKER / "grafana" / "provisioning" / "dashboards" / "realnvp.yaml").read_text()
    assert "path: /etc/grafana/dashboards" in provider
    assert "./grafana/dashboards:/etc/grafana/dashboards" in (DOCKER / "compose.yaml").read_text()


def test_compose_passes_every_service_setting() -> None:
    compose = (DOCKER / "compose.yaml").read_text()
    for field in Settings.model_fields:
        name = field.upper()
        if name not in IMAGE_SETTINGS:
            assert re.search(rf"^\s+{name}:", compose, re.MULTILINE), f"expected {name} in the api environment"


def test_prometheus_scrapes_the_api_service_by_dns() -> None:
    config = (DOCKER / "prometheus.yml").read_text()
    assert "job_name: api" in config
    assert "names: [api]" in config
    assert "metrics_path: /metrics" in config


class _Readiness(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def readiness_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Readiness)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_healthcheck(port: int) -> int:
    env = {**os.environ, "PORT": str(port)}
    return subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], env=env, capture_output=True).returncode


@pytest.mark.parametrize(("status", "expected"), [(200, 0), (503, 1)])
def test_healthcheck_follows_readyz(
    readiness_server: http.server.HTTPServer, monkeypatch: pytest.MonkeyPatch, status: int, expected: int
) -> None:
    monkeypatch.setattr(_Readiness, "status", status)
    assert run_healthcheck(readiness_server.server_address[1]) == expected


def test_healthcheck_fails_when_nothing_listens() -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Readiness)
    port = server.server_address[1]
    server.server_close()
    assert run_healthcheck(port) == 1


def test_train_job_resolves_bundled_configs(tmp_path: Path) -> None:
    sys.path.insert(0, str(DOCKER))
    try:
        import train_job
    finally:
        sys.path.remove(str(DOCKER))
    for config in (REPO / "training" / "configs").glob("*.toml"):
        assert train_job.resolve_config(config.stem).read_text() == config.read_text()
    own = tmp_path / "mine.toml"
    assert train_job.resolve_config(str(own)) == own


# ---------------------------------------------------------------------------------------------------------- CI
def test_ci_fails_when_the_deployment_test_cannot_run() -> None:
    """``.ci/run``: the suite, then ``docker/e2e.sh`` with ``E2E_REQUIRE=1`` (or a machine without Docker passes)."""
    commands = [line.split(" #", 1)[0].strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    commands = [command for command in commands if command and not command.startswith("#")]
    assert "set -euo pipefail" in commands, commands  # a failing step fails CI
    (e2e,) = [index for index, command in enumerate(commands) if "docker/e2e.sh" in command]
    assert "make test" in commands[:e2e], commands
    words = shlex.split(commands[e2e])
    assignments = words[: next(i for i, word in enumerate(words) if "=" not in word)]
    exported = any(shlex.split(command)[:2] == ["export", "E2E_REQUIRE=1"] for command in commands[:e2e])
    assert "E2E_REQUIRE=1" in assignments or exported, commands[e2e]


@pytest.mark.parametrize(("require", "status"), [("1", 1), ("0", 0), (None, 0)])
def test_e2e_skip_fails_only_when_required(require: str | None, status: int) -> None:
    """The ``skip`` of docker/e2e.sh, run on its own: it says SKIPPED, and exits 1 under ``E2E_REQUIRE=1``."""
    script = (DOCKER / "e2e.sh").read_text()
    log = re.search(r"^log\(\) \{.*\}$", script, re.M)
    skip = re.search(r"^skip\(\) \{.*?^\}$", script, re.S | re.M)
    assert log is not None and skip is not None
    program = "\n".join(["START=$SECONDS", log.group(0), skip.group(0), "skip 'no engine'"])
    env = {key: value for key, value in os.environ.items() if key != "E2E_REQUIRE"}
    if require is not None:
        env["E2E_REQUIRE"] = require
    done = subprocess.run(["bash", "-c", program], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == status, done.stderr
    assert "SKIPPED: no engine" in done.stderr
