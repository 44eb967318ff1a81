"""Reference statistics of a target: per-unit mean activations over a reference set (spec §10).

They are what :class:`~neuralpath.interventions.MeanAblation` puts in place of a dropped unit,
and their ``input_mean`` (the reference set's mean image) is the default blank baseline of the
leakage controls. Computed once per target by streaming the reference set through the plain
model (sums in float64 on the model's device: memory does not grow with the set), stored as one
safetensors file whose JSON header names the target's weights (:func:`~neuralpath.io.state_digest`)
and the gate sites: loading them for other weights or other layers is a clear error.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from neuralpath.data import LabeledDataset
from neuralpath.errors import CheckpointError, InputError, ShapeError
from neuralpath.gating import GatedModel, GateSite
from neuralpath.io import load_artifact, save_tensors, state_digest

FORMAT = "neuralpath.reference"
_SITE_PREFIX = "site/"
_INPUT_MEAN = "input_mean"


@dataclass(frozen=True)
class ReferenceStatistics:
    """Mean activation per unit of every gate site, and the mean input image.

    ``means``: site name -> float32 ``[*site.shape]`` on the CPU; ``input_mean``: float32
    ``[*input_shape]``; ``count``: reference samples; ``target_digest``: the weights they were
    computed with; ``source``: what the reference set was (JSON-able, for provenance).
    """

    means: dict[str, Tensor]
    input_mean: Tensor
    count: int
    target_digest: str
    source: dict[str, Any] = field(default_factory=dict)

    def check_sites(self, sites: Sequence[GateSite]) -> None:
        """Raise :class:`ShapeError` unless every site has a mean of its shape."""
        missing = [site.name for site in sites if site.name not in self.means]
        if missing:
            raise ShapeError(
                f"reference statistics have no means for layer(s) {', '.join(missing)}: they were "
                "computed for another layer set; recompute them for these layers"
            )
        for site in sites:
            shape = tuple(self.means[site.name].shape)
            if shape != tuple(site.shape):
                raise ShapeError(
                    f"reference mean of layer {site.name!r} has shape {list(shape)}, the layer "
                    f"outputs {list(site.shape)}: recompute the reference statistics"
                )

    def check_target(self, model: torch.nn.Module, digest: str | None = None) -> None:
        """Raise :class:`CheckpointError` unless ``model`` has the weights these were made with."""
        found = digest if digest is not None else state_digest(model)
        if found != self.target_digest:
            raise CheckpointError(
                "reference statistics were computed for other weights (state digest "
                f"{self.target_digest[:12]}, the model has {found[:12]}): recompute them"
            )

    def describe(self) -> dict[str, Any]:
        return {"count": self.count, "target_digest": self.target_digest, **self.source}

    def save(self, path: str | os.PathLike[str]) -> None:
        """One safetensors file (atomic); the JSON header holds count, digest and source."""
        tensors = {_SITE_PREFIX + name: mean for name, mean in self.means.items()}
        tensors[_INPUT_MEAN] = self.input_mean
        meta = {
            "format": FORMAT,
            "count": self.count,
            "target_digest": self.target_digest,
            "source": self.source,
            "sites": list(self.means),
        }
        save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceStatistics:
        tensors, meta = load_artifact(path, FORMAT, "reference-statistics")
        if _INPUT_MEAN not in tensors or not isinstance(meta.get("sites"), list):
            raise CheckpointError(f"reference-statistics file {path} is incomplete")
        means = {name: tensors[_SITE_PREFIX + name] for name in meta["sites"]}
        return cls(
            means, tensors[_INPUT_MEAN], int(meta["count"]), str(meta["target_digest"]),
            dict(meta.get("source") or {}),
        )  # fmt: skip


def reference_statistics(
    gated: GatedModel,
    data: LabeledDataset | Tensor,
    *,
    batch_size: int = 256,
    limit: int | None = None,
    progress: bool = True,
    source: dict[str, Any] | None = None,
) -> ReferenceStatistics:
    """Mean activation of every unit of ``gated``'s sites over ``data``, streamed in batches.

    ``data``: a tensor ``[N, *input_shape]`` or a data set of ``(image, label)`` items; the
    first ``limit`` samples are used. Runs the plain model (no masks) on the model's device.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    total = len(data)  # type: ignore[arg-type]
    if limit is not None:
        total = min(total, limit)
    if total < 1:
        raise InputError("the reference set is empty")
    batches = _batches(data, total, batch_size)
    device = gated.device
    sums: dict[str, Tensor] = {}
    input_sum = torch.zeros(gated.input_shape, dtype=torch.float64, device=device)
    bar = tqdm(total=total, desc="reference statistics", unit="img", disable=not progress)
    with torch.no_grad():
        for images in batches:
            images = images.to(device)
            _, recording = gated.record(images)
            for name, activation in recording.activations.items():
                part = activation.detach().double().sum(0)
                sums[name] = part if name not in sums else sums[name] + part
            input_sum += images.double().sum(0)
            bar.update(images.shape[0])
    bar.close()
    means = {site.name: (sums[site.name] / total).float().cpu() for site in gated.sites}
    return ReferenceStatistics(
        means, (input_sum / total).float().cpu(), total, state_digest(gated.model),
        dict(source or {}),
    )  # fmt: skip


def _batches(data: LabeledDataset | Tensor, total: int, batch_size: int) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        return (data[start : start + batch_size] for start in range(0, total, batch_size))
    loader = DataLoader(torch.utils.data.Subset(data, range(total)), batch_size=batch_size)
    return (images for images, *_ in loader)


def reference_path(directory: str | os.PathLike[str], gated: GatedModel) -> Path:
    """Where a target directory keeps the reference statistics of this layer set."""
    layers = "|".join(f"{s.name}:{list(s.shape)}" for s in gated.sites)
    key = hashlib.sha256(layers.encode()).hexdigest()[:12]
    return Path(directory) / "reference" / f"means-{key}.safetensors"


def load_or_compute_reference(
    directory: str | os.PathLike[str],
    gated: GatedModel,
    data: LabeledDataset | Tensor,
    *,
    recompute: bool = False,
    source: dict[str, Any] | None = None,
    **options: Any,
) -> ReferenceStatistics:
    """The reference statistics stored beside the target at ``directory``, computed (and
    stored) when absent or when ``recompute``. Stored ones made for other weights raise
    :class:`CheckpointError` rather than being silently replaced."""
    path = reference_path(directory, gated)
    if path.exists() and not recompute:
        statistics = ReferenceStatistics.load(path)
        statistics.check_target(gated.model)
        statistics.check_sites(gated.sites)
        return statistics
    statistics = reference_statistics(gated, data, source=source, **options)
    statistics.save(path)
    return statistics
