"""Run a pathway finder over a data set in batches and measure it: the engine behind ``find``.

One place for the batched loop (progress bar, device transfer, timing, faithfulness) so the CLI,
``compare`` and ``extract`` never re-implement it.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from neuralpath.checkpoint import Target, load_target
from neuralpath.data import LabeledDataset, load_dataset
from neuralpath.errors import DisconnectedWarning, InputError, LeakageWarning, ShapeError
from neuralpath.gating import GatedModel, LayerSelection, UnitType
from neuralpath.interventions import (
    AblationName,
    Intervention,
    MeanAblation,
    ResampleAblation,
    ZeroAblation,
    check_ablation,
)
from neuralpath.methods.base import PathwayFinder, find_in_chunks
from neuralpath.metrics.connectivity import disconnect_warning
from neuralpath.metrics.faithfulness import PathwayOutcome, pathway_outcome, summarize
from neuralpath.metrics.leakage import (
    LeakageOutcome,
    leak_warning,
    leakage_outcome,
    summarize_leakage,
)
from neuralpath.pathway import Pathway
from neuralpath.reference import ReferenceStatistics, load_or_compute_reference

DEFAULT_REFERENCE_SIZE = 2000
"""Training images the reference statistics and resample donors come from [ours]."""


def open_target(
    checkpoint: str | Target,
    device: str | torch.device = "auto",
    *,
    layers: LayerSelection = None,
    include_fc: bool = False,
    unit_types: Sequence[UnitType] | None = None,
) -> tuple[Target, GatedModel]:
    """Load a target checkpoint (or take an opened :class:`Target`, e.g. a user's model from
    :func:`neuralpath.model_source.open_model`, as it is) and discover its gate sites (default:
    post-activation of convs; ``layers`` or a transformer's ``unit_types``, see
    :meth:`GatedModel.discover`)."""
    target = checkpoint if isinstance(checkpoint, Target) else load_target(checkpoint, device)
    gated = GatedModel.discover(
        target.model, target.example_input(), layers=layers, include_fc=include_fc,
        unit_types=unit_types,
    )  # fmt: skip
    return target, gated


@dataclass(frozen=True)
class Reference:
    """What the interventions and the leakage controls of a run draw on: the reference
    statistics (per-unit means, mean input image) and the reference images (resample donors)."""

    statistics: ReferenceStatistics
    images: Tensor

    def intervention(self, ablation: str, seed: int = 0) -> Intervention:
        """The intervention named ``ablation`` (``zero``, ``mean``, ``resample``)."""
        name: AblationName = check_ablation(ablation)
        if name == "mean":
            return MeanAblation(self.statistics)
        if name == "resample":
            return ResampleAblation(self.images, seed)
        return ZeroAblation()


def open_reference(
    directory: str | os.PathLike[str],
    gated: GatedModel,
    dataset: LabeledDataset,
    *,
    size: int = DEFAULT_REFERENCE_SIZE,
    seed: int = 0,
    recompute: bool = False,
    progress: bool = True,
    source: dict[str, Any] | None = None,
) -> Reference:
    """The reference of a target stored at ``directory`` (computed and stored on first use, or
    when ``recompute``): ``size`` images of ``dataset`` (normally the training split) drawn with
    ``seed``."""
    if size < 1:
        raise InputError(f"the reference set needs at least one image, got size {size}")
    total = len(dataset)  # type: ignore[arg-type]
    if total == 0:
        raise InputError("the reference set is empty")
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(total, generator=generator)[: min(size, total)].sort().values
    images = torch.stack([dataset[int(i)][0] for i in index])
    statistics = load_or_compute_reference(
        directory, gated, images, recompute=recompute, progress=progress,
        source={"size": int(index.numel()), "seed": seed, **(source or {})},
    )  # fmt: skip
    return Reference(statistics, images)


def open_training_reference(
    checkpoint: str | os.PathLike[str],
    gated: GatedModel,
    data: str,
    data_root: str | None = None,
    *,
    size: int = DEFAULT_REFERENCE_SIZE,
    seed: int = 0,
    recompute: bool = False,
    progress: bool = True,
) -> Reference:
    """:func:`open_reference` of the target at ``checkpoint`` over ``size`` images of the
    *training* split of ``data`` (a seeded subset, at the model's image size)."""
    if size < 1:
        raise InputError(f"the reference set needs at least one image, got size {size}")
    train = load_dataset(
        data, "train", data_root, limit=size, seed=seed, image_size=gated.input_shape[-1]
    )
    if tuple(train.input_shape) != tuple(gated.input_shape):
        raise ShapeError(
            f"{data} training images have shape {list(train.input_shape)}, the model takes "
            f"{list(gated.input_shape)}"
        )
    return open_reference(
        checkpoint, gated, train, size=size, seed=seed, recompute=recompute, progress=progress,
        source={"data": data, "split": "train"},
    )  # fmt: skip


@dataclass(frozen=True)
class FinderRun:
    """Pathways of ``n`` samples with their outcome, leakage controls and cost."""

    method: str
    pathway: Pathway
    outcome: PathwayOutcome
    labels: Tensor
    seconds: float
    forward_equivalents: float
    leakage: LeakageOutcome | None = None
    ablation: dict[str, Any] = field(default_factory=lambda: {"ablation": "zero"})

    def summary(self) -> dict[str, Any]:
        """The ``find`` JSON contract: method, ablation, n, faithfulness keys, leakage keys
        (when measured), seconds_per_image."""
        result: dict[str, Any] = {"method": self.method, "ablation": self.ablation["ablation"]}
        result.update(summarize(self.outcome, self.pathway, self.labels))
        if self.leakage is not None:
            result.update(summarize_leakage(self.leakage))
        result["seconds_per_image"] = self.seconds / max(1, self.labels.numel())
        result["forward_equivalents"] = self.forward_equivalents
        return result

    def warn_if_leaking(self) -> None:
        """Issue a :class:`LeakageWarning` when the pathways follow the mask (see
        :func:`~neuralpath.metrics.leakage.leak_warning`)."""
        warn_if_leaking(self.summary(), self.method)

    def warn_if_disconnected(self) -> None:
        """Issue a :class:`DisconnectedWarning` when some pathways disconnect the network (see
        :mod:`~neuralpath.metrics.connectivity`)."""
        warn_if_disconnected(self.summary(), self.method)


def warn_if_disconnected(summary: dict[str, Any], what: str) -> None:
    """Issue a :class:`DisconnectedWarning` when ``summary`` (``disconnected_n``, ``n``) counts
    pathways whose pathway model does not depend on the input."""
    message = disconnect_warning(summary, what)
    if message is not None:
        warnings.warn(message, DisconnectedWarning, stacklevel=3)


def warn_if_leaking(summary: dict[str, Any], what: str) -> None:
    """Issue a :class:`LeakageWarning` when ``summary`` (leakage keys and ``ablation``) shows
    pathways that follow the mask (see :func:`~neuralpath.metrics.leakage.leak_warning`)."""
    message = leak_warning(summary, what)
    if message is not None:
        warnings.warn(message, LeakageWarning, stacklevel=3)


def _first_batches(
    dataset: LabeledDataset, batch_size: int, limit: int | None
) -> tuple[DataLoader[tuple[Tensor, Tensor]], int]:
    """``(loader over the first limit samples in order, their number)``; checks both."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    total = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    if total <= 0:
        raise InputError("no samples to explain (empty data set or limit <= 0)")
    subset = torch.utils.data.Subset(dataset, range(total))
    return DataLoader(subset, batch_size=batch_size, shuffle=False), total


def run_finder(  # noqa: PLR0913 -- public API; keyword-only run options
    finder: PathwayFinder,
    dataset: LabeledDataset,
    *,
    batch_size: int = 64,
    limit: int | None = None,
    progress: bool = True,
    method: str | None = None,
    internal_batch_size: int | None = None,
    leakage: bool = True,
    baseline: Tensor | None = None,
    seed: int = 0,
) -> FinderRun:
    """Find pathways for the first ``limit`` samples of ``dataset`` (items ``(image, label)``).

    Pathways are kept on the CPU; timing covers :meth:`PathwayFinder.find` only.
    ``internal_batch_size`` bounds memory (see :func:`find_in_chunks`). With ``leakage``, the
    leakage controls are measured on every batch (baseline ``[*input_shape]``, default zeros;
    swap partners drawn with ``seed``) under the finder's gated model's intervention. Every
    pathway is checked for connecting the input to the output (``disconnected`` in the summary;
    ``seed`` draws the probes of :func:`~neuralpath.metrics.connectivity.input_dependence`).
    """
    loader, total = _first_batches(dataset, batch_size, limit)
    device = finder.gated.device
    pathways, outcomes, labels, leaks = [], [], [], []
    seconds = 0.0
    bar = tqdm(total=total, desc=method or finder.name, unit="img", disable=not progress)
    for images, batch_labels in loader:
        images = images.to(device)
        start = time.perf_counter()
        pathway = find_in_chunks(finder, images, None, internal_batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        outcome = pathway_outcome(finder.gated, images, pathway, seed=seed)
        outcomes.append(outcome)
        if leakage:
            leaks.append(
                leakage_outcome(
                    finder.gated, images, pathway, baseline=baseline, seed=seed, outcome=outcome
                )
            )
        pathways.append(pathway.detach().to("cpu"))
        labels.append(batch_labels.cpu())
        bar.update(images.shape[0])
    bar.close()
    return FinderRun(
        method=method or finder.name,
        pathway=Pathway.cat(pathways),
        outcome=PathwayOutcome.cat(outcomes),
        labels=torch.cat(labels),
        seconds=seconds,
        forward_equivalents=finder.forward_equivalents(),
        leakage=LeakageOutcome.cat(leaks) if leaks else None,
        ablation=finder.gated.intervention.describe(),
    )
