"""``bench/sample_coverage.py`` at tiny sizes: a small classifier, 50 samples of an untrained 8×8 flow (smoke tests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import sample_coverage
from service.engine.runner import ModelRunner
from tests.support.artifacts import image_flow, write_artifact

DIGITS_CONFIG = {"data": {"name": "digits", "val_size": 200, "test_size": 200}}


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread, as the benchmark runs: on a shared 2-core machine, after scikit-learn's and SciPy's
    thread pools have started, two torch threads made a 50-sample draw take seconds instead of milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 1x8x8 RealNVP whose card says it was trained on scikit-learn's digits."""
    return write_artifact(
        tmp_path_factory.mktemp("coverage") / "digits",
        image_flow(),
        flow_type="RealNVP",
        data_kind="image",
        shape=[1, 8, 8],
        value_range=[0, 255],
        card_overrides={"training_config": DIGITS_CONFIG},
    )


@pytest.fixture(scope="module")
def classifier() -> sample_coverage.Classifier:
    images, labels = sample_coverage.labelled_split({"training_config": DIGITS_CONFIG}, "train")
    return sample_coverage.train_classifier(images[:300], labels[:300])


def test_labelled_split_is_the_training_split_with_its_labels() -> None:
    from training.config import config_from_dict
    from training.data import load_data

    images, labels = sample_coverage.labelled_split({"training_config": DIGITS_CONFIG}, "test")
    expected = load_data(config_from_dict(DIGITS_CONFIG).data).split("test").numpy()
    np.testing.assert_array_equal(images, expected)
    assert labels.shape == (200,) and set(labels) <= set(range(10))


def test_labelled_split_refuses_a_data_set_without_labels() -> None:
    with pytest.raises(ValueError, match="got data set 'moons'"):
        sample_coverage.labelled_split({"training_config": {"data": {"name": "moons"}}}, "train")


def test_samples_are_seeded_8_bit_images(digits_model: Path) -> None:
    runner = ModelRunner.load(digits_model, torch.device("cpu"))
    first = sample_coverage.draw_samples(runner, 50, 0.7, seed=1, batch_size=16)
    again = sample_coverage.draw_samples(runner, 50, 0.7, seed=1)
    assert first.shape == (50, 1, 8, 8) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)


def test_coverage_fractions_sum_to_one(digits_model: Path, classifier: sample_coverage.Classifier) -> None:
    runner = ModelRunner.load(digits_model, torch.device("cpu"))
    result = sample_coverage.coverage(classifier, sample_coverage.draw_samples(runner, 50, 0.7, seed=0))
    assert list(result["class_fractions"]) == [str(c) for c in range(10)]
    assert sum(result["class_fractions"].values()) == pytest.approx(1.0)
    assert 0.0 < result["mean_top_probability"] <= 1.0
    assert result["smallest_fraction"] == min(result["class_fractions"].values())
    assert all(isinstance(ok, bool) for ok in sample_coverage.goals(result).values())


def test_classifier_accuracy_and_calibration_error_are_fractions(classifier: sample_coverage.Classifier) -> None:
    images, labels = sample_coverage.labelled_split({"training_config": DIGITS_CONFIG}, "test")
    checked = sample_coverage.accuracy(classifier, images, labels)
    assert 0.8 < checked["accuracy"] <= 1.0  # 300 of sklearn's digits are plenty for an SVM
    assert 0.0 <= checked["calibration_error"] <= 1.0


def test_main_writes_the_numbers(digits_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "coverage.json"
    status = sample_coverage.main(["--model-dir", str(digits_model), "--samples", "50", "--out", str(out)])
    numbers = json.loads(out.read_text())
    assert status == (0 if numbers["pass"] else 1)
    assert numbers["samples"] == 50 and numbers["temperature"] == 0.7
    assert sum(numbers["class_fractions"].values()) == pytest.approx(1.0)
    assert set(numbers["goals"]) == {"every class >= 4%", "mean top-class probability >= 0.8"}
    assert numbers["classifier"]["test_items"] == 200
    assert ("PASS" if numbers["pass"] else "FAIL") in capsys.readouterr().out
