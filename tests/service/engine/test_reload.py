"""Hot reload and versions: a folder of MODEL_DIR added, replaced or removed while the service runs.

Versions are told apart by their answers: ``moons`` 1.0.0 and 2.0.0 are NVPNets with different weights, so a
``/log-likelihood`` of the same points is one vector or the other (to float tolerance), never a mix.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

import service.engine.registry
from service.core.config import Settings
from service.core.errors import UnavailableError
from service.core.metrics import Metrics
from service.engine.registry import ModelRegistry
from tests.support.artifacts import vector_flow, write_artifact
from tests.support.helpers import metric_value
from tests.support.inprocess import serve_in_process

pytestmark = pytest.mark.anyio
POINTS = [[0.1 * i - 1.0, 0.05 * i] for i in range(24)]  # 24 items: three batches of 8, so chunks are checked too


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``moons`` artifacts: 1.0.0, 2.0.0 (other weights), 2.0.0 again with other weights, and a broken one."""
    root = tmp_path_factory.mktemp("moons_versions")
    built = {}
    for key, seed, version in (("v1", 0, "1.0.0"), ("v2", 1, "2.0.0"), ("v2b", 2, "2.0.0")):
        built[key] = write_artifact(
            root / key / "moons",
            vector_flow(seed),
            flow_type="NVPNet",
            data_kind="vector",
            shape=[2],
            value_range=None,
            card_overrides={"version": version},
        )
    corrupt = root / "corrupt" / "moons"
    shutil.copytree(built["v2"], corrupt)
    data = bytearray((corrupt / "model.ts").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the card's sha256 no longer matches
    (corrupt / "model.ts").write_bytes(bytes(data))
    built["corrupt"] = corrupt
    return built


def install(source: Path, root: Path, name: str = "moons") -> None:
    """Put ``source`` at ``root/name`` the way the exporter does: copied aside (hidden), then renamed in."""
    staging = root / f".{name}.tmp"
    shutil.copytree(source, staging)
    if (root / name).exists():
        os.rename(root / name, root / f".{name}.old")
    os.rename(staging, root / name)
    shutil.rmtree(root / f".{name}.old", ignore_errors=True)


def store_with(tmp_path: Path, source: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    install(source, root)
    return root


async def log_likelihood(client: httpx.AsyncClient, model: str = "moons") -> np.ndarray:
    response = await client.post("/log-likelihood", json={"model": model, "inputs": POINTS})
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["log_likelihood"])


def which(values: np.ndarray, references: dict[str, np.ndarray]) -> str:
    """The version whose answer ``values`` is, entirely; fails on a mix."""
    for name, reference in references.items():
        if np.allclose(values, reference, rtol=1e-5, atol=1e-6):
            return name
    raise AssertionError(f"an answer matching no single version: {values[:4]} vs {references}")


async def reload(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post("/admin/reload", headers={"Authorization": "Bearer admin-key"})
    assert response.status_code == 200, response.text
    return response.json()


async def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout_s
    while not await predicate():
        assert loop.time() < give_up, "condition not met in time"
        await asyncio.sleep(0.05)


def serve(root: Path, **settings: Any) -> Any:
    defaults = {"admin_api_key": "admin-key", "reload_interval_s": 0, "max_batch_size": 8, "torch_threads": 1}
    return serve_in_process(root, **{**defaults, **settings})


# ------------------------------------------------------------------------------------------------ swaps
async def test_a_swap_under_concurrent_load_loses_no_request_and_mixes_no_versions(
    tmp_path: Path, versions: dict[str, Path]
) -> None:
    root = store_with(tmp_path, versions["v2"])
    async with serve(root) as client:
        references = {"2.0.0": await log_likelihood(client)}
        install(versions["v1"], root)
        await reload(client)
        references["1.0.0"] = await log_likelihood(client)
        assert not np.allclose(references["1.0.0"], references["2.0.0"], rtol=1e-3)
        seen: list[tuple[int, str]] = []  # (0: sent before the reload answered, 1: after; the version answering)
        stop = asyncio.Event()
        swapped: list[bool] = []

        async def hammer() -> None:
            while not stop.is_set():
                phase = len(swapped)
                seen.append((phase, which(await log_likelihood(client), references)))

        registry = client.app.state.context.registry  # type: ignore[attr-defined]
        held_at_swap: list[int] = []
        retire = registry._retire

        def spy(served: Any) -> None:  # how many requests held the old version when it was swapped out
            held_at_swap.append(served.leases)
            retire(served)

        registry._retire = spy
        workers = [asyncio.create_task(hammer()) for _ in range(6)]
        await asyncio.sleep(0.3)
        install(versions["v2"], root)
        report = await reload(client)
        swapped.append(True)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*workers)  # every request answered 200 (log_likelihood asserts it), none lost
        assert report["replaced"] == ["moons@2.0.0"] and report["failed"] == {}
        before = [version for phase, version in seen if phase == 0]
        after = [version for phase, version in seen if phase == 1]
        assert "1.0.0" in before, seen
        assert after and set(after) == {"2.0.0"}, seen  # sent after the swap: the new version only
        assert held_at_swap and held_at_swap[0] > 0  # some requests were in flight on the old one, and finished
        await wait_for(lambda: _true(not registry._draining))
        assert list(registry.versions["moons"]) == ["2.0.0"]


async def _true(value: bool) -> bool:
    return value


async def test_a_request_holding_the_old_version_finishes_on_it_before_it_drains(
    tmp_path: Path, versions: dict[str, Path]
) -> None:
    root = store_with(tmp_path, versions["v1"])
    registry = ModelRegistry(Settings(model_dir=root, reload_interval_s=0, request_timeout_s=30), Metrics())
    registry.discover()
    await registry.load_all()
    old = registry.get("moons")
    old.acquire()  # what ServiceContext.model does for a request
    install(versions["v2"], root)
    report = await registry.reload()
    assert report.replaced == ["moons@2.0.0"]
    assert registry.get("moons").version == "2.0.0" and registry.get("moons") is not old
    assert old.batcher is not None
    deadline = asyncio.get_running_loop().time() + 5
    # the old version still serves the request that holds it: a second step of that request works
    (z, _) = await old.batcher.submit("encode", torch.zeros(3, 2), deadline)
    assert tuple(z.shape) == (3, 2)
    draining = registry._draining[old]
    assert not draining.done()
    old.release()  # the response was sent
    await asyncio.wait_for(draining, 5)
    with pytest.raises(UnavailableError, match="not taking requests"):  # closed: drained and dropped
        await old.batcher.submit("encode", torch.zeros(1, 2), deadline)
    await registry.close()


async def test_a_folder_missing_for_a_moment_is_not_removed(
    tmp_path: Path, versions: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = store_with(tmp_path, versions["v1"])
    registry = ModelRegistry(Settings(model_dir=root, reload_interval_s=0), Metrics())
    registry.discover()
    await registry.load_all()
    serving = registry.models["moons"]
    real_scan = service.engine.registry.scan_model_dir
    looks: list[int] = []

    def between_the_renames(model_dir: Path) -> Any:  # the first look falls between an export's two renames
        looks.append(1)
        scan = real_scan(model_dir)
        if len(looks) == 1:
            scan.folders.pop("moons")
        return scan

    monkeypatch.setattr(service.engine.registry, "scan_model_dir", between_the_renames)
    report = await registry.reload()
    assert len(looks) == 2 and report.removed == [] and registry.models["moons"] is serving
    await registry.close()


async def test_a_vanished_model_dir_keeps_the_models_and_is_reported(tmp_path: Path, versions: dict[str, Path]) -> None:
    root = store_with(tmp_path, versions["v1"])
    async with serve(root) as client:
        os.rename(root, tmp_path / "elsewhere")
        assert (await reload(client))["removed"] == []
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "no folder at" in ready.json()["failed"]["MODEL_DIR"]
        assert (await client.post("/sample", json={"model": "moons"})).status_code == 200
        os.rename(tmp_path / "elsewhere", root)
        assert (await reload(client))["removed"] == []
        assert (await client.get("/readyz")).status_code == 200


async def test_removal_drains_queued_requests_then_answers_404(tmp_path: Path, versions: dict[str, Path]) -> None:
    root = store_with(tmp_path, versions["v1"])
    async with serve(root, max_wait_ms=300, max_batch_size=64) as client:
        assert (await client.post("/log-likelihood", json={"model": "moons", "inputs": POINTS})).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "realnvp_drift_window_items", model="moons") == len(POINTS)
        pending = [asyncio.ensure_future(client.post("/sample", json={"model": "moons", "n": 2})) for _ in range(4)]
        registry = client.app.state.context.registry  # type: ignore[attr-defined]
        await wait_for(lambda: _true(registry.models["moons"].batcher.queued_samples == 8))
        shutil.rmtree(root / "moons")
        report = await reload(client)
        assert report["removed"] == ["moons"]
        gone = await client.post("/sample", json={"model": "moons"})
        assert gone.status_code == 404 and "got 'moons'" in gone.json()["detail"]
        assert [r.status_code for r in await asyncio.gather(*pending)] == [200] * 4
        await wait_for(lambda: _true(not registry._draining))
        metrics = (await client.get("/metrics")).text
        for series in ("realnvp_model_info", "realnvp_model_ready", "realnvp_drift_", "realnvp_queue_depth"):
            assert 'model="moons"' not in _lines(metrics, series), series
        assert metric_value(metrics, "realnvp_model_reloads_total", model="moons", outcome="removed") == 1
        assert (await client.get("/readyz")).json()["failed"]["MODEL_DIR"].startswith("expected at least one")


def _lines(metrics: str, series: str) -> str:
    return "\n".join(line for line in metrics.splitlines() if line.startswith(series))


# ------------------------------------------------------------------------------------------------ refusals
async def test_a_corrupt_artifact_is_refused_and_the_old_version_keeps_answering(
    tmp_path: Path, versions: dict[str, Path]
) -> None:
    root = store_with(tmp_path, versions["v1"])
    async with serve(root) as client:
        before = await log_likelihood(client)
        install(versions["corrupt"], root)
        report = await reload(client)
        assert "checksum mismatch" in report["failed"]["moons"] and report["replaced"] == []
        np.testing.assert_allclose(await log_likelihood(client), before, rtol=1e-6)
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"  # the old version serves
        assert "still serving version '1.0.0'" in ready.json()["failed"]["moons"]
        (card,) = (await client.get("/models")).json()["models"]
        assert card["version"] == "1.0.0" and "checksum mismatch" in card["reload_error"]
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "realnvp_model_reloads_total", model="moons", outcome="failed") == 1
        assert metric_value(metrics, "realnvp_model_info", model="moons", version="1.0.0") == 1
        # the broken contents are not retried at every look, only once they change again
        assert (await reload(client))["failed"] == {}
        install(versions["v2"], root)
        assert (await reload(client))["replaced"] == ["moons@2.0.0"]
        assert "moons" not in (await client.get("/readyz")).json()["failed"]
        assert "reload_error" not in (await client.get("/models/moons")).json()


