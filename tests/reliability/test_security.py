"""Security properties (docs/security.md): what is loaded, what is unpickled, how the key is checked and kept.

Model names in requests never reach the file system: test_hostile_inputs.py::
test_model_names_are_looked_up_never_used_as_paths.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
import yaml

import service.api.deps
import service.engine.runner
from service.core.config import Settings
from service.core.metrics import Metrics
from service.engine.registry import ModelRegistry
from service.engine.runner import ArtifactError, ModelRunner
from tests.reliability.live import REPO, live_server
from tests.support.artifacts import vector_flow
from tests.support.inprocess import serve_in_process
from training.checkpoint import CheckpointError, load_checkpoint
from training.export import export_checkpoint

SECRET = "s3cr3t-Tk9-do-not-log"


# ------------------------------------------------------------------------------------------------ checkpoints
class _Payload:
    """Unpickling this runs ``os.system``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoints_never_unpickle_arbitrary_objects(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = tmp_path / "hostile.pt"
    torch.save({"format_version": 1, "config": {}, "model": _Payload(marker)}, hostile)
    with open(tmp_path / "plain.pkl", "wb") as handle:  # not even a torch archive
        pickle.dump(_Payload(marker), handle)
    for path in (hostile, tmp_path / "plain.pkl"):
        with pytest.raises(CheckpointError, match="cannot read checkpoint"):
            load_checkpoint(path)
        with pytest.raises(CheckpointError, match="cannot read checkpoint"):
            export_checkpoint(path, tmp_path / "artifact")
    # The command line as an operator runs it (evaluate, export and resume share load_checkpoint).
    result = subprocess.run(
        [sys.executable, "-m", "training", "evaluate", "--checkpoint", str(hostile)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 1 and "cannot read checkpoint" in result.stderr, result.stderr[-2000:]
    assert not marker.exists(), "a checkpoint ran code while loading"
    assert not (tmp_path / "artifact").exists()


# -------------------------------------------------------------------------------------------------- artifacts
def _copy_model(store: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "store" / "moons"
    shutil.copytree(store / "moons", folder)
    return folder


def test_a_tampered_module_is_refused_before_it_is_deserialised(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _copy_model(store, tmp_path)
    torch.jit.save(torch.jit.script(vector_flow(seed=1)), str(folder / "model.ts"))  # valid TorchScript, other weights
    loads: list[object] = []
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *args, **kwargs: loads.append(args) or real_load(*args, **kwargs))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        ModelRunner.load(folder, torch.device("cpu"))
    assert loads == [], "model.ts was deserialised before its checksum was checked"


def test_the_module_loaded_is_the_one_whose_checksum_was_verified(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Swap model.ts right after it was hashed (time of check vs. time of use): the verified bytes are served."""
    folder = _copy_model(store, tmp_path)
    original = torch.jit.load(str(folder / "model.ts"))
    impostor = tmp_path / "impostor.ts"
    torch.jit.save(torch.jit.script(vector_flow(seed=1)), str(impostor))
    real_sha256 = hashlib.sha256

    class SwapAfterHashing:
        def __init__(self, *data: bytes) -> None:
            self._digest = real_sha256(*data)

        def update(self, data: bytes) -> None:
            self._digest.update(data)

        def hexdigest(self) -> str:
            if impostor.exists():
                os.replace(impostor, folder / "model.ts")
            return self._digest.hexdigest()

    monkeypatch.setattr(service.engine.runner.hashlib, "sha256", SwapAfterHashing)
    runner = ModelRunner.load(folder, torch.device("cpu"))
    monkeypatch.undo()
    assert not impostor.exists(), "the swap did not happen"
    x = torch.randn(5, 2)
    torch.testing.assert_close(runner.module.log_prob(x), original.log_prob(x))


def test_only_model_dir_subfolders_are_served(store: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(store / "moons", root / "moons")
    shutil.copytree(store / "digits", root / ".hidden")  # export's temporary and old folders are hidden
    shutil.copytree(store / "digits", tmp_path / "elsewhere")
    (root / "notes.txt").write_text("not a model")
    registry = ModelRegistry(Settings(model_dir=root), Metrics())
    registry.discover()
    assert sorted(registry.models) == ["moons"]
    assert all(served.directory.parent == root for served in registry.models.values())


# ------------------------------------------------------------------------------------------------ the API key
@pytest.mark.anyio
async def test_the_api_key_is_compared_in_constant_time(
    store: Path, key_comparisons: list[tuple[bytes, bytes]]
) -> None:
    compared = key_comparisons
    async with serve_in_process(store, api_key=SECRET) as client:
        for token, status in (("x", 401), (SECRET[:-1], 401), (SECRET + "x", 401), ("y" * 4096, 401), (SECRET, 200)):
            response = await client.post(
                "/sample", json={"model": "moons"}, headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == status, response.text
    # Every key, whatever its length, went through hmac.compare_digest (no early exit on length or prefix).
    assert compared == [
        (token.encode(), SECRET.encode()) for token in ("x", SECRET[:-1], SECRET + "x", "y" * 4096, SECRET)
    ]


@pytest.mark.anyio
async def test_secrets_never_appear_in_bodies_or_logs_in_process(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    near_miss = SECRET[:-1] + "X"
    settings = Settings(model_dir=store, api_key=SECRET)
    assert SECRET not in repr(settings) and SECRET not in str(settings) and SECRET not in settings.model_dump_json()
    bodies = []
    async with serve_in_process(store, api_key=SECRET) as client:
        for headers in (
            {},
            {"Authorization": f"Bearer {near_miss}"},
            {"Authorization": f"Basic {SECRET}"},
            {"Authorization": SECRET},
            {"Authorization": f"Bearer {SECRET}"},
        ):
            for method, path, body in (
                ("POST", "/sample", {"model": "moons", "n": 1}),
                ("POST", "/sample", {"model": "moons", "n": 0}),
                ("POST", "/log-likelihood", {"model": "nope", "inputs": [[0, 0]]}),
                ("GET", "/models", None),
                ("GET", "/metrics", None),
                ("GET", "/readyz", None),
                ("GET", "/openapi.json", None),
            ):
                response = await client.request(method, path, json=body, headers=headers)
                bodies.append(response.text + str(response.headers))
    everything = "\n".join(bodies) + "\n".join(record.getMessage() for record in caplog.records)
    assert SECRET not in everything and near_miss not in everything


def test_secrets_never_appear_in_the_server_log(store: Path, tmp_path: Path) -> None:
    near_miss = SECRET[:-1] + "X"
    with live_server(store, tmp_path / "secret.log", API_KEY=SECRET, LOG_LEVEL="debug") as live:
        for token in (near_miss, SECRET, "-"):
            httpx.post(f"{live.url}/sample", json={"model": "moons"}, headers={"Authorization": f"Bearer {token}"})
        httpx.post(f"{live.url}/sample", json={"model": "moons"}, headers={"Authorization": SECRET})
        log = live.log()
    assert "401" in log and "200" in log  # the access log is on
    assert SECRET not in log and near_miss not in log


# --------------------------------------------------------------------------------------------------- container
def test_the_container_runs_as_non_root_with_a_read_only_model_volume() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    runtime = dockerfile.rsplit("\nFROM ", 1)[1]  # the last stage is the image that runs
    users = re.findall(r"^USER\s+(\S+)", runtime, flags=re.MULTILINE)
    assert users and users[-1] not in ("root", "0", "0:0"), users
    uid = re.search(r"useradd[^\n]*--uid (\d+)", dockerfile)
    assert uid and int(uid.group(1)) >= 1000
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    api_volumes = compose["services"]["api"]["volumes"]
    models = [volume for volume in api_volumes if volume.split(":")[1] == "/models"]
    assert models and all(volume.endswith(":ro") for volume in models), api_volumes
    assert "user" not in compose["services"]["api"] or compose["services"]["api"]["user"] not in ("root", "0")
