"""Run a pathway finder over a data set in batches and measure it: the engine behind ``find``.

One place for the batched loop (progress bar, device transfer, timing, faithfulness) so the CLI,
``compare`` and ``extract`` never re-implement it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from neuralpath.checkpoint import Target, load_target
from neuralpath.errors import InputError
from neuralpath.gating import GatedModel, LayerSelection
from neuralpath.methods.base import PathwayFinder, find_in_chunks
from neuralpath.metrics.faithfulness import PathwayOutcome, pathway_outcome, summarize
from neuralpath.pathway import Pathway


def open_target(
    checkpoint: str,
    device: str | torch.device = "auto",
    *,
    layers: LayerSelection = None,
    include_fc: bool = False,
) -> tuple[Target, GatedModel]:
    """Load a target checkpoint and discover its gate sites (default: post-activation of convs)."""
    target = load_target(checkpoint, device)
    gated = GatedModel.discover(
        target.model, target.example_input(), layers=layers, include_fc=include_fc
    )
    return target, gated


@dataclass(frozen=True)
class FinderRun:
    """Pathways of ``n`` samples with their outcome and cost."""

    method: str
    pathway: Pathway
    outcome: PathwayOutcome
    labels: Tensor
    seconds: float
    forward_equivalents: float

    def summary(self) -> dict[str, float | str | int]:
        """The ``find`` JSON contract: method, n, faithfulness keys, seconds_per_image."""
        result: dict[str, float | str | int] = {"method": self.method}
        result.update(summarize(self.outcome, self.pathway, self.labels))
        result["seconds_per_image"] = self.seconds / max(1, self.labels.numel())
        result["forward_equivalents"] = self.forward_equivalents
        return result


def run_finder(
    finder: PathwayFinder,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    limit: int | None = None,
    progress: bool = True,
    method: str | None = None,
    internal_batch_size: int | None = None,
) -> FinderRun:
    """Find pathways for the first ``limit`` samples of ``dataset`` (items ``(image, label)``).

    Pathways are kept on the CPU; timing covers :meth:`PathwayFinder.find` only.
    ``internal_batch_size`` bounds memory (see :func:`find_in_chunks`).
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    total = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    if total <= 0:
        raise InputError("no samples to explain (empty data set or limit <= 0)")
    subset = torch.utils.data.Subset(dataset, range(total))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False)
    device = finder.gated.device
    pathways, outcomes, labels = [], [], []
    seconds = 0.0
    bar = tqdm(total=total, desc=method or finder.name, unit="img", disable=not progress)
    for images, batch_labels in loader:
        images = images.to(device)
        start = time.perf_counter()
        pathway = find_in_chunks(finder, images, None, internal_batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        outcomes.append(pathway_outcome(finder.gated, images, pathway))
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
    )
