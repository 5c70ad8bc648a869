"""The out-of-distribution families (``bench/ood_families.py``): shapes, dtype, determinism under a seed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from bench import ood_families as ood

ORIGINAL_SIX = ("noise", "constant", "inverted", "sklearn_digits", "lfw_faces", "shifted")
SMALL = 12  # items per family not built from the digits (the benchmark builds 500)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Eight digit-like images, uint8 ``(8, 1, 28, 28)``: rings and bars of MNIST's size, centred, ink at 255."""
    images = []
    for index in range(8):
        canvas = Image.new("L", (28, 28))
        draw = ImageDraw.Draw(canvas)
        if index % 2:
            draw.ellipse((8, 4, 20, 24), outline=255, width=3)
        else:
            draw.line((14 - index // 2, 4, 14 + index // 2, 24), fill=255, width=3)
        images.append(np.asarray(canvas))
    return np.stack(images)[:, None]


@pytest.fixture(autouse=True)
def small_families(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ood, "FAMILY_SIZE", SMALL)


def test_at_least_ten_families_including_the_original_six() -> None:
    assert len(ood.FAMILIES) >= 10
    assert set(ORIGINAL_SIX) <= set(ood.FAMILIES)
    assert {family.group for family in ood.FAMILIES.values()} == {
        "synthetic",
        "geometric",
        "photometric",
        "characters",
        "natural",
    }
    assert all(family.build.__doc__ for family in ood.FAMILIES.values())


@pytest.mark.parametrize("name", list(ood.FAMILIES))
def test_family_is_uint8_images_and_the_same_for_the_same_seed(name: str, digits: np.ndarray) -> None:
    first = ood.ood_sets(digits, seed=3, names=[name])[name]
    again = ood.ood_sets(digits, seed=3, names=[name])[name]
    assert first.dtype == np.uint8
    assert first.ndim == 4 and first.shape[1:] == (1, 28, 28)
    assert len(first) in {len(digits), SMALL, 256, 200}  # from the digits, built, constants, lfw_subset
    assert first.max() > 0, "a family of blank images"
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("name", ["noise", "shifted", "elastic", "font_letters", "pen_strokes", "natural_crops"])
def test_random_families_change_with_the_seed(name: str, digits: np.ndarray) -> None:
    sets = [ood.ood_sets(digits, seed=seed, names=[name])[name] for seed in (0, 1)]
    assert not np.array_equal(*sets)


def test_a_family_does_not_depend_on_which_others_are_built(digits: np.ndarray) -> None:
    alone = ood.ood_sets(digits, seed=0, names=["shifted"])["shifted"]
    together = ood.ood_sets(digits, seed=0, names=["noise", "elastic", "shifted"])["shifted"]
    np.testing.assert_array_equal(alone, together)


def test_unknown_family_is_named_in_the_error(digits: np.ndarray) -> None:
    with pytest.raises(ValueError, match="got nope"):
        ood.ood_sets(digits, names=["noise", "nope"])


def test_characters_render_without_system_fonts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ood, "font_files", lambda: ())
    letters = ood.render_characters("AB", 4, np.random.default_rng(0))
    assert letters.shape == (4, 1, 28, 28) and letters.dtype == np.uint8 and letters.max() > 0


def test_mnist_style_fits_a_20_pixel_box_centred_by_mass() -> None:
    glyph = np.zeros((100, 60))
    glyph[10:90, 20:30] = 255.0  # a tall bar, off-centre
    image = ood.mnist_style(glyph)
    rows, cols = np.nonzero(image > 0)
    assert image.shape == (28, 28)
    assert max(np.ptp(rows), np.ptp(cols)) + 1 <= ood.BOX + 1  # antialiasing may bleed one pixel
    assert np.allclose(ndimage.center_of_mass(image), (14, 14), atol=0.75)
