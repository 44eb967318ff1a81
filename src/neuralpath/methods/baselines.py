"""Baseline pathways the critical-pathway paper compares against (spec §2).

* ``greedy`` (:class:`GreedyTaylor`): iterative Taylor pruning. Starting from the full network,
  each step re-scores the remaining units with ``|a · ∂y_c/∂a|`` *in the pruned network* and
  drops the lowest-scoring ones (one threshold over all layers), removing the same fraction of
  the remaining units per step so that the target sparsity is reached after ``steps`` steps.
* ``random`` (:class:`RandomPathway`): per layer, a uniformly random set of
  ``round((1 - sparsity) · N_l)`` units (at least one) per sample, drawn from the seed and the
  sample (independent of the batch split).
* ``active`` (:class:`ActivePathway`): exactly the units with a positive activation (``a > 0``) on
  the unmasked forward; a channel is kept when *any* of its H×W elements is positive (an MLP
  neuron or head when it is at any token, a head at a token when any of its dimensions is
  [ours]). Its sparsity is whatever the input gives; it has no ``sparsity`` setting.

Their defaults (:class:`GreedyConfig`, :class:`RandomConfig`, :class:`ActiveConfig`) are the
critical pathways': element units at sparsity 0.9, as Khakzar et al. compare them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from neuralpath.gating import GatedModel
from neuralpath.methods.base import (
    FinderConfig,
    PathwayFinder,
    make_config,
    register_finder,
    require,
)
from neuralpath.methods.critical import taylor_scores
from neuralpath.pathway import (
    Granularity,
    Pathway,
    check_sparsity,
    keep_per_layer,
    per_layer_topk,
)
from neuralpath.seeding import sample_seeds
from neuralpath.targets import TargetType, resolve_target


def _unit_shape(gated: GatedModel, granularity: Granularity) -> dict[str, tuple[int, ...]]:
    """Per-sample mask shape of each site at ``granularity``."""
    return {s.name: s.mask_shape(granularity) for s in gated.sites}


@dataclass(frozen=True)
class GreedyConfig(FinderConfig):
    """Settings of ``greedy`` (:class:`GreedyTaylor`).

    ``sparsity=0.9``, ``granularity="element"``: the setting Khakzar et al. compare this baseline
    in (that of :class:`~neuralpath.methods.critical.CriticalConfig`). ``steps``: pruning steps
    (10). ``min_per_layer`` **[ours]**, default 1: after each step a layer that would keep fewer
    units keeps its highest-scoring ones, so pruning never empties a layer (0: never re-added).
    """

    sparsity: float = 0.9
    granularity: Granularity = "element"
    steps: int = 10
    min_per_layer: int = 1

    def check(self) -> None:
        check_sparsity(self.sparsity)
        require(self.steps >= 1, f"steps must be a positive integer, got {self.steps!r}")
        require(self.min_per_layer >= 0, f"min_per_layer must be >= 0, got {self.min_per_layer}")


@register_finder("greedy", GreedyConfig)
class GreedyTaylor(PathwayFinder):
    """``greedy``: Taylor pruning, re-scoring the pruned network after each of ``steps`` steps.

    After step ``t`` (1..T) the number of dropped units is ``round(N · (1 - (1 - s)^(t/T)))``:
    a constant fraction of the remaining units goes each step. Like
    :func:`~neuralpath.pathway.global_percentile`, units tied with the step's threshold are
    dropped too, and each layer keeps ``min_per_layer`` units
    (:func:`~neuralpath.pathway.keep_per_layer`). Cost: ``steps`` forward + backward passes.
    """

    name: ClassVar[str] = "greedy"

    def __init__(self, gated: GatedModel, config: GreedyConfig | None = None, **changes: Any):
        super().__init__(gated)
        self.config = make_config(GreedyConfig, config, changes)
        self.sparsity = self.config.sparsity

    def drop_counts(self, total: int) -> list[int]:
        """Units dropped after each step, for ``total`` units per sample."""
        kept, steps = 1.0 - self.config.sparsity, self.config.steps
        return [round(total * (1.0 - kept ** (t / steps))) for t in range(1, steps + 1)]

    def find(self, inputs: Tensor, target: TargetType = None) -> Pathway:
        cfg = self.config
        self.gated.check_inputs(inputs)
        shapes = _unit_shape(self.gated, cfg.granularity)
        batch = inputs.shape[0]
        sizes = [int(torch.Size(shape).numel()) for shape in shapes.values()]
        ones = {
            n: torch.ones((batch, *s), dtype=torch.bool, device=inputs.device)
            for n, s in shapes.items()
        }
        kept = Pathway(ones, cfg.granularity)
        cls: TargetType = target
        for drop in self.drop_counts(sum(sizes)):
            if drop == 0:
                continue
            scores, cls = taylor_scores(self.gated, inputs, cls, kept, cfg.granularity)
            flat = torch.cat([scores[n].reshape(batch, -1) for n in shapes], dim=1)
            flat = flat.masked_fill(~kept.flatten(), float("-inf"))  # dropped before: never back
            threshold = torch.kthvalue(flat, drop, dim=1).values
            split = dict(zip(shapes, flat.split(sizes, dim=1), strict=True))
            survive = {n: part > threshold[:, None] for n, part in split.items()}
            kept = keep_per_layer(
                Pathway(
                    {n: m.reshape(batch, *shapes[n]) for n, m in survive.items()}, cfg.granularity
                ),
                {n: part.reshape(batch, *shapes[n]) for n, part in split.items()},
                cfg.min_per_layer,
            )
        metadata = {"method": self.name, "sparsity": cfg.sparsity, "steps": cfg.steps}
        return Pathway(dict(kept), cfg.granularity, metadata)

    def forward_equivalents(self) -> float:
        return 3.0 * self.config.steps


@dataclass(frozen=True)
class RandomConfig(FinderConfig):
    """Settings of ``random`` (:class:`RandomPathway`): ``sparsity=0.9`` and
    ``granularity="element"`` as the critical pathways it is compared with; ``seed`` of the
    per-sample draws. Every layer keeps at least one unit (per-layer draws)."""

    sparsity: float = 0.9
    granularity: Granularity = "element"
    seed: int = 0

    def check(self) -> None:
        check_sparsity(self.sparsity)


@register_finder("random", RandomConfig)
class RandomPathway(PathwayFinder):
    """``random``: ``round((1 - sparsity) · N_l)`` random units of each layer (at least one).

    Each sample's units are drawn from a ``torch.Generator`` seeded with ``seed`` and a hash of
    the sample's values (:func:`~neuralpath.seeding.sample_seed`): a sample gets the same pathway
    whichever batch it stands in (batch = loop), different samples independent draws [ours]. The
    pathway does not depend on ``target``; a given ``target`` is still range-checked like every
    finder's (one forward); with ``target=None`` no forward is run.
    """

    name: ClassVar[str] = "random"

    def __init__(self, gated: GatedModel, config: RandomConfig | None = None, **changes: Any):
        super().__init__(gated)
        self.config = make_config(RandomConfig, config, changes)
        self.sparsity = self.config.sparsity

    def find(self, inputs: Tensor, target: TargetType = None) -> Pathway:
        self.gated.check_inputs(inputs)
        if target is not None:
            with torch.no_grad():
                resolve_target(self.gated.forward(inputs), target)
        cfg = self.config
        shapes = _unit_shape(self.gated, cfg.granularity)
        draws: dict[str, list[Tensor]] = {n: [] for n in shapes}
        for sample_seed in sample_seeds(cfg.seed, inputs):
            generator = torch.Generator().manual_seed(sample_seed)
            for name, shape in shapes.items():
                draws[name].append(torch.rand(shape, generator=generator))
        scores = {n: torch.stack(rows).to(inputs.device) for n, rows in draws.items()}
        pathway = per_layer_topk(scores, cfg.sparsity, cfg.granularity)
        pathway.metadata.update({"method": self.name, "seed": cfg.seed})
        return pathway

    def forward_equivalents(self) -> float:
        return 0.0


@dataclass(frozen=True)
class ActiveConfig(FinderConfig):
    """Settings of ``active`` (:class:`ActivePathway`): ``granularity="element"``, as the
    critical pathways it is compared with (a channel counts as active when any element is)."""

    granularity: Granularity = "element"


@register_finder("active", ActiveConfig)
class ActivePathway(PathwayFinder):
    """``active``: keep exactly the units with ``a > 0`` (channels: any element ``> 0``)."""

    name: ClassVar[str] = "active"

    def __init__(self, gated: GatedModel, config: ActiveConfig | None = None, **changes: Any):
        super().__init__(gated)
        self.config = make_config(ActiveConfig, config, changes)

    @torch.no_grad()
    def find(self, inputs: Tensor, target: TargetType = None) -> Pathway:
        logits, recording = self.gated.record(inputs)
        resolve_target(logits, target)  # validates target like every other finder
        masks = {}
        for site in self.gated.sites:
            positive = recording.activations[site.name] > 0
            if site.feature_dims:  # a head at a token is active when any dimension is
                positive = positive.flatten(-site.feature_dims).any(dim=-1)
            if self.config.granularity == "channel":
                positive = site.to_channels(positive.long()) > 0
            masks[site.name] = positive
        return Pathway(masks, self.config.granularity, {"method": self.name, "rule": "active"})

    def forward_equivalents(self) -> float:
        return 1.0
