"""Faithfulness and class relevance of pathways (spec §7).

With ``p = softmax(H(x))_c`` and ``p' = softmax(H_P(x))_c`` for the explained class ``c``:

* agreement: fraction of samples where ``H_P`` predicts what ``H`` predicts (higher is better);
* accuracy: top-1 accuracy of ``H_P`` against labels (higher is better);
* mDC: ``100 * mean(max(0, p - p') / p)`` (lower is better);
* mIC: ``100 * mean(max(0, p' - p))`` (higher is better), with ``ic_fraction`` = share of ``p' > p``;
* acIOU: per class, mean pairwise Jaccard of its instance pathways; then mean over classes
  (higher = more class-relevant);
* kept fraction: mean and standard deviation of the fraction of units kept;
* ``disconnected`` (share, lower is better) and ``disconnected_n``: samples whose pathway model's
  output does not depend on the input (:mod:`neuralpath.metrics.connectivity`);
  ``empty_layer_n``: samples whose pathway keeps no unit of some layer.

A disconnected sample predicts the same for every input, so it is never counted faithful
[ours]: it scores as if ``H_P`` had lost the class (``p' = 0``: no agreement, no accuracy, no
increase, a full decrease). Connected samples score as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from neuralpath.errors import ShapeError
from neuralpath.gating import GatedModel
from neuralpath.metrics.connectivity import empty_layers, input_dependence
from neuralpath.pathway import Pathway, repaired_samples
from neuralpath.targets import TargetType, resolve_target, select_logit

HIGHER_IS_BETTER: dict[str, bool] = {
    "agreement": True,
    "accuracy": True,
    "mic": True,
    "ic_fraction": True,
    "mdc": False,
    "aciou": True,
    "disconnected": False,
}


@dataclass(frozen=True)
class PathwayOutcome:
    """Per-sample outcome of running the pathway model, all ``[B]`` tensors on the CPU."""

    target: Tensor  # class explained
    prediction: Tensor  # H's prediction
    pathway_prediction: Tensor  # H_P's prediction
    confidence: Tensor  # p
    pathway_confidence: Tensor  # p'
    kept_fraction: Tensor
    connected: Tensor  # the target logit of H_P depends on the input
    empty_layer: Tensor  # the pathway keeps no unit of some layer
    repaired: Tensor  # the connecting repair widened the pathway (neuralpath.methods.connect)

    @classmethod
    def cat(cls, outcomes: list[PathwayOutcome]) -> PathwayOutcome:
        if not outcomes:
            raise ShapeError("no outcomes to concatenate")
        fields = cls.__dataclass_fields__
        return cls(**{f: torch.cat([getattr(o, f) for o in outcomes]) for f in fields})


@torch.no_grad()
def pathway_outcome(
    gated: GatedModel, inputs: Tensor, pathway: Pathway, target: TargetType = None, seed: int = 0
) -> PathwayOutcome:
    """Run ``H`` and ``H_P`` on ``inputs`` ``[B, ...]`` and collect confidences and predictions,
    and whether each pathway connects (one forward and backward more; ``seed`` draws the probes
    of :func:`~neuralpath.metrics.connectivity.input_dependence`)."""
    logits = gated.forward(inputs)
    path_logits = gated.forward(inputs, pathway)
    cls = resolve_target(logits, target)
    return PathwayOutcome(
        target=cls.cpu(),
        prediction=logits.argmax(1).cpu(),
        pathway_prediction=path_logits.argmax(1).cpu(),
        confidence=select_logit(logits.softmax(1), cls).float().cpu(),
        pathway_confidence=select_logit(path_logits.softmax(1), cls).float().cpu(),
        kept_fraction=pathway.kept_fraction().float().cpu(),
        connected=input_dependence(gated, inputs, pathway, cls, seed=seed),
        empty_layer=empty_layers(pathway),
        repaired=repaired_samples(pathway),
    )


def mean_decrease_in_confidence(p: Tensor, p_path: Tensor) -> float:
    """mDC in percent: ``100 * mean(max(0, p - p') / p)``; lower is better."""
    return float(100.0 * ((p - p_path).clamp_min(0) / p.clamp_min(1e-12)).mean())


def mean_increase_in_confidence(p: Tensor, p_path: Tensor) -> float:
    """mIC in percent: ``100 * mean(max(0, p' - p))``; higher is better."""
    return float(100.0 * (p_path - p).clamp_min(0).mean())


def average_class_iou(pathway: Pathway, classes: Tensor) -> float:
    """acIOU in percent: mean over classes of the mean pairwise Jaccard within the class.

    Classes with fewer than two instances are skipped; NaN when no class has two.
    """
    classes = torch.as_tensor(classes).to(pathway.device)
    if classes.shape != (pathway.batch_size,):
        raise ShapeError(f"classes must be [{pathway.batch_size}], got {list(classes.shape)}")
    per_class = []
    for c in classes.unique():
        members = (classes == c).nonzero().squeeze(1)
        n = members.numel()
        if n < 2:
            continue
        pairwise = pathway.select(members).pairwise_jaccard()
        off_diagonal = pairwise.sum() - pairwise.diagonal().sum()
        per_class.append(off_diagonal / (n * (n - 1)))
    return float(100.0 * torch.stack(per_class).mean()) if per_class else float("nan")


def summarize(
    outcome: PathwayOutcome, pathway: Pathway | None, labels: Tensor | None
) -> dict[str, float]:
    """The faithfulness keys every finder reports (``find``/``compare`` JSON contract).

    acIOU groups the pathways by the explained class (``outcome.target``). Disconnected samples
    count as unfaithful (see the module docstring).
    """
    connected = outcome.connected
    p = outcome.confidence
    p_path = torch.where(connected, outcome.pathway_confidence, torch.zeros_like(p))
    agrees = (outcome.pathway_prediction == outcome.prediction) & connected
    result = {
        "n": int(p.numel()),
        "agreement": float(agrees.float().mean()),
        "accuracy": float("nan"),
        "target_accuracy": float("nan"),
        "mic": mean_increase_in_confidence(p, p_path),
        "ic_fraction": float((p_path > p).float().mean()),
        "mdc": mean_decrease_in_confidence(p, p_path),
        "aciou": average_class_iou(pathway, outcome.target)
        if pathway is not None
        else float("nan"),
        "kept_fraction_mean": float(outcome.kept_fraction.mean()),
        "kept_fraction_std": float(outcome.kept_fraction.std(unbiased=False)),
        "disconnected": float((~connected).float().mean()),
        "disconnected_n": int((~connected).sum()),
        "empty_layer_n": int(outcome.empty_layer.sum()),
        "repaired_n": int(outcome.repaired.sum()),
    }
    if labels is not None:
        labels = torch.as_tensor(labels).cpu()
        correct = (outcome.pathway_prediction == labels) & connected
        result["accuracy"] = float(correct.float().mean())
        result["target_accuracy"] = float((outcome.prediction == labels).float().mean())
    return result
