"""Data sets: generated, bundled and user files; deterministic splits; clear errors naming the file."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import load_config
from training.data import DataError, bimodal_log_density, load_data


def data_config(*overrides: str):
    return load_config(None, list(overrides)).data


def assert_disjoint_cover(data):
    indices = torch.cat(list(data.indices.values()))
    assert len(indices) == len(data.items) == len(torch.unique(indices))


@pytest.mark.parametrize("name", ["moons", "circles", "checkerboard", "rings", "bimodal"])
def test_generated_data_is_deterministic_and_split(name):
    config = data_config(f'data.name="{name}"', "data.num_samples=1000", "data.val_size=0.1", "data.test_size=150")
    first, second = load_data(config), load_data(config)
    assert first.kind == "vector"
    assert first.shape == ((1,) if name == "bimodal" else (2,))
    assert first.sizes == {"train": 750, "val": 100, "test": 150}
    assert torch.equal(first.items, second.items) and first.fingerprint() == second.fingerprint()
    assert first.items.dtype == torch.float32 and torch.isfinite(first.items).all()
    assert_disjoint_cover(first)
    other = load_data(data_config(f'data.name="{name}"', "data.num_samples=1000", "data.split_seed=1"))
    assert not torch.equal(first.indices["test"], other.indices["test"])
    assert first.fingerprint() != other.fingerprint()


def test_bimodal_has_two_modes_and_its_true_density_integrates_to_one():
    data = load_data(data_config('data.name="bimodal"', "data.num_samples=20000"))
    x = data.items[:, 0]
    assert (x < 0).float().mean().item() == pytest.approx(0.35, abs=0.02)
    grid = torch.linspace(-8, 10, 20001)[:, None]
    mass = torch.trapezoid(bimodal_log_density(grid).exp(), grid[:, 0])
    assert mass.item() == pytest.approx(1.0, abs=1e-4)


def test_mnist5k_has_the_documented_splits():
    data = load_data(data_config('data.name="mnist5k"', "data.val_size=500", "data.test_size=500"))
    assert (data.kind, data.shape, data.items.dtype) == ("image", (1, 28, 28), torch.uint8)
    assert data.sizes == {"train": 4000, "val": 500, "test": 500}
    assert int(data.items.max()) == 255
    assert_disjoint_cover(data)


def test_digits_are_rescaled_to_8_bits():
    data = load_data(data_config('data.name="digits"'))
    assert data.shape == (1, 8, 8) and len(data.items) == 1797
    assert int(data.items.min()) == 0 and int(data.items.max()) == 255


def test_splits_that_leave_nothing_are_refused():
    with pytest.raises(DataError, match=r"leave an empty split"):
        load_data(data_config("data.num_samples=10", "data.val_size=5", "data.test_size=5"))


# ------------------------------------------------------------------------------------------------ image folder
def write_image(path, size=(10, 10), mode="L", value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(path)


def folder_config(path, *overrides):
    return data_config(
        'data.name="image_folder"', f'data.path="{path}"', "data.val_size=1", "data.test_size=1", *overrides
    )


def test_image_folder_reads_png_and_jpeg_recursively(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"a{i}.png", value=10 * i)
    write_image(tmp_path / "sub" / "b.jpg", value=200)
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_data(folder_config(tmp_path))
    assert (data.kind, data.shape, len(data.items)) == ("image", (1, 10, 10), 4)
    assert sorted(int(v) for v in data.items[:, 0, 0, 0]) == [0, 10, 20, 200]


def write_striped(path, centre, outer=(255, 0), size=(40, 20)):
    """A wide image: its left and right quarters gray levels ``outer``, the centred square ``centre`` (a gray
    level, or an RGB colour for a colour image)."""
    width, height = size
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:] = centre
    side = (width - height) // 2
    pixels[:, :side], pixels[:, width - side :] = outer
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels if isinstance(centre, tuple) else pixels[:, :, 0]).save(path)


def test_image_folder_colour_resize_and_crop(tmp_path):
    write_striped(tmp_path / "wide.png", centre=(100, 0, 200))
    write_image(tmp_path / "gray.png", size=(16, 16), value=100)
    write_image(tmp_path / "third.png", size=(30, 30), value=0)
    data = load_data(folder_config(tmp_path, "data.image_size=8"))
    assert data.shape == (3, 8, 8)  # one colour image: everything becomes RGB
    # Centre crop: the centred 20x20 square of the 40x20 image, resized; the gray outer stripes are cut away.
    (wide,) = [item for item in data.items if item[1, 0, 0] == 0 and item[0, 0, 0] != 0]
    assert [int(wide[channel].min()) for channel in range(3)] == [100, 0, 200] == [int(c.max()) for c in wide]
    assert sum(bool((item == 100).all()) for item in data.items) == 1  # the gray image, in three equal channels
    gray = load_data(folder_config(tmp_path, "data.image_size=8", "data.channels=1", 'data.crop="none"'))
    assert gray.shape == (1, 8, 8)
    # No crop: the whole image squashed to 8x8, stripes kept (Lanczos rings by a few levels near the edges).
    (squashed,) = [item[0] for item in gray.items if not (item == item.flatten()[0]).all()]
    assert (squashed[:, 0] > 240).all() and (squashed[:, -1] < 15).all(), squashed
    centre = int(np.asarray(Image.new("RGB", (1, 1), (100, 0, 200)).convert("L"))[0, 0])
    assert ((squashed[:, 2:6].int() - centre).abs() <= 12).all(), (centre, squashed)


def test_image_folder_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"data path '.*nowhere' does not exist"):
        load_data(folder_config(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no PNG/JPEG images found in '.*empty'"):
        load_data(folder_config(tmp_path / "empty"))
    write_image(tmp_path / "mixed" / "a.png", size=(10, 10))
    write_image(tmp_path / "mixed" / "b.png", size=(12, 10))
    with pytest.raises(DataError, match=r"image '.*b.png' is 12x10 but '.*a.png' is 10x10; set data.image_size"):
        load_data(folder_config(tmp_path / "mixed"))
    write_image(tmp_path / "corrupt" / "a.png")
    (tmp_path / "corrupt" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DataError, match=r"cannot read image '.*broken.png'"):
        load_data(folder_config(tmp_path / "corrupt"))
    truncated = tmp_path / "truncated"
    write_image(truncated / "a.png", size=(64, 64))
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, "PNG")
    (truncated / "b.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(DataError, match=r"cannot read image '.*b.png'"):
        load_data(folder_config(truncated))


# ----------------------------------------------------------------------------------------------------- arrays
def array_config(path, *overrides):
    return data_config('data.name="array"', f'data.path="{path}"', "data.val_size=2", "data.test_size=2", *overrides)


def test_npy_images_in_any_layout(tmp_path):
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (10, 3, 6, 6)).astype(np.uint8)
    np.save(tmp_path / "nchw.npy", nchw)
    np.save(tmp_path / "nhwc.npy", nchw.transpose(0, 2, 3, 1))
    np.save(tmp_path / "nhw.npy", nchw[:, 0].astype(np.int64))
    first, second = load_data(array_config(tmp_path / "nchw.npy")), load_data(array_config(tmp_path / "nhwc.npy"))
    assert first.shape == second.shape == (3, 6, 6)
    assert torch.equal(first.items, second.items)
    assert load_data(array_config(tmp_path / "nhw.npy")).shape == (1, 6, 6)


def test_npz_vectors_and_keys(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(20, 3))
    np.savez(tmp_path / "one.npz", points=vectors)
    data = load_data(array_config(tmp_path / "one.npz"))
    assert (data.kind, data.shape) == ("vector", (3,))
    np.savez(tmp_path / "two.npz", x=vectors, y=vectors[:, :1])
    assert load_data(array_config(tmp_path / "two.npz")).shape == (3,)  # "x" by default
    assert load_data(array_config(tmp_path / "two.npz", 'data.key="y"')).shape == (1,)
    np.savez(tmp_path / "ab.npz", a=vectors, b=vectors)
    with pytest.raises(DataError, match=r"holds several arrays \(a, b\); choose one with data.key"):
        load_data(array_config(tmp_path / "ab.npz"))
    with pytest.raises(DataError, match=r"no array 'zz' in"):
        load_data(array_config(tmp_path / "ab.npz", 'data.key="zz"'))
    as_vectors = load_data(array_config(tmp_path / "ab.npz", 'data.key="a"', 'data.kind="vector"'))
    assert as_vectors.items.dtype == torch.float32


def test_bad_arrays_are_refused(tmp_path):
    np.save(tmp_path / "range.npy", np.full((5, 4, 4), 300))
    with pytest.raises(DataError, match=r"expected integer pixel values 0..255 in '.*range.npy'"):
        load_data(array_config(tmp_path / "range.npy"))
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]] * 8))
    with pytest.raises(DataError, match=r"NaN or infinite"):
        load_data(array_config(tmp_path / "nan.npy"))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 8, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"cannot read array file '.*objects.npy'"):
        load_data(array_config(tmp_path / "objects.npy"))  # allow_pickle=False: no code can run
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match=r"cannot read array file '.*junk.npy'"):
        load_data(array_config(tmp_path / "junk.npy"))
    np.save(tmp_path / "channels.npy", np.zeros((5, 5, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match=r"expected images"):
        load_data(array_config(tmp_path / "channels.npy"))


# --------------------------------------------------------------------------------------------------- CIFAR-10
def cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"x",
        b"labels": list(rng.integers(0, 10, n)),
        b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
        b"filenames": [b"f.png"] * n,
    }


def write_cifar(folder, sizes=(6, 5), test=4):
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(sizes, start=1):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(cifar_batch(n, i), protocol=2))
    if test:
        (folder / "test_batch").write_bytes(pickle.dumps(cifar_batch(test, 99), protocol=2))
    return folder


def cifar_config(path, *overrides):
    return data_config('data.name="cifar10"', f'data.path="{path}"', "data.val_size=2", *overrides)


def test_cifar10_folder_uses_the_official_test_batch(tmp_path):
    folder = write_cifar(tmp_path / "cifar-10-batches-py")
    data = load_data(cifar_config(folder))
    assert (data.kind, data.shape) == ("image", (3, 32, 32))
    assert data.sizes == {"train": 9, "val": 2, "test": 4}
    expected = cifar_batch(4, 99)[b"data"].reshape(-1, 3, 32, 32)
    assert np.array_equal(data.split("test").numpy(), expected)


def test_cifar10_archive_and_single_batch(tmp_path):
    folder = write_cifar(tmp_path / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    assert load_data(cifar_config(archive)).sizes == {"train": 9, "val": 2, "test": 4}
    single = load_data(cifar_config(folder / "data_batch_1", "data.test_size=2"))
    assert single.sizes == {"train": 2, "val": 2, "test": 2}


class Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar10_refuses_code_and_bad_batches(tmp_path, capsys):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit()}, protocol=2))
    with pytest.raises(DataError, match=r"cannot read CIFAR-10 batch '.*data_batch_1': refusing to load '.*print'"):
        load_data(cifar_config(folder))
    assert "must never run" not in capsys.readouterr().out
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((3, 100), np.uint8)}, protocol=2))
    with pytest.raises(DataError, match=r"expected 'data' of shape \(N, 3072\)"):
        load_data(cifar_config(folder))
    (folder / "data_batch_1").write_bytes(b"\x80\x02}q\x00(truncated")
    with pytest.raises(DataError, match=r"cannot read CIFAR-10 batch"):
        load_data(cifar_config(folder))
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match=r"no CIFAR-10 batches"):
        load_data(cifar_config(tmp_path / "none"))


# -------------------------------------------------------------------------------------------------- MNIST IDX
def idx_bytes(array):
    return (
        struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(np.uint8).tobytes()
    )


def test_mnist_idx_raw_gzip_and_folder(tmp_path):
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 256, (5, 28, 28))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(train)))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(test))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(12)))
    config = data_config('data.name="mnist_idx"', f'data.path="{tmp_path}"', "data.val_size=2")
    data = load_data(config)
    assert data.shape == (1, 28, 28) and data.sizes == {"train": 10, "val": 2, "test": 5}
    assert np.array_equal(data.split("test")[:, 0].numpy(), test)
    single = data_config(
        'data.name="mnist_idx"',
        f'data.path="{tmp_path / "t10k-images-idx3-ubyte"}"',
        "data.val_size=1",
        "data.test_size=1",
    )
    assert load_data(single).sizes == {"train": 3, "val": 1, "test": 1}


def test_mnist_idx_errors(tmp_path):
    def load(path):
        return load_data(
            data_config('data.name="mnist_idx"', f'data.path="{path}"', "data.val_size=1", "data.test_size=1")
        )

    truncated = tmp_path / "short-idx3-ubyte"
    truncated.write_bytes(idx_bytes(np.zeros((4, 28, 28)))[:-10])
    with pytest.raises(DataError, match=r"IDX file '.*short-idx3-ubyte' holds 3126 bytes of data, expected 3136"):
        load(truncated)
    (tmp_path / "magic-idx3-ubyte").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(DataError, match=r"is not an IDX file"):
        load(tmp_path / "magic-idx3-ubyte")
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"cannot read IDX file '.*bad.gz'"):
        load(tmp_path / "bad.gz")
    labels = tmp_path / "labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros(10)))
    with pytest.raises(DataError, match=r"expected images \(N, H, W\)"):
        load(labels)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no 'train-images-idx3-ubyte"):
        load(tmp_path / "empty")
