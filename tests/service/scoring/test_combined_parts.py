"""``combined`` over the parts a card has: three on a current card, two on one exported before ``coarse``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from artifact import ModelCard
from artifact import scores as anomaly
from service.scoring.references import References
from service.scoring.scores import Items, score_batch
from tests.support.anomaly_store import bar_images

pytestmark = pytest.mark.anyio


def digits_items(store: Path, count: int) -> Items:
    """Scoring inputs of ``count`` in-distribution images, encoded by the ``digits`` module at their bin centre."""
    module = torch.jit.load(str(store / "digits" / "model.ts"))
    x = torch.from_numpy(bar_images(count, seed=21)).float()
    with torch.no_grad():
        latents, _ = module.encode(x + 0.5)
        bits = -module.log_prob(x + 0.5).double() / (64 * np.log(2.0))  # the service's bin-centre value
    return Items(x=x, latents=latents, bits_per_dim=bits.numpy())


def card_without_coarse(store: Path) -> ModelCard:
    raw = json.loads((store / "digits" / "card.json").read_text())
    for key in ("coarse", "coarse_dims"):
        del raw["reference_scores"][key]
    return ModelCard.model_validate_json(json.dumps(raw))


async def test_a_card_before_coarse_combines_complexity_and_latent_and_says_so(anomaly_store: Path) -> None:
    items = digits_items(anomaly_store, 6)
    current = ModelCard.model_validate_json((anomaly_store / "digits" / "card.json").read_text())
    old = card_without_coarse(anomaly_store)
    assert current.notes == [] and len(old.notes) == 1 and "before the coarse score" in old.notes[0]
    assert "re-export" in old.notes[0] and old.public_view()["notes"] == old.notes
    refs_now, refs_old = References.from_card(current), References.from_card(old)
    assert refs_now is not None and refs_old is not None
    assert refs_now.combined_parts == ("complexity", "latent", "coarse")
    assert refs_old.combined_parts == ("complexity", "latent")
    report = await score_batch(old, refs_old, items, 0.05)
    assert "coarse" not in report.scores and "re-export" in report.unavailable["coarse"]
    assert report.combined_parts == ("complexity", "latent")
    expected = anomaly.combined_scores(
        [report.scores["complexity"].values, report.scores["latent"].values],
        [refs_old.complexity, refs_old.latent],
    )
    np.testing.assert_allclose(report.scores["combined"].values, expected, rtol=1e-12)
    assert refs_old.combined is not None
    np.testing.assert_allclose(refs_old.combined, anomaly.combined_reference([refs_old.complexity, refs_old.latent]))
    three = await score_batch(current, refs_now, items, 0.05)
    assert three.combined_parts == anomaly.COMBINED_PARTS
    assert not np.allclose(three.scores["combined"].values, report.scores["combined"].values)


def test_cards_refuse_half_a_coarse_block(anomaly_store: Path) -> None:
    raw = json.loads((anomaly_store / "digits" / "card.json").read_text())
    for drop, message in (("coarse_dims", "coarse and coarse_dims together"), ("coarse", "together")):
        broken = json.loads(json.dumps(raw))
        del broken["reference_scores"][drop]
        with pytest.raises(ValueError, match=message):
            ModelCard.model_validate_json(json.dumps(broken))
    too_many = json.loads(json.dumps(raw))
    too_many["reference_scores"]["coarse_dims"] = 65
    with pytest.raises(ValueError, match=r"coarse_dims: expected at most 64 \(the dimension\), got 65"):
        ModelCard.model_validate_json(json.dumps(too_many))
    short = json.loads(json.dumps(raw))
    short["reference_scores"]["coarse"] = short["reference_scores"]["coarse"][:3]
    with pytest.raises(ValueError, match=r"reference_scores\.coarse: expected 2000 values, got 3"):
        ModelCard.model_validate_json(json.dumps(short))
