"""The card schema (``artifact.card``): reference arrays checked, the bundled cards and older cards still load."""

from __future__ import annotations

import json

import pytest

from artifact import FORMAT_VERSION, ModelCard, build_card, read_card
from service.core.config import BUNDLED_MODEL_DIR


@pytest.mark.parametrize("name", ["moons", "bimodal", "mnist"])
def test_bundled_cards_still_load(name: str) -> None:
    assert (BUNDLED_MODEL_DIR / name / "card.json").is_file(), f"the bundled {name} model is missing"
    card = read_card(BUNDLED_MODEL_DIR / name)
    assert card.reference_scores is not None and len(card.reference_scores.bits_per_dim) > 0


def card_with(scores: dict) -> dict:
    return {
        "format_version": 1, "name": "x", "version": "1", "flow_type": "RealNVP", "data_kind": "image",
        "shape": [1, 2, 2], "dimension": 4, "value_range": [0, 255], "sha256": "0" * 64, "reference_scores": scores,
    }  # fmt: skip


def test_card_checks_the_reference_arrays() -> None:
    base = {"split": "val", "log_likelihood": [-1.0, -2.0], "bits_per_dim": [1.0, 2.0]}
    assert ModelCard.model_validate_json(json.dumps(card_with(base))).reference_scores.complexity is None  # an old card
    good = {**base, "complexity": [0.1, 0.2], "complexity_compressor": "png"}
    assert ModelCard.model_validate_json(json.dumps(card_with(good))).reference_scores.complexity == [0.1, 0.2]
    latent = {**base, "latent": [0.1, 0.2], "latent_mean": [0.0] * 4, "latent_std": [1.0] * 4}
    assert ModelCard.model_validate_json(json.dumps(card_with(latent))).reference_scores.latent_std == [1.0] * 4
    for bad, message in (
        ({**base, "complexity": [0.1]}, "expected 2 values and a complexity_compressor"),
        ({**base, "complexity": [0.1, 0.2]}, "complexity_compressor"),
        ({**good, "complexity_compressor": "gzip"}, "complexity_compressor"),
        ({**base, "bits_per_dim": [1.0]}, "as many log_likelihood as bits_per_dim"),
        ({**base, "bits_per_dim": [1.0, float("nan")]}, "finite"),
        ({**base, "latent": [0.1, 0.2]}, "latent, latent_mean and latent_std together"),
        ({**base, "latent": [0.1], "latent_mean": [0.0] * 4, "latent_std": [1.0] * 4}, "expected 2 values"),
        ({**base, "latent": [0.1, 0.2], "latent_mean": [0.0] * 4, "latent_std": [1.0, 1.0, 1.0, 0.0]}, "positive"),
        ({**base, "latent": [0.1, 0.2], "latent_mean": [0.0] * 3, "latent_std": [1.0] * 3}, "the dimension"),
    ):
        with pytest.raises(ValueError, match=message):
            ModelCard.model_validate_json(json.dumps(card_with(bad)))


def built(**overrides: object) -> dict:
    arguments: dict = {
        "name": "toy", "flow_type": "RealNVP", "data_kind": "image", "shape": [1, 2, 2], "sha256": "a" * 64,
        "dataset": {"name": "synthetic", "splits": {"train": 1, "val": 2, "test": 3}},
        "metrics": {"test_bits_per_dim": 1.5, "test_nll_nats": 4.2}, "reference_scores": None,
    }  # fmt: skip
    arguments.update(overrides)
    return build_card(**arguments)


def test_build_card_writes_what_the_schema_reads() -> None:
    card = ModelCard.model_validate_json(json.dumps(built()))
    assert (card.format_version, card.dimension, card.value_range) == (FORMAT_VERSION, 4, (0, 255))
    assert card.metrics == {"test_bits_per_dim": 1.5, "test_nll_nats": 4.2}
    vector = ModelCard.model_validate_json(json.dumps(built(data_kind="vector", shape=[3], flow_type="NVPNet")))
    assert (vector.dimension, vector.value_range) == (3, None)


def test_build_card_refuses_a_card_the_service_would_refuse() -> None:
    with pytest.raises(ValueError, match=r"shape: expected \[C, H, W\] with C in \(1, 3\)"):
        built(shape=[2, 2, 2])
    with pytest.raises(ValueError, match="sha256"):
        built(sha256="not-a-digest")


def test_a_flow_type_the_service_has_not_heard_of_is_accepted() -> None:
    """The module contract decides what can be served, not a closed list of class names."""
    assert ModelCard.model_validate_json(json.dumps(built(flow_type="Glow"))).flow_type == "Glow"
    with pytest.raises(ValueError, match="flow_type"):
        ModelCard.model_validate_json(json.dumps(built(flow_type="")))


def test_an_older_image_card_loads_with_a_note_on_its_headline_figure() -> None:
    old = ModelCard.model_validate_json(json.dumps({**built(), "format_version": 1}))
    assert old.notes and "bin centre" in old.notes[0] and old.public_view()["notes"] == old.notes
    current = ModelCard.model_validate_json(json.dumps(built()))
    assert current.format_version == 2 and current.notes == [] and "notes" not in current.public_view()
    vector = ModelCard.model_validate_json(json.dumps({**built(data_kind="vector", shape=[2]), "format_version": 1}))
    assert vector.notes == []  # a vector density needs no dequantization: both formats mean the same
    with pytest.raises(ValueError, match="format_version"):
        ModelCard.model_validate_json(json.dumps({**built(), "format_version": 3}))
