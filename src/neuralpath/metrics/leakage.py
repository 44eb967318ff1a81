"""Leakage controls: does the pathway model compute its answer from the input, or does the mask
carry it? (spec §10). Each is reported next to the faithfulness numbers it qualifies.

For a sample ``x`` explained for class ``c`` with pathway ``P``, ``H_P`` the pathway model under
the gated model's intervention, ``p'(·)`` its softmax probability of ``c`` and ``b`` a baseline
input (default: the reference set's mean image):

* ``blank_agreement``: share of samples with ``argmax H_P(b) = c`` (lower is better: high means
  the mask alone spells the class); ``blank_agreement_plain``: the same for the plain model,
  ``argmax H(b) = c`` (≈ the share of the commonest class; the level to compare with).
* swap test: each sample ``i`` is paired with a sample ``j`` of the same batch whose explained
  class differs (a seeded derangement [ours]: ``j`` is the next such sample in a seeded random
  order) and run through ``j``'s pathway: ``swap_follows_input`` = share predicting ``c_i``
  (higher is better), ``swap_follows_mask`` = share predicting ``c_j`` (lower is better).
  Samples with no partner of another class in their batch are left out (``swap_n`` counts the
  pairs).
* ``input_attributable_confidence``: mean of ``p'(x) − p'(b)`` (higher is better).
* ``transfer_specificity`` (class pathways): the class pathway of a class ``c`` other than the
  sample's prediction ``k`` (seeded per sample) is applied; the share predicted as ``c``
  (lower is better: a class pathway should explain class ``c``, not force it).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from neuralpath.errors import InputError, ShapeError
from neuralpath.gating import GatedModel
from neuralpath.metrics.connectivity import input_dependence
from neuralpath.metrics.faithfulness import PathwayOutcome
from neuralpath.pathway import ClassPathways, Pathway, repaired_samples
from neuralpath.seeding import sample_seeds
from neuralpath.targets import TargetType, resolve_target, select_logit

HIGHER_IS_BETTER: dict[str, bool] = {
    "blank_agreement": False,
    "swap_follows_input": True,
    "swap_follows_mask": False,
    "input_attributable_confidence": True,
    "transfer_specificity": False,
    "disconnected": False,
}
LEAK_WARNING_THRESHOLD = 0.2
"""``swap_follows_mask`` above which a run is announced as leaking (``leak_warning``) [ours]."""


@dataclass(frozen=True)
class LeakageOutcome:
    """Per-sample leakage results, all ``[B]`` CPU tensors (swap entries valid where
    ``swap_valid``)."""

    target: Tensor
    blank_prediction: Tensor
    blank_prediction_plain: Tensor
    pathway_confidence: Tensor
    blank_confidence: Tensor
    swap_valid: Tensor
    swap_follows_input: Tensor
    swap_follows_mask: Tensor
    connected: Tensor
    repaired: Tensor  # the connecting repair widened the pathway (neuralpath.methods.connect)

    @classmethod
    def cat(cls, outcomes: list[LeakageOutcome]) -> LeakageOutcome:
        if not outcomes:
            raise ShapeError("no leakage outcomes to concatenate")
        return cls(
            **{f.name: torch.cat([getattr(o, f.name) for o in outcomes]) for f in fields(cls)}
        )


def baseline_batch(gated: GatedModel, baseline: Tensor | None, batch: int) -> Tensor:
    """``baseline`` ``[*input_shape]`` (None: zeros, the data-set mean in normalised space)
    repeated ``batch`` times on the model's device."""
    shape = gated.input_shape
    if baseline is None:
        return torch.zeros(batch, *shape, device=gated.device)
    if tuple(baseline.shape) != tuple(shape):
        raise ShapeError(f"baseline must have shape {list(shape)}, got {list(baseline.shape)}")
    return baseline.to(gated.device).unsqueeze(0).expand(batch, *shape).contiguous()


def swap_partners(classes: Tensor, seed: int = 0) -> tuple[Tensor, Tensor]:
    """For each sample, the next sample of a different class in a seeded random order.

    ``classes``: ``[B]``. Returns ``(partner [B] long, valid [B] bool)``; invalid rows (no
    sample of another class) point at themselves.
    """
    batch = classes.numel()
    generator = torch.Generator().manual_seed(int(seed))
    rank = torch.argsort(torch.randperm(batch, generator=generator))
    classes = classes.cpu()
    distance = (rank.view(1, -1) - rank.view(-1, 1)) % batch
    other = classes.view(1, -1) != classes.view(-1, 1)
    distance = torch.where(other, distance, torch.full_like(distance, batch))
    partner = distance.argmin(dim=1)
    valid = other.any(dim=1)
    return torch.where(valid, partner, torch.arange(batch)), valid


