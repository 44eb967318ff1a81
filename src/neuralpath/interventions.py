"""Interventions: what a dropped unit becomes in the pathway model (spec §10).

For a gated activation ``a``, its mask ``m`` in [0, 1] (binary or continuous) and a replacement
``r``, the pathway model uses ``a' = m ⊙ a + (1 − m) ⊙ r`` (exact at ``m = 1`` and ``m = 0``):

* :class:`ZeroAblation`: ``r = 0``, the papers' rule (kept to reproduce them). The *pattern* of
  kept units can then carry the class by itself (biases and BatchNorm shifts of the kept units):
  measure it with :mod:`neuralpath.metrics.leakage`.
* :class:`MeanAblation`: ``r = μ``, each unit's mean activation over a reference set
  (:class:`~neuralpath.reference.ReferenceStatistics`); no extra forward.
* :class:`ResampleAblation`: ``r`` = the unit's activation on a *donor* input drawn from a
  reference set, one donor per sample, seeded by a hash of the sample (so the donor of a sample
  does not depend on the batch it stands in) [ours]; one donor forward per batch.

An intervention is a small object given to :class:`~neuralpath.gating.GatedModel` (its
``intervention``; :meth:`~neuralpath.gating.GatedModel.with_intervention`): every finder, metric
and saliency method that runs the pathway model through that gated model uses it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor

from neuralpath.errors import InputError, ShapeError
from neuralpath.seeding import sample_seeds

if TYPE_CHECKING:
    from neuralpath.gating import GateSite
    from neuralpath.reference import ReferenceStatistics

AblationName = Literal["zero", "mean", "resample"]
ABLATIONS: tuple[AblationName, ...] = ("zero", "mean", "resample")


class Intervention(ABC):
    """How dropped units are replaced; see the module docstring."""

    name: ClassVar[AblationName]
    needs_donors: ClassVar[bool] = False
    """True when the replacement depends on the batch (one donor forward per batch)."""

    # An optional hook, not abstract: by default every intervention serves any sites and inputs.
    def check(self, sites: Sequence[GateSite], input_shape: Sequence[int]) -> None:  # noqa: B027
        """Raise unless this intervention can serve these gate sites and inputs."""

    def replacement(self, site: GateSite, like: Tensor) -> Tensor | None:
        """The input-independent replacement ``[1, *site.shape]`` for ``site`` (None: zero)."""
        return None

    def donors(self, inputs: Tensor) -> Tensor:
        """Donor inputs ``[B, ...]``, one per row of ``inputs`` (interventions with donors)."""
        raise NotImplementedError(f"{self.name} ablation uses no donors")

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Provenance: the name and what the replacement was computed from (JSON-able)."""


class ZeroAblation(Intervention):
    """``r = 0``: dropped units are multiplied by 0 (both papers' rule)."""

    name = "zero"

    def describe(self) -> dict[str, Any]:
        return {"ablation": "zero"}


class MeanAblation(Intervention):
    """``r = μ``: each dropped unit becomes its mean activation over the reference set.

    Channel masks drop a channel's whole mean map ``μ[c]`` (``[H, W]``); element masks one value.
    """

    name = "mean"

    def __init__(self, statistics: ReferenceStatistics):
        self.statistics = statistics
        self._cache: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    def check(self, sites: Sequence[GateSite], input_shape: Sequence[int]) -> None:
        self.statistics.check_sites(sites)

    def replacement(self, site: GateSite, like: Tensor) -> Tensor | None:
        key = (site.name, like.device, like.dtype)
        if key not in self._cache:
            mean = self.statistics.means[site.name]
            self._cache[key] = mean.to(device=like.device, dtype=like.dtype).unsqueeze(0)
        return self._cache[key]

    def describe(self) -> dict[str, Any]:
        return {"ablation": "mean", "reference": self.statistics.describe()}


class ResampleAblation(Intervention):
    """``r`` = the activation of a donor drawn from ``reference_inputs`` ``[N, *input_shape]``.

    The donor of a sample is ``reference_inputs[h(seed, sample) mod N]``, ``h`` a hash of the
    sample's values: batch = loop holds, and equal inputs (e.g. a blank baseline) share a donor.
    Donor activations are those of the plain model (no masks), without gradients.
    """

    name = "resample"
    needs_donors = True

    def __init__(self, reference_inputs: Tensor, seed: int = 0):
        if not isinstance(reference_inputs, Tensor) or reference_inputs.dim() < 2:
            raise InputError("resample ablation needs reference inputs as a [N, ...] tensor")
        if reference_inputs.shape[0] == 0:
            raise InputError("resample ablation needs a non-empty reference set")
        if not reference_inputs.is_floating_point():
            raise InputError(
                f"reference inputs must be floating point, got {reference_inputs.dtype}"
            )
        self.reference_inputs = reference_inputs.detach()
        self.seed = int(seed)

    def check(self, sites: Sequence[GateSite], input_shape: Sequence[int]) -> None:
        if tuple(self.reference_inputs.shape[1:]) != tuple(input_shape):
            raise ShapeError(
                f"reference inputs have shape {list(self.reference_inputs.shape)}; the model "
                f"takes [N, {', '.join(map(str, input_shape))}]"
            )

    def donors(self, inputs: Tensor) -> Tensor:
        count = self.reference_inputs.shape[0]
        index = torch.tensor([s % count for s in sample_seeds(self.seed, inputs)])
        chosen = self.reference_inputs[index].to(device=inputs.device, dtype=inputs.dtype)
        if inputs.dim() == 4 and inputs.is_contiguous(memory_format=torch.channels_last):
            return chosen.contiguous(memory_format=torch.channels_last)
        return chosen

    def describe(self) -> dict[str, Any]:
        return {
            "ablation": "resample",
            "reference_size": int(self.reference_inputs.shape[0]),
            "seed": self.seed,
        }


def check_ablation(name: object) -> AblationName:
    """``name`` if it is a known intervention, else a clear :class:`InputError`."""
    if name not in ABLATIONS:
        raise InputError(f"unknown ablation {name!r}; expected one of {', '.join(ABLATIONS)}")
    return name  # type: ignore[return-value]
