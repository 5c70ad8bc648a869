"""The out-of-distribution families of ``bench/ood.py``: each built from the test digits (or without them) by a
named function whose docstring says what it is and why it is out of distribution. No downloads.
"""

from __future__ import annotations

import shutil
import subprocess
import zlib
from collections.abc import Callable
from functools import cache
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from scipy import ndimage

SIZE = 28  # MNIST's field: digits are scaled into a 20×20 box and centred by mass (at 14, 14) in 28×28
BOX = 20
FAMILY_SIZE = 500  # items in each family not built from the test digits (the test split has 500)
# Letters that are the glyph of a digit in most fonts (O/o = 0, I/l = 1): no detector could tell them apart.
LETTERS = "".join(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in "OoIl")
PHOTOGRAPHS = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
)


# ------------------------------------------------------------------------------------------------ helpers
def held_out_digits(card: dict, split: str = "test") -> np.ndarray:
    """A split of the artifact's data (uint8 ``(N, 1, 28, 28)``), rebuilt from the training config in its card."""
    from training.config import config_from_dict
    from training.data import load_data

    data = load_data(config_from_dict(card["training_config"]).data)
    return data.split(split).numpy()


def as_uint8(images: np.ndarray) -> np.ndarray:
    """Float intensities ``(N, H, W)`` → uint8 ``(N, 1, H, W)``, rounded and clipped to 0..255."""
    return np.clip(np.round(images), 0, 255).astype(np.uint8)[:, None]


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """``(N, H, W)`` floats in 0..255 → uint8 ``(N, 1, size, size)``, bilinear."""
    out = [
        np.asarray(Image.fromarray(np.round(image).astype(np.uint8)).resize((size, size), Image.BILINEAR))
        for image in images
    ]
    return np.stack(out)[:, None]


def centre_by_mass(image: np.ndarray) -> np.ndarray:
    """A float image of any size pasted into a black ``SIZE × SIZE`` field with its centre of mass at (14, 14).

    Ink pushed past the border is cut off (a scaled-up digit loses its ends, as a cropped photograph would).
    """
    out = np.zeros((SIZE, SIZE))
    if image.sum() <= 0:
        return out
    row, col = ndimage.center_of_mass(image)
    top, left = round(SIZE / 2 - row), round(SIZE / 2 - col)
    h, w = image.shape
    r0, c0 = max(0, -top), max(0, -left)
    r1, c1 = min(h, SIZE - top), min(w, SIZE - left)
    if r1 > r0 and c1 > c0:
        out[top + r0 : top + r1, left + c0 : left + c1] = image[r0:r1, c0:c1]
    return out


def mnist_style(glyph: np.ndarray) -> np.ndarray:
    """A white-on-black float image prepared as MNIST's digits were: cropped to its ink, the longer side scaled
    to ``BOX`` pixels (aspect kept, antialiased), centred by mass in ``SIZE × SIZE``."""
    rows, cols = np.nonzero(glyph > 0)
    if len(rows) == 0:
        return np.zeros((SIZE, SIZE))
    crop = glyph[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].astype(np.float32)
    scale = BOX / max(crop.shape)
    shape = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    return centre_by_mass(np.asarray(Image.fromarray(crop).resize(shape, Image.LANCZOS)).clip(0, 255))


def shift_each(digits: np.ndarray, rng: np.random.Generator, pixels: int) -> np.ndarray:
    """Each digit moved by ``pixels`` up, down, left or right (at random), vacated pixels black."""
    out = np.zeros_like(digits)
    for index, direction in enumerate(rng.integers(0, 4, len(digits))):
        image, target = digits[index, 0], out[index, 0]
        if direction == 0:
            target[pixels:] = image[:-pixels]
        elif direction == 1:
            target[:-pixels] = image[pixels:]
        elif direction == 2:
            target[:, pixels:] = image[:, :-pixels]
        else:
            target[:, :-pixels] = image[:, pixels:]
    return out