async def test_a_module_that_fails_its_warm_up_never_replaces_a_good_one(
    tmp_path: Path, versions: dict[str, Path]
) -> None:
    root = store_with(tmp_path, versions["v1"])
    async with serve(root) as client:
        wrong = tmp_path / "wrong" / "moons"
        shutil.copytree(versions["v2"], wrong)
        card = json.loads((wrong / "card.json").read_text())
        card.update(shape=[3], dimension=3)  # a valid card, but the module maps 2-D points
        (wrong / "card.json").write_text(json.dumps(card))
        install(wrong, root)
        report = await reload(client)
        assert "warm-up call failed" in report["failed"]["moons"], report
        assert (await client.get("/models/moons")).json()["version"] == "1.0.0"


async def test_a_new_broken_model_is_reported_and_the_others_serve(tmp_path: Path, versions: dict[str, Path]) -> None:
    root = store_with(tmp_path, versions["v1"])
    async with serve(root) as client:
        install(versions["corrupt"], root, name="broken")
        report = await reload(client)
        assert "checksum mismatch" in report["failed"]["broken"]
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "checksum mismatch" in ready.json()["failed"]["broken"]
        assert "broken" in (await client.get("/models")).json()["unavailable"]
        assert (await client.post("/sample", json={"model": "moons"})).status_code == 200


