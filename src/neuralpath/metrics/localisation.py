"""Localisation of saliency maps against ground-truth object masks (higher is better).

* :class:`PointingGame`: 1 when the most relevant pixel lies inside the mask (or within
  ``tolerance`` pixels of it, Euclidean distance), else 0. Ties at the maximum: the first pixel
  in row-major order counts. Default relevance: ``"sum-abs"`` over channels (magnitude).
* :class:`RelevanceMass`: share of the *positive* relevance that falls inside the mask,
  ``Σ_{mask} max(r, 0) / Σ max(r, 0)``; 0 for a map without positive relevance. Default
  relevance: ``"sum"`` over channels (signed evidence).

Masks are boolean ``[B, H, W]`` (e.g. :attr:`neuralpath.data.ImageDataset.masks` of the
``synthetic`` data set); an empty mask is an error.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from neuralpath.errors import InputError, ShapeError
from neuralpath.metrics.perturbation import REDUCTIONS, pixel_relevance


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


class PointingGame:
    """Is the maximum-relevance pixel inside the (dilated) mask? ``[B]`` of 0./1."""

    name = "pointing_game"
    higher_is_better = True
    direction = "higher"

    def __init__(self, tolerance: float = 0.0, *, reduction: str = "sum-abs"):
        if not tolerance >= 0:
            raise InputError(f"tolerance must be >= 0 pixels, got {tolerance!r}")
        if reduction not in REDUCTIONS:
            raise InputError(
                f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}"
            )
        self.tolerance = float(tolerance)
        self.reduction = reduction

    def __call__(self, attributions: Tensor, masks: Tensor) -> Tensor:
        """``attributions [B, C, H, W]`` or ``[B, H, W]``, ``masks [B, H, W]`` -> hits ``[B]``."""
        relevance, masks = _checked(attributions, masks, self.reduction)
        target = dilate(masks, self.tolerance).flatten(1)
        best = relevance.flatten(1).argmax(dim=1, keepdim=True)  # first maximum in row-major order
        return target.gather(1, best).squeeze(1).float()


class RelevanceMass:
    """Share of positive relevance inside the mask, ``[B]`` in [0, 1]."""

    name = "relevance_mass"
    higher_is_better = True
    direction = "higher"

    def __init__(self, *, reduction: str = "sum"):
        if reduction not in REDUCTIONS:
            raise InputError(
                f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}"
            )
        self.reduction = reduction

    def __call__(self, attributions: Tensor, masks: Tensor) -> Tensor:
        """``attributions [B, C, H, W]`` or ``[B, H, W]``, ``masks [B, H, W]`` -> ``[B]``."""
        relevance, masks = _checked(attributions, masks, self.reduction)
        positive = relevance.clamp(min=0).flatten(1)
        inside = (positive * masks.flatten(1)).sum(dim=1)
        total = positive.sum(dim=1)
        return torch.where(total > 0, inside / total.clamp(min=torch.finfo(total.dtype).tiny), 0.0)


def localisation_summary(hits: Tensor, mass: Tensor) -> dict[str, Any]:
    """Means over the batch of :class:`PointingGame` and :class:`RelevanceMass` scores."""
    return {
        "pointing_game": hits.mean().item(),
        "relevance_mass": mass.mean().item(),
        "higher_is_better": True,
        "samples": int(hits.shape[0]),
    }