def each_digit(digits: np.ndarray, transform: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``transform`` (float ``(28, 28)`` → float ``(28, 28)``) applied to every digit, back to uint8."""
    return as_uint8(np.stack([transform(image.astype(np.float64)) for image in digits[:, 0]]))


@cache
def font_files() -> tuple[str, ...]:
    """Font files with Latin coverage that fontconfig lists on this machine (``()`` without fontconfig)."""
    if shutil.which("fc-list") is None:
        return ()
    listing = subprocess.run(["fc-list", ":lang=en", "file"], capture_output=True, text=True, check=False).stdout
    files = {line.split(":")[0].strip() for line in listing.splitlines()}
    return tuple(sorted(f for f in files if f.lower().endswith((".ttf", ".otf"))))


def render_characters(characters: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` characters drawn from ``characters``, each in a random font of ``font_files`` (Pillow's built-in
    font where there are none), rotated by up to ±15°, white on black, MNIST-style; uint8 ``(n, 1, 28, 28)``."""
    fonts = font_files()
    glyphs = []
    for _ in range(n):
        character = characters[rng.integers(len(characters))]
        font = ImageFont.truetype(fonts[rng.integers(len(fonts))], 80) if fonts else ImageFont.load_default(80)
        canvas = Image.new("L", (128, 128))
        ImageDraw.Draw(canvas).text((64, 64), character, fill=255, font=font, anchor="mm")
        canvas = canvas.rotate(rng.uniform(-15.0, 15.0), resample=Image.BILINEAR)
        glyphs.append(mnist_style(np.asarray(canvas, dtype=np.float64)))
    return as_uint8(np.stack(glyphs))


def random_crops(
    images: list[np.ndarray], n: int, rng: np.random.Generator, sides: tuple[int, int], min_std: float = 0.0
) -> np.ndarray:
    """``n`` square crops of a random image of ``images`` (grayscale uint8), side uniform in ``sides`` (at most
    the image's shorter side), at a random place, resized to ``SIZE × SIZE``; uint8 ``(n, 1, 28, 28)``.

    A crop whose standard deviation is below ``min_std`` is drawn again (up to 100 times), so that crops of a
    page show ink and not blank paper.
    """
    crops = []
    for _ in range(n):
        for _ in range(100):
            image = images[rng.integers(len(images))]
            side = min(int(rng.integers(sides[0], sides[1] + 1)), *image.shape)
            top, left = rng.integers(0, image.shape[0] - side + 1), rng.integers(0, image.shape[1] - side + 1)
            crop = image[top : top + side, left : left + side]
            if crop.std() >= min_std:
                break
        crops.append(np.asarray(Image.fromarray(crop).resize((SIZE, SIZE), Image.BILINEAR)))
    return np.stack(crops)[:, None]


@cache
def photographs() -> tuple[np.ndarray, ...]:
    """scikit-image's bundled ``PHOTOGRAPHS``, grayscale uint8 (loaded once: the largest is 1411×1411)."""
    from skimage import data

    return tuple(grayscale(getattr(data, name)()) for name in PHOTOGRAPHS)


def grayscale(image: np.ndarray) -> np.ndarray:
    """An RGB(A) or gray ``skimage.data`` image as uint8 luminance (Pillow's ITU-R 601 weights)."""
    if image.ndim == 2:
        return image.astype(np.uint8)
    return np.asarray(Image.fromarray(image[..., :3].astype(np.uint8)).convert("L"))


# ------------------------------------------------------------------------------------- synthetic families
def noise(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform 8-bit noise: no structure at all, the far end of out-of-distribution."""
    return rng.integers(0, 256, size=(FAMILY_SIZE, 1, SIZE, SIZE), dtype=np.uint8)


def constant(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The 256 constant images, one per intensity: the simplest images there are; the all-black one (0) is
    likelier under the flow than any digit (Nalisnick et al. 2019), the failure ``complexity`` corrects."""
    return np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None, None], (256, 1, SIZE, SIZE)).copy()


