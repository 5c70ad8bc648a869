"""Corrupt, tampered or invalid artifacts are refused at start-up, by name; the others still serve."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from service.engine.runner import ArtifactError, ModelRunner, read_card
from tests.support.inprocess import serve_in_process

pytestmark = pytest.mark.anyio


class EncodeDecodeOnly(torch.nn.Module):
    """A 2-D scaling flow without ``log_prob``."""

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return 2 * x, torch.full((x.shape[0],), 2.0).log() * 2

    @torch.jit.export
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class WrongLogProb(EncodeDecodeOnly):
    """Has all three methods, but ``log_prob`` disagrees with ``encode``."""

    @torch.jit.export
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0]) + 5.0


class WrongShape(EncodeDecodeOnly):
    """``decode`` drops a dimension."""

    @torch.jit.export
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, :1]

    @torch.jit.export
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, log_det = self.encode(x)
        return -0.5 * (z * z).sum(1) - 1.8378770664093453 + log_det


def rehash(directory: Path, **card_changes: object) -> None:
    card = json.loads((directory / "card.json").read_text())
    card["sha256"] = hashlib.sha256((directory / "model.ts").read_bytes()).hexdigest()
    card.update(card_changes)
    (directory / "card.json").write_text(json.dumps(card))


def save_module(directory: Path, module: torch.nn.Module) -> None:
    torch.jit.save(torch.jit.script(module), str(directory / "model.ts"))
    rehash(directory)


@pytest.fixture(scope="module")
def broken_store(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("broken")
    shutil.copytree(store / "moons", root / "good")
    for name in (
        "tampered",
        "garbage",
        "no_card",
        "card_type",
        "card_missing",
        "card_json",
        "card_dims",
        "no_log_prob",
        "liar",
        "wrong_shape",
        "no_module",
    ):
        shutil.copytree(store / "moons", root / name)
    module = root / "tampered" / "model.ts"
    data = bytearray(module.read_bytes())
    data[len(data) // 2] ^= 0xFF
    module.write_bytes(bytes(data))
    (root / "garbage" / "model.ts").write_bytes(b"definitely not a TorchScript archive")
    rehash(root / "garbage")
    (root / "no_card" / "card.json").unlink()
    rehash(root / "card_type", dimension="2")
    card = json.loads((root / "card_missing" / "card.json").read_text())
    del card["flow_type"]
    (root / "card_missing" / "card.json").write_text(json.dumps(card))
    (root / "card_json" / "card.json").write_text("{not json")
    rehash(root / "card_dims", dimension=3)
    save_module(root / "no_log_prob", EncodeDecodeOnly())
    save_module(root / "liar", WrongLogProb())
    save_module(root / "wrong_shape", WrongShape())
    (root / "no_module" / "model.ts").unlink()
    return root


EXPECTED_FAILURES = {
    "tampered": ["model.ts", "checksum mismatch", "expected sha256"],
    "garbage": ["model.ts", "not a loadable TorchScript module"],
    "no_card": ["card.json", "no such file"],
    "card_type": ["card.json", "dimension"],
    "card_missing": ["card.json", "flow_type"],
    "card_json": ["card.json", "invalid"],
    "card_dims": ["card.json", "prod(shape) = 2", "got 3"],
    "no_log_prob": ["model.ts", "without ['log_prob']"],
    "liar": ["model.ts", "log_prob"],
    "wrong_shape": ["model.ts", "decode: expected shape (1, 2)", "got (1, 1)"],
    "no_module": ["model.ts", "no such file"],
}


async def test_broken_artifacts_are_refused_by_name_and_the_rest_serves(
    broken_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="service")
    async with serve_in_process(broken_store) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "failed"
        assert body["models"]["good"] == "ready"
        assert set(body["failed"]) == set(EXPECTED_FAILURES)
        for name, fragments in EXPECTED_FAILURES.items():
            reason = body["failed"][name]
            assert str(broken_store / name) in reason, reason
            for fragment in fragments:
                assert fragment in reason, (name, reason)
            logged = [r.getMessage() for r in caplog.records if f"refused model {name!r}" in r.getMessage()]
            assert logged and str(broken_store / name) in logged[0]
        assert (await client.post("/sample", json={"model": "good", "n": 2})).status_code == 200
        refused = await client.post("/sample", json={"model": "tampered"})
        assert refused.status_code == 503 and "failed to load" in refused.json()["detail"]
        listing = (await client.get("/models")).json()
        assert [card["name"] for card in listing["models"]] == ["good"]
        assert "checksum mismatch" in listing["unavailable"]["tampered"]


async def test_readyz_is_503_while_loading(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import service.engine.registry

    release = threading.Event()
    original = service.engine.registry._load_and_warm

    def slow_load(*args: object) -> ModelRunner:
        release.wait(timeout=30)
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(service.engine.registry, "_load_and_warm", slow_load)
    async with serve_in_process(store, wait=False) as client:
        assert (await client.get("/healthz")).status_code == 200
        loading = await client.get("/readyz")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        busy = await client.post("/sample", json={"model": "moons"})
        assert busy.status_code == 503 and "still loading" in busy.json()["detail"]
        assert "retry-after" in busy.headers
        release.set()
        from tests.support.inprocess import wait_ready

        assert (await wait_ready(client)).status_code == 200
        assert (await client.post("/sample", json={"model": "moons"})).status_code == 200


async def test_misconfiguration_is_reported(store: Path, tmp_path: Path) -> None:
    async with serve_in_process(store, default_model="cifar") as client:
        body = (await client.get("/readyz")).json()
        assert body["status"] == "failed" and "DEFAULT_MODEL" in body["failed"]
    async with serve_in_process(tmp_path / "missing") as client:
        response = await client.get("/readyz")
        assert response.status_code == 503 and "no folder" in response.json()["failed"]["MODEL_DIR"]
    async with serve_in_process(tmp_path) as client:
        response = await client.get("/readyz")
        assert response.status_code == 503 and "got none" in response.json()["failed"]["MODEL_DIR"]


def test_runner_rejects_a_card_with_a_wrong_type(store: Path, tmp_path: Path) -> None:
    shutil.copytree(store / "digits", tmp_path / "digits")
    card = json.loads((tmp_path / "digits" / "card.json").read_text())
    card["value_range"] = [0, 1]
    (tmp_path / "digits" / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match=r"value_range: expected \[0, 255\] for an image"):
        read_card(tmp_path / "digits")


def test_runner_scores_like_the_module(store: Path) -> None:
    runner = ModelRunner.load(store / "digits", torch.device("cpu"))
    runner.warm_up()
    x = runner.example_batch(5, seed=3)
    z, log_det = runner.encode(runner.scoring_input(x))
    torch.testing.assert_close(runner.log_likelihood(z, log_det), runner.reference_log_prob(x), rtol=1e-6, atol=1e-4)


async def test_api_key(open_client) -> None:
    async with open_client(API_KEY="s3cret") as client:
        missing = await client.post("/sample", json={"model": "moons"})
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "got no bearer token" in missing.json()["detail"]
        wrong = await client.post("/sample", json={"model": "moons"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "got another key" in wrong.json()["detail"]
        basic = await client.get("/models", headers={"Authorization": "Basic czNjcmV0"})
        assert basic.status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert (await client.post("/sample", json={"model": "moons"}, headers=good)).status_code == 200
        assert (await client.get("/models", headers=good)).status_code == 200
        assert (await client.get("/models")).status_code == 401
        assert (await client.get("/sample.png", params={"model": "digits"})).status_code == 401
        for open_path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
            assert (await client.get(open_path)).status_code == 200, open_path
        spec = (await client.get("/openapi.json")).json()
        assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        assert {"HTTPBearer": []} in spec["paths"]["/sample"]["post"]["security"]
        assert "security" not in spec["paths"]["/healthz"]["get"]


async def test_shutdown_finishes_queued_work(store: Path) -> None:
    import asyncio

    async with serve_in_process(store, max_batch_size=64, max_wait_ms=300) as client:
        pending = [asyncio.ensure_future(client.post("/sample", json={"model": "moons", "n": 2})) for _ in range(4)]
        await asyncio.sleep(0.05)
        registry = client.app.state.context.registry  # type: ignore[attr-defined]
        assert registry.models["moons"].batcher.queued_samples == 8
        await registry.close()  # what the lifespan does on SIGTERM once uvicorn stops accepting
        responses = await asyncio.gather(*pending)
        assert [r.status_code for r in responses] == [200] * 4
        late = await client.post("/sample", json={"model": "moons"})
        assert late.status_code == 503 and "shutting down" in late.json()["detail"]