async def test_an_unchanged_artifact_rewritten_in_place_is_not_swapped(
    tmp_path: Path, versions: dict[str, Path]
) -> None:
    root = store_with(tmp_path, versions["v1"])
    async with serve(root) as client:
        registry = client.app.state.context.registry  # type: ignore[attr-defined]
        serving = registry.models["moons"]
        install(versions["v1"], root)  # same files, new inodes
        report = await reload(client)
        assert report["unchanged"] == ["moons"] and report["replaced"] == []
        assert registry.models["moons"] is serving


# ------------------------------------------------------------------------------------------------ versions
async def test_pinned_versions_and_the_default(tmp_path: Path, versions: dict[str, Path]) -> None:
    root = store_with(tmp_path, versions["v1"])
    async with serve(root, keep_model_versions=2) as client:
        v1 = await log_likelihood(client)
        install(versions["v2"], root)
        await reload(client)
        v2 = await log_likelihood(client)
        np.testing.assert_allclose(await log_likelihood(client, "moons@1.0.0"), v1, rtol=1e-5)
        np.testing.assert_allclose(await log_likelihood(client, "moons@2.0.0"), v2, rtol=1e-5)
        (card,) = (await client.get("/models")).json()["models"]
        assert card["version"] == card["default_version"] == "2.0.0"
        assert [(v["version"], v["default"]) for v in card["versions"]] == [("1.0.0", False), ("2.0.0", True)]
        assert (await client.get("/models/moons@1.0.0")).json()["version"] == "1.0.0"
        unknown = await client.post("/sample", json={"model": "moons@3.0.0"})
        assert unknown.status_code == 404
        assert unknown.json()["detail"] == "version: expected one of ['1.0.0', '2.0.0'] for model 'moons', got '3.0.0'"
        nobody = await client.post("/sample", json={"model": "nope@1.0.0"})
        assert nobody.status_code == 404 and "expected one of ['moons']" in nobody.json()["detail"]
        # the Open Inference Protocol routes versions too
        meta = (await client.get("/v2/models/moons")).json()
        assert meta["versions"] == ["1.0.0", "2.0.0"]
        body = {"inputs": [{"name": "input", "shape": [len(POINTS), 2], "datatype": "FP32", "data": POINTS}]}
        for version, expected in (("1.0.0", v1), ("2.0.0", v2)):
            answer = (await client.post(f"/v2/models/moons/versions/{version}/infer", json=body)).json()
            assert answer["model_version"] == version
            outputs = {output["name"]: output["data"] for output in answer["outputs"]}
            np.testing.assert_allclose(outputs["log_likelihood"], expected, rtol=1e-5)
            assert (await client.get(f"/v2/models/moons/versions/{version}/ready")).status_code == 200
        missing = await client.post("/v2/models/moons/versions/9/infer", json=body)
        assert missing.status_code == 404 and "expected one of ['1.0.0', '2.0.0']" in missing.json()["error"]
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "realnvp_model_info", model="moons", version="1.0.0") == 1
        assert metric_value(metrics, "realnvp_model_info", model="moons", version="2.0.0") == 1


