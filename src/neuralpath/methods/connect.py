"""Connecting repair **[ours]**: widen a pathway that disconnects the network until it does not.

A pathway *disconnects* the network for a sample when its pathway model's explained logit does
not depend on the input (:mod:`neuralpath.metrics.connectivity`): an empty layer, a layer kept to
a channel or two that passes nothing (a dead end), kept channels on either side of a depthwise
conv that share no group, or units that saturate under the intervention. Such a pathway predicts
the same class for every image, so it explains nothing about its sample.

The repair asks for more than the report does: a sample counts as connected when the gradient of
its explained logit is non-zero *at the sample itself* (``probe_scales=()``, the first test of
:func:`~neuralpath.metrics.connectivity.input_dependence`). A pathway whose chain is live
elsewhere but whose kept units are all inactive at this input passes nothing of *this* input
either (its output is locally constant and its Pathway Gradient an all-zero map), so it is
widened too; a repaired pathway is then never reported disconnected.

:func:`connect_pathway` repairs those samples and leaves every connected sample exactly as it
was. For a disconnected sample it raises a per-layer floor: every layer keeps at least its
``floor`` highest-ranked units (:func:`~neuralpath.pathway.keep_per_layer`, on top of what the
pathway already keeps), with ``floor = growth^k · max(1, min_per_layer)`` for ``k = 1, 2, ...``,
until the sample connects, then bisects between the last floor that failed and the first that
passed, so the floor kept is the smallest one found (only tested floors are kept). Thin layers
(the usual cause) are widened first and most; wide layers are touched only when the floor passes
what they already keep. The floor stops growing once it covers every layer (the whole network);
a sample the whole network cannot connect (a model whose gradient is zero at that input) keeps
its original pathway.

Units are ranked by the given ``rank`` (a critical-pathway finder's own scores), else by their
first-order contribution ``|a · ∂y_c/∂a|`` in the unmasked network (NeuronMCT's score); either is
computed for the disconnected samples only. Each widened sample records its final floor in the pathway's
``metadata["connect_floor"]`` (one integer per sample, 0 where nothing was added), which the
summaries count as ``repaired_n``. Cost: one forward and backward of ``H_P`` per batch (the
test), plus, for disconnected samples only, one scoring pass and one test per floor tried (about
``2 log2(floor)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from neuralpath.errors import InputError
from neuralpath.gating import GatedModel
from neuralpath.metrics.connectivity import input_dependence
from neuralpath.pathway import CONNECT_FLOOR, Granularity, Pathway, keep_per_layer

GROWTH = 2
"""Factor by which the per-layer floor grows at each step [ours]: a 512-channel layer is covered
after 9 steps, and a thin layer gets a few more units at a time."""

TEST_COST = 3.0
"""Forward-equivalents of the connectivity test a finder runs on every batch when it repairs
(one forward and one backward of the pathway model); repairs themselves are not counted."""


class Connection(NamedTuple):
    """The repaired pathway ``[B, ...]`` and whether each sample now connects (``[B]`` bool, CPU)."""

    pathway: Pathway
    connected: Tensor


Ranker = Callable[[Tensor], Mapping[str, Tensor]]
"""Unit ranks of some samples: row indices ``[R]`` (long, CPU) -> ``{site: [R, ...]}`` shaped like
the pathway's masks of those rows; higher is kept first."""