@torch.no_grad()
def leakage_outcome(
    gated: GatedModel,
    inputs: Tensor,
    pathway: Pathway,
    target: TargetType = None,
    *,
    baseline: Tensor | None = None,
    seed: int = 0,
    outcome: PathwayOutcome | None = None,
) -> LeakageOutcome:
    """Blank and swap controls for ``inputs`` ``[B, ...]`` and their ``pathway`` (``[B, ...]``
    per site); see the module docstring. ``baseline``: ``[*input_shape]``, default zeros.
    ``outcome``: the :func:`~neuralpath.metrics.faithfulness.pathway_outcome` of the same inputs
    and pathway, whose explained class, pathway confidence, connectivity and repairs are reused (two
    forwards and a backward fewer); ``target`` must then be None."""
    if pathway.batch_size != inputs.shape[0]:
        raise ShapeError(
            f"pathway has batch size {pathway.batch_size}, inputs have {inputs.shape[0]}"
        )
    batch = inputs.shape[0]
    if outcome is None:
        cls = resolve_target(gated.forward(inputs), target)
        path_probs = gated.forward(inputs, pathway).softmax(1)
        confidence = select_logit(path_probs, cls).float().cpu()
        connected = input_dependence(gated, inputs, pathway, cls, seed=seed)
        repaired = repaired_samples(pathway)
    elif target is not None:
        raise InputError("give the target to pathway_outcome, not beside its outcome")
    else:
        cls, confidence = outcome.target.to(inputs.device), outcome.pathway_confidence
        connected, repaired = outcome.connected, outcome.repaired
    blank = baseline_batch(gated, baseline, batch)
    plain_blank = gated.forward(blank[:1]).argmax(1).expand(batch)
    blank_probs = gated.forward(blank, pathway).softmax(1)
    partner, valid = swap_partners(cls, seed)
    swapped = gated.forward(inputs, pathway.select(partner.to(pathway.device))).argmax(1)
    return LeakageOutcome(
        target=cls.cpu(),
        blank_prediction=blank_probs.argmax(1).cpu(),
        blank_prediction_plain=plain_blank.cpu(),
        pathway_confidence=confidence,
        blank_confidence=select_logit(blank_probs, cls).float().cpu(),
        swap_valid=valid,
        swap_follows_input=(swapped == cls).cpu(),
        swap_follows_mask=(swapped == cls[partner.to(cls.device)]).cpu(),
        connected=connected,
        repaired=repaired,
    )


def summarize_leakage(outcome: LeakageOutcome) -> dict[str, float | int]:
    """The leakage keys of the ``find``/``compare`` JSON contract (see the module docstring)."""
    valid = outcome.swap_valid
    pairs = int(valid.sum())

    def share(flags: Tensor) -> float:
        return float(flags[valid].float().mean()) if pairs else float("nan")

    return {
        "blank_agreement": float((outcome.blank_prediction == outcome.target).float().mean()),
        "blank_agreement_plain": float(
            (outcome.blank_prediction_plain == outcome.target).float().mean()
        ),
        "swap_follows_input": share(outcome.swap_follows_input),
        "swap_follows_mask": share(outcome.swap_follows_mask),
        "swap_n": pairs,
        "input_attributable_confidence": float(
            (outcome.pathway_confidence - outcome.blank_confidence).mean()
        ),
        "disconnected": float((~outcome.connected.bool()).float().mean()),
        "disconnected_n": int((~outcome.connected.bool()).sum()),
        "repaired_n": int(outcome.repaired.bool().sum()),
    }


def leak_warning(summary: dict[str, object], what: str) -> str | None:
    """A one-line warning when ``summary``'s pathways follow the mask too often, else None."""
    follows = summary.get("swap_follows_mask")
    if isinstance(follows, float) and follows > LEAK_WARNING_THRESHOLD:
        ablation = summary.get("ablation", "zero")
        hint = "try --ablation mean" if ablation == "zero" else "compare another --ablation"
        return (
            f"{what}: the pathway model follows the mask, not the input, for {follows:.0%} of "
            f"swapped samples under {ablation} ablation (threshold {LEAK_WARNING_THRESHOLD:.0%}): "
            f"its faithfulness measures the mask; {hint}"
        )
    return None


def other_classes(predicted: Tensor, available: Tensor, seed: int, inputs: Tensor) -> Tensor:
    """For each sample, a class ``!= predicted`` among ``available`` (bool ``[K]``), drawn from a
    hash of the sample and ``seed`` (batch-independent). ``-1`` where there is none."""
    choices = available.nonzero().squeeze(1).cpu()
    out = torch.full_like(predicted.cpu(), -1)
    for row, sample_seed in enumerate(sample_seeds(seed, inputs)):
        candidates = choices[choices != predicted[row].cpu()]
        if candidates.numel():
            out[row] = candidates[sample_seed % candidates.numel()]
    return out


@torch.no_grad()
def transfer_specificity_outcome(
    gated: GatedModel, inputs: Tensor, class_pathways: ClassPathways, *, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``(forced [B] bool, valid [B] bool)``: whether the pathway model with the class pathway of
    another class ``c`` (see :func:`other_classes`) predicts ``c``."""
    if class_pathways.num_classes < 2:
        raise InputError("transfer specificity needs class pathways of at least two classes")
    predicted = gated.forward(inputs).argmax(1)
    other = other_classes(predicted, class_pathways.counts > 0, seed, inputs)
    valid = other >= 0
    chosen = torch.where(valid, other, predicted.cpu())
    if not bool(valid.any()):
        return torch.zeros_like(valid), valid
    rows = valid.nonzero().squeeze(1)
    pathway = class_pathways.for_labels(chosen[rows]).to(gated.device)
    forced = gated.forward(inputs[rows.to(inputs.device)], pathway).argmax(1).cpu() == chosen[rows]
    result = torch.zeros_like(valid)
    result[rows] = forced
    return result, valid
