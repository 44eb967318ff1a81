"""Train a target classifier and save it as a checkpoint.

Recipe: AdamW with a one-cycle learning-rate schedule (warm-up over the first 25 % of the steps,
then cosine annealing), cross-entropy loss, no augmentation. Everything random (initial weights,
dropout, batch order) follows ``seed``; the whole split lives on ``device`` and batches are
drawn by indexing, so the loop never leaves torch.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from neuralpath.checkpoint import TargetMeta, save_target
from neuralpath.data import ImageDataset, load_dataset
from neuralpath.errors import InputError
from neuralpath.models import build_model, default_width, resolve_device

DEFAULT_LR = 2e-3
WEIGHT_DECAY = 5e-4


@dataclass(frozen=True)
class EpochStats:
    """Mean training loss and accuracy over one epoch, test accuracy after it, seconds taken."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    seconds: float


@dataclass
class TrainResult:
    """A trained model (eval mode), its metadata, per-epoch history and where it was saved."""

    model: nn.Module
    meta: TargetMeta
    history: list[EpochStats]
    wall_time_s: float
    num_parameters: int
    checkpoint: Path | None
    device: str = "cpu"
    threads: int = 1
    """CPU threads torch used (``torch.get_num_threads()``): the wall time depends on them."""

    @property
    def test_accuracy(self) -> float:
        return self.history[-1].test_accuracy

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: metadata, parameter count, wall time, per-epoch history."""
        return {
            "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
            "arch": self.meta.arch,
            "arch_args": self.meta.arch_args,
            "data": self.meta.data,
            "input_shape": list(self.meta.input_shape),
            "num_classes": self.meta.num_classes,
            "seed": self.meta.seed,
            "epochs": self.meta.epochs,
            "test_accuracy": self.test_accuracy,
            "num_parameters": self.num_parameters,
            "wall_time_s": round(self.wall_time_s, 2),
            "device": self.device,
            "threads": self.threads,
            "history": [asdict(stats) for stats in self.history],
        }


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, *, batch_size: int = 1000) -> float:
    """Top-1 accuracy (fraction) of ``model`` in eval mode on ``images [N, C, H, W]``.

    Leaves the model in eval mode. The data is moved to the model's device batch by batch.
    """
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, labels.shape[0], batch_size):
        x = images[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        correct += (model(x).argmax(dim=1) == y).sum()
    return correct.item() / max(1, labels.shape[0])


MIN_ONE_CYCLE_STEPS = 8
"""Runs with fewer optimiser steps train at a constant learning rate."""


def train_target(  # noqa: PLR0913 -- public API; keyword-only options mirror the CLI flags
    arch: str,
    data: str | os.PathLike[str] | tuple[ImageDataset, ImageDataset],
    *,
    epochs: int = 3,
    seed: int = 0,
    device: str | torch.device = "auto",
    width: float | None = None,
    batch_size: int = 128,
    lr: float = DEFAULT_LR,
    out_dir: str | os.PathLike[str] | None = None,
    data_root: str | os.PathLike[str] | None = None,
    download: bool = False,
    limit: int | None = None,
    image_size: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``arch`` on ``data`` and, when ``out_dir`` is given, save the checkpoint there.

    ``data``: a data set name or folder for :func:`~neuralpath.data.load_dataset` (with
    ``data_root``, ``download``, ``limit`` per split, ``image_size``), or a ``(train, test)``
    pair of :class:`~neuralpath.data.ImageDataset`. ``width``: ``None`` picks
    :func:`~neuralpath.models.default_width`. Deterministic for a given seed and device; the
    global torch RNG state is left as it was.
    """
    _check_train_args(epochs, batch_size, lr, out_dir)
    run_device = resolve_device(device)
    if isinstance(data, tuple):
        train_set, test_set = data
    else:
        load = functools.partial(
            load_dataset, str(data), root=data_root, limit=limit, seed=seed,
            image_size=image_size, download=download,
        )  # fmt: skip
        train_set, test_set = load("train"), load("test")
    if len(train_set) < 2 or train_set.input_shape != test_set.input_shape:
        raise InputError("need at least 2 training images, and test images of the same shape")

    started = time.perf_counter()
    arch_args = _arch_args(arch, width, train_set)
    cuda_devices = [run_device.index or 0] if run_device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)  # initial weights and dropout
        # channels-last convolutions train ~20 % faster on CPU; the returned model is contiguous.
        model = build_model(arch, **arch_args).to(run_device)
        model = model.to(memory_format=torch.channels_last)
        history = _optimise(model, train_set, test_set, epochs, seed, batch_size, lr, progress)
    model = model.to(memory_format=torch.contiguous_format).eval()
    meta = _target_meta(arch, arch_args, train_set, seed, history)
    checkpoint = None if out_dir is None else save_target(out_dir, model, meta)
    return TrainResult(
        model=model,
        meta=meta,
        history=history,
        wall_time_s=time.perf_counter() - started,
        num_parameters=count_parameters(model),
        checkpoint=checkpoint,
        device=str(run_device),
        threads=torch.get_num_threads(),
    )