def _rows(scores: Mapping[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
    return {name: s[rows.to(s.device)] for name, s in scores.items()}


def rows_of(scores: Mapping[str, Tensor]) -> Ranker:
    """A :data:`Ranker` reading the rows of ``scores`` ``{site: [B, ...]}`` computed already."""
    return lambda rows: _rows(scores, rows)


def connect_pathway(
    gated: GatedModel,
    inputs: Tensor,
    pathway: Pathway,
    classes: Tensor,
    *,
    rank: Ranker | None = None,
    growth: int = GROWTH,
    probe_scales: tuple[float, ...] = (),
    connected: Tensor | None = None,
) -> Connection:
    """Widen the samples of ``pathway`` that disconnect the network (see the module docstring).

    ``inputs`` ``[B, *gated.input_shape]``; ``pathway`` binary, ``[B, ...]`` per site; ``classes``
    ``[B]`` the explained logits. ``rank``: the unit ranks of given samples (None: Taylor
    scores of the unmasked network). ``connected``: ``[B]`` bool, when the caller has already
    tested the pathway (skips that test). ``probe_scales``: the test's noisy probes
    (:func:`~neuralpath.metrics.connectivity.input_dependence`, seed 0; default none, see the
    module docstring).
    """
    if not pathway.is_binary:
        raise InputError("connect_pathway needs a binary pathway")
    if growth < 2:
        raise InputError(f"growth must be an integer >= 2, got {growth!r}")
    classes = classes.to(inputs.device)
    if connected is None:
        connected = input_dependence(gated, inputs, pathway, classes, probe_scales=probe_scales)
    connected = connected.clone()
    floors = torch.zeros(pathway.batch_size, dtype=torch.long)
    failed = (~connected).nonzero().squeeze(1)
    masks = dict(pathway.items())
    if failed.numel():
        if rank is None:
            rank = taylor_ranker(gated, inputs, classes, pathway.granularity)
        search = _FloorSearch(
            gated, inputs[failed.to(inputs.device)], pathway.select(failed),
            classes[failed.to(classes.device)], rank(failed), probe_scales,
        )  # fmt: skip
        found = search.run(growth)
        for name, mask in search.masks(found).items():
            masks[name] = masks[name].clone()
            masks[name][failed.to(mask.device)] = mask
        floors[failed] = found
        connected[failed] = found > 0
    metadata = {**pathway.metadata, CONNECT_FLOOR: floors.tolist()}
    return Connection(Pathway(masks, pathway.granularity, metadata), connected)


def taylor_ranker(
    gated: GatedModel, inputs: Tensor, classes: Tensor, granularity: Granularity
) -> Ranker:
    """A :data:`Ranker` scoring the asked rows of ``inputs`` by ``|a · ∂y_c/∂a|`` in the unmasked
    network (NeuronMCT's score at ``granularity``; one forward + backward of those rows)."""
    from neuralpath.methods.critical import taylor_scores  # critical imports this module

    def rank(rows: Tensor) -> Mapping[str, Tensor]:
        index = rows.to(inputs.device)
        return taylor_scores(
            gated, inputs[index], classes.to(inputs.device)[index], granularity=granularity
        )[0]

    return rank


class _FloorSearch:
    """The floor search of one repair over ``R`` disconnected samples: ``pathway`` their masks as
    the method chose them, ``ranks`` their unit ranks ``[R, ...]``."""

    def __init__(
        self,
        gated: GatedModel,
        inputs: Tensor,
        pathway: Pathway,
        classes: Tensor,
        ranks: Mapping[str, Tensor],
        probe_scales: tuple[float, ...],
    ):
        self.gated, self.inputs, self.pathway, self.classes = gated, inputs, pathway, classes
        self.ranks, self.probe_scales = ranks, probe_scales

    def widened(self, rows: Tensor, floor: int) -> Pathway:
        """Samples ``rows`` with every layer keeping at least its ``floor`` top-ranked units."""
        return keep_per_layer(self.pathway.select(rows), _rows(self.ranks, rows), floor)

    def connects(self, rows: Tensor, floor: int) -> Tensor:
        """``[len(rows)]`` bool: the widened pathways pass the test (gradient at the sample)."""
        return input_dependence(
            self.gated, self.inputs[rows.to(self.inputs.device)], self.widened(rows, floor),
            self.classes[rows.to(self.classes.device)], probe_scales=self.probe_scales,
        )  # fmt: skip

    def run(self, growth: int) -> Tensor:
        """Per sample, the smallest floor found that connects (0: none does): ``[R]`` long.

        The floor grows by ``growth`` from the method's ``min_per_layer`` until the sample
        connects (or covers every layer), then is bisected between the last floor that failed
        and the first that passed; only floors that were tested are returned."""
        count = self.pathway.batch_size
        failed = torch.full((count,), max(1, int(self.pathway.metadata.get("min_per_layer") or 1)))
        passed = torch.zeros(count, dtype=torch.long)
        pending, floor = torch.arange(count), int(failed[0])
        widest = max(self.pathway.units.values())
        while pending.numel() and floor < widest:
            floor = min(floor * growth, widest)  # past the widest layer: the whole network
            ok = self.connects(pending, floor)
            passed[pending[ok]], failed[pending[~ok]] = floor, floor
            pending = pending[~ok]
        narrowing = (passed > 0) & (passed - failed > 1)
        while narrowing.any():
            middle = (failed + passed) // 2
            for value in middle[narrowing].unique().tolist():
                rows = (narrowing & (middle == value)).nonzero().squeeze(1)
                ok = self.connects(rows, value)
                passed[rows[ok]], failed[rows[~ok]] = value, value
            narrowing = (passed > 0) & (passed - failed > 1)
        return passed

    def masks(self, floors: Tensor) -> dict[str, Tensor]:
        """The masks of every sample at its ``floors`` (0: as the method chose them)."""
        masks = {name: mask.clone() for name, mask in self.pathway.items()}
        for value in floors[floors > 0].unique().tolist():
            rows = (floors == value).nonzero().squeeze(1)
            for name, mask in self.widened(rows, value).items():
                masks[name][rows.to(mask.device)] = mask
        return masks
