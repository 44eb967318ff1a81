"""GEN-CNP (Lin et al. 2023): a trained generator predicts instance-specific binary pathways.

Finders (registered on import):

* ``gencnp``: one clean forward of the target + one generator pass -> the generator's DAQ masks
  (instance-specific sparsity). Needs :attr:`GenCNPConfig.generator` (a directory written by
  :func:`fit_gencnp` / ``neuralpath fit-gencnp``).
* ``gencnp-global``: the same scores, binarised by one global percentile at
  :attr:`GenCNPGlobalConfig.sparsity` (the fixed-sparsity ablation).

>>> generator = fit_gencnp(gated, train_set, FitConfig(epochs=3), out_dir="runs/gen")
>>> finder = GenCNPFinder(gated, generator)
>>> pathway = finder.find(images)

Training under mean ablation (dropped channels become their mean map), with the swap penalty:

>>> mean = gated.with_intervention(MeanAblation(statistics))
>>> fit_gencnp(mean, train_set, FitConfig(swap_weight=1.0), out_dir="runs/gen-mean")
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from neuralpath.errors import InputError
from neuralpath.gating import GatedModel
from neuralpath.methods.base import FinderConfig, PathwayFinder, register_finder, require
from neuralpath.methods.connect import TEST_COST, connect_pathway, rows_of
from neuralpath.methods.gencnp.checkpoint import load_generator
from neuralpath.methods.gencnp.generator import GeneratorConfig, GeneratorOutput, PathwayGenerator
from neuralpath.methods.gencnp.train import FitConfig, fit_gencnp
from neuralpath.pathway import Granularity, Pathway, check_sparsity, global_percentile
from neuralpath.targets import TargetType, resolve_target

__all__ = [
    "FitConfig",
    "GenCNPConfig",
    "GenCNPFinder",
    "GenCNPGlobalConfig",
    "GeneratorConfig",
    "GeneratorOutput",
    "PathwayGenerator",
    "fit_gencnp",
    "load_generator",
]


@dataclass(frozen=True)
class GenCNPConfig(FinderConfig):
    """Settings of ``gencnp``: ``generator``, the directory :func:`fit_gencnp` wrote (required);
    ``granularity="channel"``, the only one (Lin et al.'s generator predicts channel masks);
    ``verify_weights``: require the generator to be for these very weights (False: only its
    layers, for deliberately changed copies such as a sanity check's randomised model). The
    sparsity is the generator's own, per sample. ``connect`` **[ours]**, default False (one pass
    is the method's point): when True, a pathway that disconnects the network is widened by the
    generator's scores (:mod:`neuralpath.methods.connect`; one forward and backward more)."""

    generator: str | None = None
    granularity: Granularity = "channel"
    verify_weights: bool = True
    connect: bool = False

    def check(self) -> None:
        require(
            self.granularity == "channel",
            "granularity must be 'channel' (GEN-CNP predicts channel pathways), "
            f"got {self.granularity!r}",
        )


@dataclass(frozen=True)
class GenCNPGlobalConfig(GenCNPConfig):
    """Settings of ``gencnp-global``: :class:`GenCNPConfig`'s, plus ``sparsity=0.9`` (the other
    finders' default, so the ablation compares like with like) and ``min_per_layer``
    **[ours]**, default 1: one global threshold over channels keeps at least that many channels
    of every layer (:func:`~neuralpath.pathway.keep_per_layer`)."""

    sparsity: float = 0.9
    min_per_layer: int = 1

    def check(self) -> None:
        super().check()
        check_sparsity(self.sparsity)
        require(self.min_per_layer >= 0, f"min_per_layer must be >= 0, got {self.min_per_layer}")


class GenCNPFinder(PathwayFinder):
    """Pathways predicted by a trained :class:`PathwayGenerator` (channel granularity).

    ``sparsity=None``: the generator's own binary masks (instance-specific kept fraction);
    a float: keep the units above the global percentile of the generator's scores instead, and
    at least ``min_per_layer`` channels of every layer.
    ``target`` is only range-checked: the generator is trained to preserve the target's whole
    output distribution, so its pathway does not depend on the explained class.
    """

    name = "gencnp"

    def __init__(
        self,
        gated: GatedModel,
        generator: PathwayGenerator,
        sparsity: float | None = None,
        *,
        min_per_layer: int = GenCNPGlobalConfig.min_per_layer,
        connect: bool = False,
    ):
        super().__init__(gated)
        mine = [(s.name, s.shape) for s in generator.sites]
        theirs = [(s.name, s.shape) for s in gated.sites]
        if mine != theirs:
            raise InputError(f"the generator covers layers {mine}, the target has {theirs}")
        device = next(generator.parameters()).device
        if device != gated.device:
            raise InputError(f"the generator is on {device}, the target on {gated.device}")
        self.generator = generator.eval()
        self.sparsity = None if sparsity is None else check_sparsity(sparsity)
        self.min_per_layer = min_per_layer
        self.connect = connect
        self._cost: float | None = None

    @torch.no_grad()
    def scores(self, inputs: Tensor) -> tuple[Tensor, GeneratorOutput]:
        """Clean logits ``[B, K]`` and the generator's scores and DAQ masks ``{site: [B, C_l]}``."""
        logits, recording = self.gated.record(inputs)
        return logits, self.generator({n: a.detach() for n, a in recording.activations.items()})

    def find(self, inputs: Tensor, target: TargetType = None) -> Pathway:
        self.gated.check_inputs(inputs)
        logits, output = self.scores(self.gated.fast_layout(inputs))
        cls = resolve_target(logits, target)  # range check (see the class docstring)
        if self.sparsity is None:
            masks = {name: m > 0.5 for name, m in output.masks.items()}
            pathway = Pathway(masks, "channel", {"method": "gencnp", "sparsity": "instance"})
        else:
            pathway = global_percentile(
                output.scores, self.sparsity, "channel", min_per_layer=self.min_per_layer
            )
            pathway.metadata.update({"method": "gencnp-global"})
        if self.connect:
            found = connect_pathway(self.gated, inputs, pathway, cls, rank=rows_of(output.scores))
            pathway = found.pathway
        return pathway

    def forward_equivalents(self) -> float:
        """``1 + generator FLOPs / target FLOPs`` (counted once with ``FlopCounterMode``), + 3
        for the connectivity test when ``connect``."""
        if self._cost is None:
            example = torch.zeros(1, *self.gated.input_shape, device=self.gated.device)
            with torch.no_grad():
                with FlopCounterMode(display=False) as target_counter:
                    _, recording = self.gated.record(example)
                with FlopCounterMode(display=False) as generator_counter:
                    self.generator(dict(recording.activations))
            target_flops = max(1, target_counter.get_total_flops())
            self._cost = 1.0 + generator_counter.get_total_flops() / target_flops
        return self._cost + (TEST_COST if self.connect else 0.0)


@register_finder("gencnp", GenCNPConfig)
@register_finder("gencnp-global", GenCNPGlobalConfig)
def build_gencnp(gated: GatedModel, config: GenCNPConfig) -> GenCNPFinder:
    """GEN-CNP pathways from ``config.generator``: instance-specific (:class:`GenCNPConfig`) or
    at one global sparsity (:class:`GenCNPGlobalConfig`, the ablation)."""
    if config.generator is None:
        raise InputError(
            "gencnp needs a trained generator: pass --generator GDIR "
            "(train one with `neuralpath fit-gencnp`)"
        )
    loaded = load_generator(config.generator, gated, same_weights=config.verify_weights)
    if isinstance(config, GenCNPGlobalConfig):
        return GenCNPFinder(
            gated, loaded.generator, config.sparsity, min_per_layer=config.min_per_layer,
            connect=config.connect,
        )  # fmt: skip
    return GenCNPFinder(gated, loaded.generator, connect=config.connect)