async def test_only_the_newest_versions_are_kept_and_the_same_version_is_replaced(
    tmp_path: Path, versions: dict[str, Path]
) -> None:
    root = store_with(tmp_path, versions["v1"])
    async with serve(root) as client:  # KEEP_MODEL_VERSIONS = 1
        install(versions["v2"], root)
        await reload(client)
        gone = await client.post("/sample", json={"model": "moons@1.0.0"})
        assert gone.status_code == 404 and "expected one of ['2.0.0']" in gone.json()["detail"]
        v2 = await log_likelihood(client)
        install(versions["v2b"], root)  # other weights under the same version string: the folder wins
        assert (await reload(client))["replaced"] == ["moons@2.0.0"]
        assert not np.allclose(await log_likelihood(client, "moons@2.0.0"), v2, rtol=1e-3)
        metrics = (await client.get("/metrics")).text
        registry = client.app.state.context.registry  # type: ignore[attr-defined]
        await wait_for(lambda: _true(not registry._draining))
        assert metric_value(metrics, "realnvp_model_info", model="moons") == 1  # only the serving one
        assert metric_value(metrics, "realnvp_model_ready", model="moons") == 1
        assert metric_value(metrics, "realnvp_model_reloads_total", model="moons", outcome="replaced") == 2


async def test_a_new_card_for_the_same_module_and_version_keeps_the_info_series(
    tmp_path: Path, versions: dict[str, Path]
) -> None:
    root = store_with(tmp_path, versions["v1"])
    async with serve(root) as client:
        recard = tmp_path / "recard" / "moons"
        shutil.copytree(versions["v1"], recard)
        card = json.loads((recard / "card.json").read_text())
        card["created_at"] = "2027-01-01T00:00:00Z"  # same module, same version, same labels
        (recard / "card.json").write_text(json.dumps(card))
        install(recard, root)
        assert (await reload(client))["replaced"] == ["moons@1.0.0"]
        registry = client.app.state.context.registry  # type: ignore[attr-defined]
        await wait_for(lambda: _true(not registry._draining))
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "realnvp_model_info", model="moons", version="1.0.0") == 1
        assert (await client.get("/models/moons")).json()["created_at"] == "2027-01-01T00:00:00Z"


