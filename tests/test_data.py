import numpy as np
import pytest
import torch

from diffuse_edu import config, data

SHARED = config.PROJECT_ROOT.parent / "shared" / "datasets" if config.PROJECT_ROOT else None


def test_digits_are_16x16_in_unit_range():
    d = data.load_digits()
    assert d.images.shape == (1797, 1, 16, 16) and d.images.dtype == torch.float32
    assert d.images.min() == -1 and d.images.max() <= 1
    assert set(d.labels.tolist()) == set(range(10))


def test_course_images_takes_a_scale_by_name_as_well():
    """A scale given as its name picks the same set as the member (not MNIST by accident)."""
    from diffuse_edu.config import Scale
    assert torch.equal(data.course_images("test", "quick").images,
                       data.course_images("test", Scale.QUICK).images)
    assert data.course_images("test", "quick").images.shape[-1] == 16


def test_photos_are_square_colour_images():
    p = data.load_photos(size=32)
    assert p.images.shape == (2, 3, 32, 32)
    assert p.images.min() >= -1 and p.images.max() <= 1
    assert p.classes == ("china", "flower")


@pytest.mark.parametrize("make", [data.moons, data.swiss_roll, data.gaussian_ring])
def test_toy_sets_are_seeded_and_2d(make):
    a = make(500, generator=torch.Generator().manual_seed(3))
    b = make(500, generator=torch.Generator().manual_seed(3))
    assert a.shape == (500, 2) and torch.equal(a, b)
    assert 0.3 < a.std().item() < 3


def test_gaussian_ring_modes():
    x, centres = data.gaussian_ring_with_modes(4000, generator=torch.Generator().manual_seed(0))
    nearest = torch.cdist(x, centres).argmin(1)
    assert centres.shape == (8, 2) and torch.bincount(nearest, minlength=8).min() > 350


def test_uint8_round_trip():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    back = data.to_uint8(data.to_unit_range(x))
    assert back.shape == (4, 5, 5, 3) and np.array_equal(back, x.permute(0, 2, 3, 1).numpy())


def _fake_keras_npz(path, n=12, side=28, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"x_train": rng.integers(0, 256, (n, side, side), dtype=np.uint8),
              "y_train": rng.integers(0, 10, n, dtype=np.uint8),
              "x_test": rng.integers(0, 256, (n // 2, side, side), dtype=np.uint8),
              "y_test": rng.integers(0, 10, n // 2, dtype=np.uint8)}
    np.savez(path, **arrays)
    return arrays


@pytest.fixture
def empty_data_dir(tmp_path, monkeypatch):
    """A data folder with nothing in it, and no other folder searched."""
    monkeypatch.setattr(config, "PROJECT_ROOT", None)
    monkeypatch.setattr(config.Path, "home", lambda: tmp_path / "home")
    monkeypatch.delenv(config.DATA_ENV, raising=False)
    config.set_data_dir(tmp_path / "data")
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


def test_missing_data_says_what_to_run(empty_data_dir):
    with pytest.raises(data.DataMissingError) as e:
        data.load_mnist()
    text = str(e.value)
    assert "python -m diffuse_edu data fetch mnist" in text and "data stage FOLDER" in text
    assert str(empty_data_dir) in text
    assert data.availability()["mnist"] == "missing"


def test_checksum_mismatch_is_a_clear_error(empty_data_dir):
    _fake_keras_npz(empty_data_dir / "mnist.npz")
    with pytest.raises(data.DataCorruptError, match="does not match the MNIST checksum.*Delete it"):
        data.load_mnist()


def test_truncated_file_is_a_clear_error(empty_data_dir):
    _fake_keras_npz(empty_data_dir / "fashion_mnist.npz")
    raw = (empty_data_dir / "fashion_mnist.npz").read_bytes()
    (empty_data_dir / "fashion_mnist.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(data.DataCorruptError, match="not a readable Fashion-MNIST archive"):
        data.load_fashion_mnist()


def test_keras_layout_loads_padded_to_32(empty_data_dir):
    """CIFAR-10's card has no content checksum, so a fake file exercises the whole loading path."""
    arrays = _fake_keras_npz(empty_data_dir / "cifar10.npz", side=28)
    s = data.load_cifar10("test")
    assert s.images.shape == (6, 1, 32, 32) and s.labels.dtype == torch.int64
    assert torch.all(s.images[:, :, :2] == -1)  # the padded border is black
    torch.testing.assert_close(s.images[:, 0, 2:30, 2:30], data.to_unit_range(arrays["x_test"]))
    assert data.load_cifar10("test", size=16).images.shape == (6, 1, 16, 16)
    with pytest.raises(ValueError, match="split must be"):
        data.load_cifar10("validation")


def test_stage_copies_and_checks(empty_data_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _fake_keras_npz(src / "cifar10.npz")
    staged = data.stage(src)
    assert ([p.name for p in staged] == ["cifar10.npz"]
            and (empty_data_dir / "cifar10.npz").is_file())
    with pytest.raises(data.DataMissingError, match="No data set files"):
        data.stage(tmp_path / "home")


@pytest.mark.skipif(SHARED is None or not (SHARED / "mnist.npz").exists(),
                    reason="staged MNIST not present")
def test_staged_mnist_matches_its_card(monkeypatch):
    monkeypatch.setenv(config.DATA_ENV, str(SHARED))
    train = data.load_mnist("train")
    assert train.images.shape == (60000, 1, 32, 32) and len(data.load_mnist("test")) == 10000
    pixels = (train.images[:, :, 2:30, 2:30] + 1) / 2  # the original 28x28 in [0, 1]
    assert pixels.mean().item() == pytest.approx(0.1307, abs=1e-4)
    assert pixels.std().item() == pytest.approx(0.3081, abs=1e-4)


def test_cards_in_datasets_folder_match_the_code():
    """The checksum on each card is the one the loader verifies (cards and code never disagree)."""
    folder = config.PROJECT_ROOT / "datasets"
    for name, card in data.CARDS.items():
        path = folder / f"{name}.md"
        assert path.is_file(), f"datasets/{name}.md is missing"
        text = path.read_text()
        assert card.licence.split(" ")[0] in text
        if card.content_sha256:
            assert f"`{card.content_sha256}`" in text


def _write_idx(path, array):
    """An IDX file (the format of the original MNIST files): magic, big-endian dims, bytes."""
    magic = 0x0800 | array.ndim
    header = np.array([magic, *array.shape], dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_layout_is_found_and_read(empty_data_dir):
    raw = empty_data_dir / "torchvision" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    test_images = rng.integers(0, 256, (5, 28, 28))
    for prefix, n, images in (("train", 7, rng.integers(0, 256, (7, 28, 28))),
                              ("t10k", 5, test_images)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    assert data.availability()["mnist"].endswith("MNIST (torchvision files)")
    s = data.load_mnist("test")
    assert s.images.shape == (5, 1, 32, 32)
    torch.testing.assert_close(s.images[:, 0, 2:30, 2:30],
                               data.to_unit_range(test_images.astype(np.uint8)))
