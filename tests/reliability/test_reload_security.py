"""The surfaces hot reload adds: the admin key of ``POST /admin/reload``, and symbolic links out of ``MODEL_DIR``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.core.config import Settings
from tests.support.helpers import metric_value
from tests.support.inprocess import serve_in_process

pytestmark = pytest.mark.anyio
ADMIN = "admin-7f3e9c1d2b"
CLIENT = "client-4a8b6e0f1c"
RELOAD = "/admin/reload"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------------------------------------ the admin key
async def test_admin_routes_are_refused_when_admin_api_key_is_unset(store: Path) -> None:
    async with serve_in_process(store, api_key=CLIENT) as client:
        for headers in ({}, bearer(CLIENT), bearer(ADMIN), bearer("")):
            response = await client.post(RELOAD, headers=headers)
            assert response.status_code == 403, response.text
            assert response.json()["detail"] == (
                "admin routes are off: expected ADMIN_API_KEY to be set on the server, got it unset"
            )
        spec = (await client.get("/openapi.json")).json()
        assert RELOAD not in spec["paths"] and "AdminBearer" not in str(spec)


async def test_admin_routes_need_their_own_key(store: Path) -> None:
    async with serve_in_process(store, api_key=CLIENT, admin_api_key=ADMIN) as client:
        missing = await client.post(RELOAD)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "got no bearer token" in missing.json()["detail"]
        for token in ("nope", ADMIN[:-1], ADMIN + "x", ADMIN.upper(), "y" * 4096):
            wrong = await client.post(RELOAD, headers=bearer(token))
            assert wrong.status_code == 401 and "got another key" in wrong.json()["detail"], token
        basic = await client.post(RELOAD, headers={"Authorization": f"Basic {ADMIN}"})
        assert basic.status_code == 401
        as_client = await client.post(RELOAD, headers=bearer(CLIENT))
        assert as_client.status_code == 403 and "got the API key" in as_client.json()["detail"]
        assert (await client.get(RELOAD, headers=bearer(ADMIN))).status_code == 405
        good = await client.post(RELOAD, headers=bearer(ADMIN))
        assert good.status_code == 200 and good.json()["failed"] == {}
        # the admin key is not a key to the models
        assert (await client.post("/sample", json={"model": "moons"}, headers=bearer(ADMIN))).status_code == 401
        spec = (await client.get("/openapi.json")).json()
        assert {"AdminBearer": []} in spec["paths"][RELOAD]["post"]["security"]
        bodies = [missing.text, as_client.text, good.text, str(missing.headers)]
        assert not any(ADMIN in body or CLIENT in body for body in bodies)


async def test_the_admin_key_is_compared_in_constant_time(
    store: Path, key_comparisons: list[tuple[bytes, bytes]]
) -> None:
    compared = key_comparisons
    async with serve_in_process(store, api_key=CLIENT, admin_api_key=ADMIN) as client:
        for token in ("x", ADMIN[:-1], CLIENT, ADMIN):
            await client.post(RELOAD, headers=bearer(token))
    # both keys compared for every token, whatever its length or prefix (no early exit)
    assert compared == [
        (token.encode(), key.encode()) for token in ("x", ADMIN[:-1], CLIENT, ADMIN) for key in (ADMIN, CLIENT)
    ]


def test_the_admin_key_must_differ_from_the_api_key(store: Path) -> None:
    with pytest.raises(ValidationError, match="ADMIN_API_KEY: expected a key different from API_KEY"):
        Settings(model_dir=store, api_key=CLIENT, admin_api_key=CLIENT)
    settings = Settings(model_dir=store, api_key=CLIENT, admin_api_key=ADMIN)
    assert ADMIN not in repr(settings) and ADMIN not in settings.model_dump_json()
    assert Settings(model_dir=store, admin_api_key="").admin_api_key is None


# ------------------------------------------------------------------------------------------------ symlinks
def _outside_and_root(store: Path, tmp_path: Path) -> tuple[Path, Path]:
    outside = tmp_path / "outside"
    shutil.copytree(store / "moons", outside / "moons")
    root = tmp_path / "models"
    shutil.copytree(store / "digits", root / "digits")
    return outside, root


async def test_a_model_folder_linked_out_of_model_dir_is_refused(store: Path, tmp_path: Path) -> None:
    outside, root = _outside_and_root(store, tmp_path)
    (root / "moons").symlink_to(outside / "moons", target_is_directory=True)
    async with serve_in_process(root) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert (
            "symbolic link" in ready.json()["failed"]["moons"] and "inside MODEL_DIR" in ready.json()["failed"]["moons"]
        )
        refused = await client.post("/sample", json={"model": "moons"})
        assert refused.status_code == 503 and "symbolic link" in refused.json()["detail"]
        assert (await client.post("/sample", json={"model": "digits"})).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "realnvp_model_reloads_total", model="moons", outcome="failed") == 1


async def test_a_file_linked_out_of_model_dir_is_refused_and_the_good_version_serves(
    store: Path, tmp_path: Path
) -> None:
    outside, root = _outside_and_root(store, tmp_path)
    shutil.copytree(store / "moons", root / "moons")
    async with serve_in_process(root, admin_api_key=ADMIN, reload_interval_s=0) as client:
        before = (await client.post("/encode", json={"model": "moons", "inputs": [[0.5, 0.5]]})).json()["latents"]
        staging = root / ".moons.tmp"
        shutil.copytree(store / "moons", staging)
        os.remove(staging / "model.ts")
        (staging / "model.ts").symlink_to(outside / "moons" / "model.ts")  # an identical, valid module: still refused
        shutil.rmtree(root / "moons")
        os.rename(staging, root / "moons")
        report = (await client.post(RELOAD, headers=bearer(ADMIN))).json()
        assert "model.ts: expected a path inside MODEL_DIR" in report["failed"]["moons"]
        after = (await client.post("/encode", json={"model": "moons", "inputs": [[0.5, 0.5]]})).json()["latents"]
        assert after == before
        assert "symbolic link" in (await client.get("/readyz")).json()["failed"]["moons"]


async def test_links_inside_model_dir_are_followed(store: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(store / "moons", root / ".versions" / "moons-3")
    (root / "moons").symlink_to(root / ".versions" / "moons-3", target_is_directory=True)
    linked_root = tmp_path / "linked_models"
    linked_root.symlink_to(root, target_is_directory=True)  # MODEL_DIR itself may be a link
    for model_dir in (root, linked_root):
        async with serve_in_process(model_dir) as client:
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.post("/sample", json={"model": "moons"})).status_code == 200


async def test_model_names_with_versions_are_never_paths(store: Path) -> None:
    async with serve_in_process(store) as client:
        for name in ("moons@../digits", "../moons@0.0.1", "moons@/etc/passwd", "moons@" + "9" * 200):
            response = await client.post("/sample", json={"model": name})
            assert response.status_code == 404, (name, response.text)
            assert len(response.json()["detail"]) < 200
        pinned = await client.post("/sample", json={"model": "moons@0.0.1"})
        assert pinned.status_code == 200 and pinned.json()["model"] == "moons"