def _arch_args(arch: str, width: float | None, train_set: ImageDataset) -> dict[str, Any]:
    """:func:`~neuralpath.models.build_model`'s arguments for ``train_set``'s images and
    classes (``width`` ``None``: the architecture's default)."""
    channels, height, _ = train_set.input_shape
    return {
        "num_classes": train_set.num_classes,
        "in_channels": channels,
        "input_size": height,
        "width": default_width(arch) if width is None else float(width),
    }


def _target_meta(
    arch: str,
    arch_args: dict[str, Any],
    train_set: ImageDataset,
    seed: int,
    history: list[EpochStats],
) -> TargetMeta:
    """What the checkpoint records of a run: model, data, seed, epochs and final accuracy."""
    return TargetMeta(
        arch=arch,
        arch_args=arch_args,
        data=train_set.name,
        input_shape=train_set.input_shape,
        num_classes=train_set.num_classes,
        class_names=list(train_set.class_names),
        mean=train_set.mean,
        std=train_set.std,
        seed=seed,
        epochs=len(history),
        test_accuracy=history[-1].test_accuracy,
    )


def _check_train_args(
    epochs: int, batch_size: int, lr: float, out_dir: str | os.PathLike[str] | None
) -> None:
    """Raise :class:`InputError` for a non-positive ``epochs``/``batch_size``/``lr`` or an
    ``out_dir`` that exists as a file."""
    for key, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{key} must be a positive integer, got {value!r}")
    if not lr > 0:
        raise InputError(f"lr must be positive, got {lr!r}")
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise InputError(f"output path {out_dir} exists and is not a directory")


def _optimise(
    model: nn.Module,
    train_set: ImageDataset,
    test_set: ImageDataset,
    epochs: int,
    seed: int,
    batch_size: int,
    lr: float,
    progress: bool,
) -> list[EpochStats]:
    """The training loop: AdamW + one-cycle schedule; test accuracy after every epoch."""
    device = next(model.parameters()).device
    images = train_set.images.to(device, memory_format=torch.channels_last)
    labels = train_set.labels.to(device)
    # Drop the last incomplete batch: a batch of one breaks BatchNorm on 1×1 feature maps.
    batch_size = min(batch_size, len(train_set))
    steps = len(train_set) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    schedule = _schedule(optimizer, lr, epochs * steps)
    shuffle = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_set), generator=shuffle).to(device)
        batches = order[: steps * batch_size].view(steps, batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
        loss_sum, correct = _train_epoch(model, images, labels, bar, optimizer, schedule)
        stats = EpochStats(
            epoch=epoch,
            train_loss=loss_sum / steps,
            train_accuracy=correct / (steps * batch_size),
            test_accuracy=evaluate(model, test_set.images, test_set.labels),
            seconds=round(time.perf_counter() - epoch_start, 2),
        )
        history.append(stats)
        if progress:
            tqdm.write(
                f"epoch {epoch}/{epochs}: loss {stats.train_loss:.4f}, train acc "
                f"{stats.train_accuracy:.4f}, test acc {stats.test_accuracy:.4f} "
                f"({stats.seconds:.1f} s)",
                file=sys.stderr,
            )
    return history


def _schedule(
    optimizer: torch.optim.Optimizer, lr: float, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """One-cycle learning rate up to ``lr`` (25 % warm-up) over ``total_steps``; a constant
    ``lr`` for runs under :data:`MIN_ONE_CYCLE_STEPS` steps."""
    if total_steps >= MIN_ONE_CYCLE_STEPS:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.25
        )
    # too few steps for a warm-up phase (OneCycleLR would divide by zero): constant lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)


def _train_epoch(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    batches: tqdm[Tensor],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[float, int]:
    """One pass over ``batches`` (index rows ``[batch_size]`` into ``images``/``labels``, shown
    by the progress bar): one optimiser and schedule step each. Returns the summed loss and the
    count of correct training predictions."""
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    for step, batch in enumerate(batches):
        logits = model(images[batch])
        loss = F.cross_entropy(logits, labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += loss.detach()
        correct += (logits.detach().argmax(dim=1) == labels[batch]).sum()
        if not batches.disable and (step % 25 == 0 or step == len(batches) - 1):
            seen = (step + 1) * batch.numel()
            batches.set_postfix(
                loss=f"{loss_sum.item() / (step + 1):.3f}", acc=f"{correct.item() / seen:.3f}"
            )
    return loss_sum.item(), int(correct.item())
