"""Class-relevant pathways and their transfer to unseen samples (spec §6, rule [ours]).

Build: run a finder over a data split in order, keep the pathways of the first ``j`` instances
of every class (by default only correctly predicted ones), and aggregate them with
:func:`~neuralpath.pathway.aggregate_by_class`: firing frequency ``f_c``, class pathway
``M_c = 1[f_c >= θ]``. Transfer: explain each unseen sample with the class pathway of the
target's prediction and measure it with the same faithfulness metrics and leakage controls as
instance pathways, plus transfer specificity (spec §10). Works with any
:class:`~neuralpath.methods.base.PathwayFinder`, under its gated model's intervention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from neuralpath.data import LabeledDataset
from neuralpath.errors import DataError, InputError
from neuralpath.gating import GatedModel
from neuralpath.methods.base import PathwayFinder
from neuralpath.metrics.faithfulness import PathwayOutcome, pathway_outcome, summarize
from neuralpath.metrics.leakage import (
    LeakageOutcome,
    leakage_outcome,
    summarize_leakage,
    transfer_specificity_outcome,
)
from neuralpath.pathway import ClassPathways, Pathway, aggregate_by_class
from neuralpath.runner import FinderRun, run_finder

InstanceRule = Literal["correct", "all"]


def build_class_pathways(  # noqa: PLR0913 -- public API; keyword-only options
    finder: PathwayFinder,
    dataset: LabeledDataset,
    num_classes: int,
    *,
    j: int = 50,
    theta: float = 0.5,
    instances: InstanceRule = "correct",
    batch_size: int = 64,
    max_samples: int | None = None,
    class_names: list[str] | None = None,
    progress: bool = True,
    allow_missing: bool = False,
) -> ClassPathways:
    """Class pathways from the first ``j`` instances of each class in ``dataset`` order.

    ``instances="correct"``: only samples the target predicts correctly count (the instance's
    class is then its label = prediction); ``"all"``: every sample counts, grouped by the
    target's prediction. Stops reading once every class has ``j`` instances (or after
    ``max_samples``). Raises :class:`DataError` naming the classes left without instances.
    """
    if isinstance(j, bool) or not isinstance(j, int) or j < 1:
        raise InputError(f"j (instances per class) must be a positive integer, got {j!r}")
    if instances not in ("correct", "all"):
        raise InputError(f"instances must be 'correct' or 'all', got {instances!r}")
    total = len(dataset)  # type: ignore[arg-type]
    if max_samples is not None:
        total = min(total, max_samples)
    device = finder.gated.device
    counts = torch.zeros(num_classes, dtype=torch.long)
    pathways: list[Pathway] = []
    classes: list[Tensor] = []
    loader = DataLoader(torch.utils.data.Subset(dataset, range(total)), batch_size=batch_size)
    bar = tqdm(total=num_classes * j, desc="class pathways", unit="inst", disable=not progress)
    for images, labels in loader:
        images = images.to(device)
        with torch.no_grad():
            predicted = finder.gated.forward(images).argmax(1).cpu()
        if predicted.max() >= num_classes:
            raise InputError(f"the target predicts class {int(predicted.max())} >= {num_classes}")
        useful = _still_needed(predicted, labels, counts, j, instances)
        if useful.any():
            index = useful.nonzero().squeeze(1)
            pathways.append(finder.find(images[index.to(device)]).detach().to("cpu"))
            classes.append(predicted[index])
            before = int(counts.clamp_max(j).sum())
            counts += torch.bincount(predicted[index], minlength=num_classes)
            bar.update(int(counts.clamp_max(j).sum()) - before)
        if bool((counts >= j).all()):
            break
    bar.close()
    _check_coverage(counts, instances, total, class_names, allow_missing)
    result = aggregate_by_class(
        Pathway.cat(pathways), torch.cat(classes), num_classes, theta=theta, per_class_limit=j
    )
    result.frequency.metadata.update(
        {"j": j, "theta": theta, "instances": instances, "method": finder.name}
    )
    return result


def _still_needed(
    predicted: Tensor, labels: Tensor, counts: Tensor, j: int, instances: InstanceRule
) -> Tensor:
    """``[B]`` bool: the samples of a batch (``predicted``/``labels`` ``[B]``) that count as
    instances under ``instances`` and are among the first ``j`` of their predicted class, given
    ``counts`` ``[num_classes]`` instances taken from earlier batches."""
    keep = (
        predicted == labels if instances == "correct" else torch.ones_like(labels, dtype=torch.bool)
    )
    rank = torch.zeros_like(predicted)
    for c in predicted[keep].unique():
        members = keep & (predicted == c)
        rank[members] = counts[c] + torch.arange(1, int(members.sum()) + 1)
    return keep & (rank <= j)


def _check_coverage(
    counts: Tensor,
    instances: InstanceRule,
    total: int,
    class_names: list[str] | None,
    allow_missing: bool,
) -> None:
    """Raise :class:`DataError` naming the classes without instances (``counts`` ``[classes]``)
    when every class lacks them, or any does and ``allow_missing`` is false."""
    empty = [c for c in range(counts.numel()) if counts[c] == 0]
    if len(empty) == counts.numel() or (empty and not allow_missing):
        names = [f"{c} ({class_names[c]})" if class_names else str(c) for c in empty]
        rule = "correctly predicted " if instances == "correct" else "predicted "
        hint = "read more samples" + (" or count all instances" if instances == "correct" else "")
        raise DataError(
            f"no {rule}instances of class(es) {', '.join(names)} in the first {total} samples: "
            f"{hint}"
        )


@dataclass(frozen=True)
class TransferResult:
    """Instance pathways and transferred class pathways on the same evaluation samples."""

    instance: dict[str, Any]
    transfer: dict[str, Any]
    instance_class_jaccard: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "transfer": self.transfer,
            "instance_class_jaccard": self.instance_class_jaccard,
        }


def evaluate_transfer(  # noqa: PLR0913 -- public API; keyword-only options
    finder: PathwayFinder,
    class_pathways: ClassPathways,
    dataset: LabeledDataset,
    *,
    limit: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
    method: str | None = None,
    baseline: Tensor | None = None,
    seed: int = 0,
) -> TransferResult:
    """Faithfulness of instance pathways vs the class pathway of each sample's prediction.

    Runs ``finder`` on the first ``limit`` samples, then :func:`transfer_from_run` (leakage
    controls with ``baseline`` ``[*input_shape]`` and ``seed``, see :func:`run_finder`).
    """
    run = run_finder(
        finder, dataset, batch_size=batch_size, limit=limit, progress=progress, method=method,
        baseline=baseline, seed=seed,
    )  # fmt: skip
    return transfer_from_run(
        finder.gated, class_pathways, dataset, run, batch_size=batch_size, baseline=baseline,
        seed=seed,
    )  # fmt: skip


def transfer_from_run(
    gated: GatedModel,
    class_pathways: ClassPathways,
    dataset: LabeledDataset,
    run: FinderRun,
    *,
    batch_size: int = 64,
    baseline: Tensor | None = None,
    seed: int = 0,
) -> TransferResult:
    """Explain the samples of ``run`` (the first ``run.labels.numel()`` of ``dataset``) with the
    class pathway of the target's prediction; samples predicted as a class without a class
    pathway are left out and counted as ``uncovered``.

    Both are summarised with :func:`~neuralpath.metrics.faithfulness.summarize` (agreement,
    accuracy, mIC, mDC, acIOU, kept fraction); ``instance_class_jaccard`` is the mean Jaccard
    index between each sample's instance pathway and its class pathway (percent). The transfer
    adds ``ablation``, the leakage keys of the class pathways (baseline ``[*input_shape]``,
    default zeros; swap partners by ``seed``) and ``transfer_specificity``: the share of these
    samples that the class pathway of another class ``c`` makes predict ``c`` (lower is better).
    """
    device = gated.device
    outcomes: list[PathwayOutcome] = []
    leaks: list[LeakageOutcome] = []
    forced: list[Tensor] = []
    transferred: list[Pathway] = []
    jaccard: list[Tensor] = []
    covered = (class_pathways.counts[run.outcome.prediction] > 0).nonzero().squeeze(1)
    if covered.numel() == 0:
        raise DataError("no sample is predicted as a class that has a class pathway")
    subset = torch.utils.data.Subset(dataset, covered.tolist())
    start = 0
    for images, _ in DataLoader(subset, batch_size=batch_size):
        rows = covered[start : start + images.shape[0]]
        images = images.to(device)
        pathway = class_pathways.for_labels(run.outcome.prediction[rows]).to(device)
        outcome, leak, hits = _measure_transfer(
            gated, class_pathways, images, pathway, baseline=baseline, seed=seed
        )
        outcomes.append(outcome)
        leaks.append(leak)
        forced.append(hits)
        cpu_pathway = pathway.to("cpu")
        transferred.append(cpu_pathway)
        jaccard.append(run.pathway.select(rows).jaccard(cpu_pathway))
        start += images.shape[0]
    specific = torch.cat(forced).float()
    transfer_summary: dict[str, Any] = {
        "method": f"{run.method}-class",
        "ablation": gated.intervention.name,
        **summarize(PathwayOutcome.cat(outcomes), Pathway.cat(transferred), run.labels[covered]),
        **summarize_leakage(LeakageOutcome.cat(leaks)),
        "transfer_specificity": float(specific.mean()) if specific.numel() else float("nan"),
        "uncovered": int(run.labels.numel() - covered.numel()),
    }
    return TransferResult(
        instance=run.summary(),
        transfer=transfer_summary,
        instance_class_jaccard=float(100.0 * torch.cat(jaccard).mean()),
    )


def _measure_transfer(
    gated: GatedModel,
    class_pathways: ClassPathways,
    images: Tensor,
    pathway: Pathway,
    *,
    baseline: Tensor | None,
    seed: int,
) -> tuple[PathwayOutcome, LeakageOutcome, Tensor]:
    """Faithfulness outcome and leakage controls of the transferred ``pathway`` on ``images``
    ``[B, *input_shape]``, and the transfer-specificity hits ``[V]`` of the samples with another
    class pathway to try (``V <= B``)."""
    outcome = pathway_outcome(gated, images, pathway)
    leak = leakage_outcome(gated, images, pathway, baseline=baseline, seed=seed, outcome=outcome)
    hits, valid = transfer_specificity_outcome(gated, images, class_pathways, seed=seed)
    return outcome, leak, hits[valid]
