"""Localisation of saliency maps against ground-truth object masks (higher is better).

* :class:`PointingGame`: 1 when the most relevant pixel lies inside the mask (or within
  ``tolerance`` pixels of it, Euclidean distance), else 0. Ties at the maximum: the first pixel
  in row-major order counts. Default relevance: ``"sum-abs"`` over channels (magnitude).
* :class:`RelevanceMass`: share of the *positive* relevance that falls inside the mask,
  ``Σ_{mask} max(r, 0) / Σ max(r, 0)``; 0 for a map without positive relevance. Default
  relevance: ``"sum"`` over channels (signed evidence).

Both take the metrics' one call shape, ``metric(model, inputs, targets, explanation, masks=...)``
(see :mod:`~neuralpath.metrics.perturbation`; given maps need neither the model nor the targets),
and return a :class:`LocalisationResult`. Masks are boolean ``[B, H, W]`` (e.g.
:attr:`neuralpath.data.ImageDataset.masks` of the ``synthetic`` data set); an empty mask is an
error.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuralpath.errors import InputError, ShapeError
from neuralpath.metrics.perturbation import (
    REDUCTIONS,
    Explainer,
    check_batch,
    maps_of,
    model_device,
    pixel_relevance,
    resolve_targets,
)


def _checked(attributions: Tensor, masks: Tensor, reduction: str) -> tuple[Tensor, Tensor]:
    if not isinstance(masks, Tensor) or masks.dim() != 3:
        raise ShapeError(
            f"masks must be [B, H, W], got {getattr(masks, 'shape', type(masks).__name__)}"
        )
    if masks.shape[0] == 0:
        raise InputError("empty batch: masks has no samples")
    relevance = pixel_relevance(attributions, reduction)
    if relevance.shape != masks.shape:
        raise ShapeError(
            f"attributions {list(attributions.shape)} and masks {list(masks.shape)} do not match"
        )
    masks = masks.to(device=relevance.device).bool()
    empty = (~masks.flatten(1).any(dim=1)).nonzero().flatten()
    if empty.numel():
        raise InputError(f"ground-truth masks of samples {empty.tolist()[:8]} are empty")
    if not torch.isfinite(relevance).all():
        raise InputError("attributions contain NaN or infinite values")
    return relevance, masks


def dilate(masks: Tensor, radius: float) -> Tensor:
    """Pixels within Euclidean distance ``radius`` of a mask pixel: bool ``[B, H, W]``."""
    if radius <= 0:
        return masks
    r = math.floor(radius)
    offsets = torch.arange(-r, r + 1, device=masks.device, dtype=torch.float32)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).float()
    hits = F.conv2d(masks.float().unsqueeze(1), disk[None, None], padding=r)
    return hits.squeeze(1) > 0.5


@dataclass
class LocalisationResult:
    """``scores [B]`` of localisation metric ``name`` (higher is better)."""

    name: str
    scores: Tensor
    higher_is_better: bool = True

    def summary(self) -> dict[str, Any]:
        """JSON-ready mean over the batch."""
        return {
            "metric": self.name,
            "higher_is_better": self.higher_is_better,
            "score": self.scores.mean().item(),
            "samples": int(self.scores.shape[0]),
        }


class _Localisation(ABC):
    """A localisation metric: the call shape of every metric plus ground-truth ``masks``."""

    name = "localisation"
    higher_is_better = True
    direction = "higher"

    def __init__(self, reduction: str):
        if reduction not in REDUCTIONS:
            raise InputError(
                f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}"
            )
        self.reduction = reduction

    def __call__(
        self,
        model: nn.Module,
        inputs: Tensor,
        targets: Any,
        explanation: Tensor | Explainer,
        *,
        masks: Tensor | None = None,
    ) -> LocalisationResult:
        """Scores ``[B]`` of the maps ``explanation`` (``[B, C|1, H, W]`` / ``[B, H, W]``, or an
        explainer called on ``inputs [B, C, H, W]`` and ``targets``, None: ``model``'s
        prediction) against ``masks [B, H, W]``."""
        if masks is None:
            raise InputError(f"{self.name} needs ground-truth masks=[B, H, W]")
        check_batch(inputs)
        if not isinstance(explanation, Tensor):
            inputs = inputs.to(model_device(model))
            targets = resolve_targets(model, inputs, targets)
        relevance, masks = _checked(maps_of(explanation, inputs, targets), masks, self.reduction)
        return LocalisationResult(self.name, self._scores(relevance, masks))

    @abstractmethod
    def _scores(self, relevance: Tensor, masks: Tensor) -> Tensor:
        """``[B]`` from pixel ``relevance [B, H, W]`` and non-empty bool ``masks [B, H, W]``."""


class PointingGame(_Localisation):
    """Is the maximum-relevance pixel inside the (dilated) mask? ``[B]`` of 0./1."""

    name = "pointing_game"

    def __init__(self, tolerance: float = 0.0, *, reduction: str = "sum-abs"):
        if not tolerance >= 0:
            raise InputError(f"tolerance must be >= 0 pixels, got {tolerance!r}")
        super().__init__(reduction)
        self.tolerance = float(tolerance)

    def _scores(self, relevance: Tensor, masks: Tensor) -> Tensor:
        target = dilate(masks, self.tolerance).flatten(1)
        best = relevance.flatten(1).argmax(dim=1, keepdim=True)  # first maximum in row-major order
        return target.gather(1, best).squeeze(1).float()


class RelevanceMass(_Localisation):
    """Share of positive relevance inside the mask, ``[B]`` in [0, 1]."""

    name = "relevance_mass"

    def __init__(self, *, reduction: str = "sum"):
        super().__init__(reduction)

    def _scores(self, relevance: Tensor, masks: Tensor) -> Tensor:
        positive = relevance.clamp(min=0).flatten(1)
        inside = (positive * masks.flatten(1)).sum(dim=1)
        total = positive.sum(dim=1)
        return torch.where(total > 0, inside / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0)


def localisation_summary(hits: LocalisationResult, mass: LocalisationResult) -> dict[str, Any]:
    """Means over the batch of a :class:`PointingGame` and a :class:`RelevanceMass` result."""
    return {
        "pointing_game": hits.scores.mean().item(),
        "relevance_mass": mass.scores.mean().item(),
        "higher_is_better": True,
        "samples": int(hits.scores.shape[0]),
    }