# ------------------------------------------------------------------------------------- geometric families
def shifted(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits moved 6 pixels up, down, left or right: MNIST digits are centred by mass within ±1 pixel,
    and a convolutional flow is nearly translation-equivariant, so raw likelihood barely notices."""
    return shift_each(digits, rng, 6)


def shifted_small(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits moved 3 pixels in a random direction: off the MNIST centring but mostly inside the field.
    Hard: a small displacement that the flow's near-equivariance forgives."""
    return shift_each(digits, rng, 3)


def hflip(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits mirrored left-right: mirror-writing. Hard for symmetric digits (0, 1, 8 stay digits)."""
    return digits[..., ::-1].copy()


def vflip(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits mirrored top-bottom. Hard for 0, 1, 3 and 8, which stay (nearly) the same digit."""
    return digits[..., ::-1, :].copy()


def rotated_90(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits turned a quarter turn, clockwise or not at random: upright handwriting is never lying on
    its side (a 1 becomes a horizontal bar)."""
    turns = rng.choice([1, 3], size=len(digits))
    return np.stack([np.rot90(image, k, axes=(1, 2)) for image, k in zip(digits, turns, strict=True)]).copy()


def rotated_180(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits upside down. Hard by construction: a turned 0, 1 or 8 is still that digit and a turned 6 is a
    9 (and back), so about half of the set is in distribution."""
    return np.rot90(digits, 2, axes=(2, 3)).copy()


def scaled_down(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits shrunk to half size and re-centred by mass: MNIST scales every digit to fill a 20-pixel box."""
    return each_digit(digits, lambda image: centre_by_mass(ndimage.zoom(image, 0.5, order=1).clip(0, 255)))


def scaled_up(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits enlarged 1.6× and re-centred by mass, their ends cut off by the border: a digit larger than
    MNIST's 20-pixel box, with strokes 1.6× as thick."""
    return each_digit(digits, lambda image: centre_by_mass(ndimage.zoom(image, 1.6, order=1).clip(0, 255)))


def sheared(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits sheared horizontally by ±0.6 (31°) about the centre: a slant beyond most handwriting, on top
    of the digit's own. Hard for digits already slanted the other way."""
    factors = rng.choice([-0.6, 0.6], size=len(digits))

    def shear(image: np.ndarray, factor: float) -> np.ndarray:
        # Output (r, c) samples the input at (r, c + factor (r − centre)): rows move sideways, top against bottom.
        centre = (SIZE - 1) / 2
        matrix = np.array([[1.0, 0.0], [factor, 1.0]])
        return ndimage.affine_transform(image, matrix, offset=[0.0, -factor * centre], order=1)

    return as_uint8(
        np.stack([shear(image.astype(np.float64), f) for image, f in zip(digits[:, 0], factors, strict=True)])
    )


def elastic(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits under a strong elastic warp (Simard et al. 2003: a uniform random displacement field smoothed
    by a Gaussian of σ = 3 pixels and scaled by α = 40): wobbly, kinked strokes. Simard's augmentation (α = 34,
    σ = 4) keeps digits in distribution; this one is rougher but still reads as digits, so expect it to be hard."""
    grid = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)

    def warp(image: np.ndarray) -> np.ndarray:
        field = [ndimage.gaussian_filter(rng.uniform(-1, 1, (SIZE, SIZE)), 3.0) * 40.0 for _ in range(2)]
        return ndimage.map_coordinates(image, [grid[0] + field[0], grid[1] + field[1]], order=1)

    return each_digit(digits, warp)


# ----------------------------------------------------------------------------------- photometric families
def inverted(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits as black ink on white, ``255 − x``: every MNIST background is black."""
    return 255 - digits


def low_contrast(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits at half contrast, ``x / 2`` (ink at most 128): every MNIST digit has ink at 254–255."""
    return each_digit(digits, lambda image: image / 2)


def gamma(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits through a gamma curve ``255 (x / 255)^γ``, γ = 3 or 1/3 at random: the strokes' antialiased
    edges get darker (thinner-looking, hard-edged strokes) or brighter (grey halos). Cores and background stay."""
    exponents = rng.choice([3.0, 1.0 / 3.0], size=len(digits))
    return as_uint8(255.0 * (digits[:, 0] / 255.0) ** exponents[:, None, None])


def brightness(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits with 48 added to every pixel (clipped): a grey background where MNIST's is exactly 0."""
    return each_digit(digits, lambda image: image + 48)


def gaussian_noise(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits with Gaussian noise of σ = 16 added (clipped, so the background gets faint positive
    speckle): a noisy sensor, where MNIST is clean."""
    return as_uint8(digits[:, 0] + rng.normal(0.0, 16.0, size=digits[:, 0].shape))


def occluded(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits with a white 8×8 block placed at random inside the central 20×20 box: an object in front."""
    out = digits.copy()
    for image in out[:, 0]:
        top, left = rng.integers(4, 4 + BOX - 8 + 1, size=2)
        image[top : top + 8, left : left + 8] = 255
    return out


def erased(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits with a black 8×8 block centred on a random ink pixel: a digit with a piece missing. Hard: a
    broken stroke is still mostly a digit, and often a plausible one (an 8 loses a loop and reads as a 3)."""
    out = digits.copy()
    for image in out[:, 0]:
        rows, cols = np.nonzero(image > 127)
        pick = rng.integers(len(rows))
        top, left = max(0, rows[pick] - 4), max(0, cols[pick] - 4)
        image[top : top + 8, left : left + 8] = 0
    return out


def blurred(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits blurred by a Gaussian of σ = 1.5 pixels: soft, dim strokes, where MNIST's are sharp."""
    return each_digit(digits, lambda image: ndimage.gaussian_filter(image, 1.5))


def thick_strokes(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits dilated by a 3×3 maximum filter: strokes 2 pixels thicker. MNIST's pens vary, so
    digits that were thin stay plausible: expect this one to be hard."""
    return each_digit(digits, lambda image: ndimage.grey_dilation(image, size=(3, 3), mode="constant", cval=0.0))


def thin_strokes(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Test digits eroded by a 2×2 minimum filter: strokes a pixel thinner, the thinnest ones broken. Like
    ``thick_strokes``, a change of pen within MNIST's range for some digits: expect it to be hard."""
    return each_digit(digits, lambda image: ndimage.grey_erosion(image, size=(2, 2), mode="constant", cval=0.0))


# ------------------------------------------------------------------------------------ character families
def sklearn_digits(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """scikit-learn's 8×8 digits (0..16 rescaled to 0..255) upscaled to 28×28 (bilinear): another handwriting
    collection, blocky and blurred by its 4×4 downsampling, filling the whole field."""
    from sklearn.datasets import load_digits

    small = load_digits().images  # (1797, 8, 8), 0..16
    picked = small[rng.choice(len(small), size=FAMILY_SIZE, replace=False)] * (255.0 / 16.0)
    return resize(picked, SIZE)


def font_digits(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Digits 0–9 typeset in the machine's fonts (``font_files``), MNIST-style: the same ten classes, printed
    instead of handwritten (uniform strokes, serifs). Near out-of-distribution: expect it to be hard."""
    return render_characters("0123456789", FAMILY_SIZE, rng)


def font_letters(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Latin letters (``LETTERS``: no O, o, I, l) typeset in the machine's fonts, MNIST-style: EMNIST's question
    (letters against digits), printed. Some letters share a digit's shape (S/5, Z/2, B/8, g/9): hard."""
    return render_characters(LETTERS, FAMILY_SIZE, rng)


def pen_strokes(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random pen scribbles, MNIST-style: one to three cubic Bézier strokes with random control points, drawn
    with a pen of MNIST's width. Stroke statistics like handwriting, shapes that are no digit."""
    t = np.linspace(0.0, 1.0, 40)[:, None]
    basis = np.hstack([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3])  # (40, 4)
    glyphs = []
    for _ in range(FAMILY_SIZE):
        canvas = Image.new("L", (112, 112))
        draw = ImageDraw.Draw(canvas)
        for _ in range(rng.integers(1, 4)):
            points = basis @ rng.uniform(8, 104, size=(4, 2))
            draw.line([tuple(p) for p in points], fill=255, width=int(rng.integers(9, 14)), joint="curve")
        # Drawn at 4× and filtered down, as MNIST's antialiasing did; the pen is then ~2.5 pixels wide.
        small = canvas.filter(ImageFilter.GaussianBlur(1.5)).resize((56, 56), Image.LANCZOS)
        glyphs.append(mnist_style(np.asarray(small, dtype=np.float64)))
    return as_uint8(np.stack(glyphs))


def overlaid(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two different test digits superimposed (pixelwise maximum): digit-like strokes everywhere, but no single
    digit."""
    partners = (np.arange(len(digits)) + rng.integers(1, len(digits), size=len(digits))) % len(digits)
    return np.maximum(digits, digits[partners])


# -------------------------------------------------------------------------------------- natural families
def lfw_faces(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """scikit-image's ``lfw_subset`` (25×25: 100 faces, then 100 non-face patches of the same photographs)
    resized to 28×28 (bilinear): natural grey images."""
    from skimage.data import lfw_subset

    return resize(lfw_subset() * 255.0, SIZE)


def natural_crops(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Square crops (side 28–160 pixels) of scikit-image's bundled photographs (``PHOTOGRAPHS``: people, a cat,
    coins, textures, micrographs, the Moon, a rocket), grayscale, resized to 28×28: natural images."""
    return random_crops(list(photographs()), FAMILY_SIZE, rng, (SIZE, 160))


def text_crops(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Crops (side 28–64 pixels, showing ink) of scikit-image's ``page`` (a photographed printed page) and
    ``text`` (handwritten formulae photographed on paper), inverted to light ink on a dark ground, resized to
    28×28: pen and print strokes, but pieces of words and symbols on an uneven, lit background."""
    from skimage import data

    return random_crops([255 - data.page(), 255 - data.text()], FAMILY_SIZE, rng, (SIZE, 64), min_std=25.0)


class Family(NamedTuple):
    """An out-of-distribution family: its group and the function that builds it from the test digits."""

    group: str
    build: Callable[[np.ndarray, np.random.Generator], np.ndarray]


# Group → its families, in the order of the tables.
GROUPS: dict[str, tuple[Callable[[np.ndarray, np.random.Generator], np.ndarray], ...]] = {
    "synthetic": (noise, constant),
    "geometric": (
        shifted,
        shifted_small,
        hflip,
        vflip,
        rotated_90,
        rotated_180,
        scaled_down,
        scaled_up,
        sheared,
        elastic,
    ),
    "photometric": (
        inverted,
        low_contrast,
        gamma,
        brightness,
        gaussian_noise,
        occluded,
        erased,
        blurred,
        thick_strokes,
        thin_strokes,
    ),
    "characters": (sklearn_digits, font_digits, font_letters, pen_strokes, overlaid),
    "natural": (lfw_faces, natural_crops, text_crops),
}
FAMILIES: dict[str, Family] = {
    build.__name__: Family(group, build) for group, builds in GROUPS.items() for build in builds
}


def family_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of one family: seeded by ``seed`` and the family's name, independent of the others."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def ood_sets(digits: np.ndarray, seed: int = 0, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The out-of-distribution families ``names`` (default: all of ``FAMILIES``), uint8 ``(N, 1, 28, 28)`` each."""
    unknown = sorted(set(names or ()) - set(FAMILIES))
    if unknown:
        raise ValueError(f"expected families among {', '.join(FAMILIES)}, got {', '.join(unknown)}")
    return {name: FAMILIES[name].build(digits, family_rng(seed, name)) for name in names or FAMILIES}