async def test_the_drift_gauges_follow_the_serving_version(tmp_path: Path, versions: dict[str, Path]) -> None:
    root = store_with(tmp_path, versions["v1"])
    async with serve(root) as client:
        await log_likelihood(client)
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "realnvp_drift_window_items", model="moons") == len(POINTS)
        install(versions["v2"], root)
        await reload(client)
        assert "realnvp_drift_window_items{" not in (await client.get("/metrics")).text  # the old window is gone
        await client.post("/log-likelihood", json={"model": "moons", "inputs": POINTS[:5]})
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "realnvp_drift_window_items", model="moons") == 5


# ------------------------------------------------------------------------------------------------ polling
async def test_polling_notices_a_folder_added_replaced_and_removed(tmp_path: Path, versions: dict[str, Path]) -> None:
    root = store_with(tmp_path, versions["v1"])
    async with serve(root, reload_interval_s=0.2) as client:

        async def listed() -> dict[str, str]:
            body = (await client.get("/models")).json()
            return {card["name"]: card["version"] for card in body["models"]}

        install(versions["v2"], root, name="extra")
        await wait_for(lambda: _contains(listed(), {"moons": "1.0.0", "extra": "2.0.0"}), timeout_s=5)
        install(versions["v2"], root)
        await wait_for(lambda: _contains(listed(), {"moons": "2.0.0", "extra": "2.0.0"}), timeout_s=5)
        shutil.rmtree(root / "extra")
        await wait_for(lambda: _contains(listed(), {"moons": "2.0.0"}), timeout_s=5)
        assert (await client.get("/readyz")).status_code == 200


async def _contains(listing: Any, expected: dict[str, str]) -> bool:
    return await listing == expected


def test_reload_settings_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ADMIN_API_KEY", "RELOAD_INTERVAL_S", "KEEP_MODEL_VERSIONS"):
        monkeypatch.delenv(name, raising=False)
    defaults = Settings()
    assert (defaults.admin_api_key, defaults.reload_interval_s, defaults.keep_model_versions) == (None, 2.0, 1)
    monkeypatch.setenv("ADMIN_API_KEY", "k")
    monkeypatch.setenv("RELOAD_INTERVAL_S", "0.5")
    monkeypatch.setenv("KEEP_MODEL_VERSIONS", "3")
    read = Settings()
    assert read.admin_api_key is not None and read.admin_api_key.get_secret_value() == "k"
    assert (read.reload_interval_s, read.keep_model_versions) == (0.5, 3)
    assert Settings(reload_interval_s=0).reload_interval_s == 0
    for bad in ({"reload_interval_s": -1}, {"keep_model_versions": 0}):
        with pytest.raises(ValueError, match="greater than"):
            Settings(**bad)
