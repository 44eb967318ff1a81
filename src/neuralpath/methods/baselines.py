"""Baseline pathways the critical-pathway paper compares against (spec §2).

* ``greedy`` (:class:`GreedyTaylor`): iterative Taylor pruning. Starting from the full network,
  each step re-scores the remaining units with ``|a · ∂y_c/∂a|`` *in the pruned network* and
  drops the lowest-scoring ones (one threshold over all layers), removing the same fraction of
  the remaining units per step so that the target sparsity is reached after ``steps`` steps.
* ``random`` (:class:`RandomPathway`): per layer, a uniformly random set of
  ``round((1 - sparsity) · N_l)`` units (at least one) per sample, drawn from the seed and the
  sample (independent of the batch split).
* ``active`` (:class:`ActivePathway`): exactly the units with a positive activation (``a > 0``) on
  the unmasked forward; a channel is kept when *any* of its H×W elements is positive. Its sparsity
  is whatever the input gives; the ``sparsity`` option is ignored.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from neuralpath.errors import InputError
from neuralpath.gating import GatedModel
from neuralpath.methods.base import FinderOptions, PathwayFinder, register_finder
from neuralpath.methods.critical import check_granularity, taylor_scores
from neuralpath.pathway import Granularity, Pathway, check_sparsity, per_layer_topk
from neuralpath.seeding import sample_seeds
from neuralpath.targets import TargetType, resolve_target


def _unit_shape(gated: GatedModel, granularity: Granularity) -> dict[str, tuple[int, ...]]:
    """Per-sample mask shape of each site at ``granularity``."""
    return {s.name: s.shape if granularity == "element" else (s.units,) for s in gated.sites}


class GreedyTaylor(PathwayFinder):
    """``greedy``: Taylor pruning, re-scoring the pruned network after each of ``steps`` steps.

    After step ``t`` (1..T) the number of dropped units is ``round(N · (1 - (1 - s)^(t/T)))``:
    a constant fraction of the remaining units goes each step. Like
    :func:`~neuralpath.pathway.global_percentile`, units tied with the step's threshold are
    dropped too. Cost: ``steps`` forward + backward passes.
    """

    name: ClassVar[str] = "greedy"

    def __init__(
        self,
        gated: GatedModel,
        *,
        sparsity: float = 0.9,
        granularity: Granularity = "element",
        steps: int = 10,
    ):
        super().__init__(gated)
        self.sparsity = check_sparsity(sparsity)
        self.granularity = check_granularity(granularity)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise InputError(f"steps must be a positive integer, got {steps!r}")
        self.steps = steps

    def drop_counts(self, total: int) -> list[int]:
        """Units dropped after each step, for ``total`` units per sample."""
        kept = 1.0 - self.sparsity
        return [round(total * (1.0 - kept ** (t / self.steps))) for t in range(1, self.steps + 1)]

    def find(self, inputs: Tensor, target: TargetType = None) -> Pathway:
        self.gated.check_inputs(inputs)
        shapes = _unit_shape(self.gated, self.granularity)
        batch = inputs.shape[0]
        sizes = [int(torch.Size(shape).numel()) for shape in shapes.values()]
        kept = {
            n: torch.ones((batch, *shape), dtype=torch.bool, device=inputs.device)
            for n, shape in shapes.items()
        }
        cls: TargetType = target
        for drop in self.drop_counts(sum(sizes)):
            if drop == 0:
                continue
            scores, cls = taylor_scores(self.gated, inputs, cls, kept, self.granularity)
            flat = torch.cat([scores[n].reshape(batch, -1) for n in shapes], dim=1)
            alive = torch.cat([kept[n].reshape(batch, -1) for n in shapes], dim=1)
            flat = flat.masked_fill(~alive, float("-inf"))
            threshold = torch.kthvalue(flat, drop, dim=1).values
            survive = flat > threshold[:, None]
            kept = {
                n: part.reshape(batch, *shapes[n])
                for n, part in zip(shapes, survive.split(sizes, dim=1), strict=True)
            }
        metadata = {"method": self.name, "sparsity": self.sparsity, "steps": self.steps}
        return Pathway(kept, self.granularity, metadata)

    def forward_equivalents(self) -> float:
        return 3.0 * self.steps


class RandomPathway(PathwayFinder):
    """``random``: ``round((1 - sparsity) · N_l)`` random units of each layer (at least one).

    Each sample's units are drawn from a ``torch.Generator`` seeded with ``seed`` and a hash of
    the sample's values (:func:`~neuralpath.seeding.sample_seed`): a sample gets the same pathway
    whichever batch it stands in (batch = loop), different samples independent draws [ours]. The
    pathway does not depend on ``target``; a given ``target`` is still range-checked like every
    finder's (one forward); with ``target=None`` no forward is run.
    """

    name: ClassVar[str] = "random"

    def __init__(
        self,
        gated: GatedModel,
        *,
        sparsity: float = 0.9,
        granularity: Granularity = "element",
        seed: int = 0,
    ):
        super().__init__(gated)
        self.sparsity = check_sparsity(sparsity)
        self.granularity = check_granularity(granularity)
        self.seed = seed

    def find(self, inputs: Tensor, target: TargetType = None) -> Pathway:
        self.gated.check_inputs(inputs)
        if target is not None:
            with torch.no_grad():
                resolve_target(self.gated.forward(inputs), target)
        shapes = _unit_shape(self.gated, self.granularity)
        draws: dict[str, list[Tensor]] = {n: [] for n in shapes}
        for sample_seed in sample_seeds(self.seed, inputs):
            generator = torch.Generator().manual_seed(sample_seed)
            for name, shape in shapes.items():
                draws[name].append(torch.rand(shape, generator=generator))
        scores = {n: torch.stack(rows).to(inputs.device) for n, rows in draws.items()}
        pathway = per_layer_topk(scores, self.sparsity, self.granularity)
        pathway.metadata.update({"method": self.name, "seed": self.seed})
        return pathway

    def forward_equivalents(self) -> float:
        return 0.0


class ActivePathway(PathwayFinder):
    """``active``: keep exactly the units with ``a > 0`` (channels: any element ``> 0``)."""

    name: ClassVar[str] = "active"

    def __init__(self, gated: GatedModel, *, granularity: Granularity = "element"):
        super().__init__(gated)
        self.granularity = check_granularity(granularity)

    @torch.no_grad()
    def find(self, inputs: Tensor, target: TargetType = None) -> Pathway:
        logits, recording = self.gated.record(inputs)
        resolve_target(logits, target)  # validates target like every other finder
        masks = {}
        for name, activation in recording.activations.items():
            positive = activation > 0
            if self.granularity == "channel" and positive.dim() > 2:
                positive = positive.flatten(2).any(dim=2)
            masks[name] = positive
        return Pathway(masks, self.granularity, {"method": self.name, "rule": "active"})

    def forward_equivalents(self) -> float:
        return 1.0


@register_finder("greedy")
def _build_greedy(gated: GatedModel, options: FinderOptions) -> PathwayFinder:
    settings = options.settings_for("greedy", ("steps",))
    return GreedyTaylor(
        gated, sparsity=options.sparsity, granularity=options.granularity, **settings
    )


@register_finder("random")
def _build_random(gated: GatedModel, options: FinderOptions) -> PathwayFinder:
    options.settings_for("random", ())
    return RandomPathway(
        gated, sparsity=options.sparsity, granularity=options.granularity, seed=options.seed
    )


@register_finder("active")
def _build_active(gated: GatedModel, options: FinderOptions) -> PathwayFinder:
    options.settings_for("active", ())
    return ActivePathway(gated, granularity=options.granularity)
