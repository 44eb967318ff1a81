"""Target handling shared by every method: which class each sample is explained for (``TargetType``)."""

from __future__ import annotations

import torch
from torch import Tensor

from neuralpath.errors import InputError

TargetType = int | Tensor | None
"""``None`` (the model's prediction), one class for the batch, or a ``[B]`` tensor of classes."""


def resolve_target(logits: Tensor, target: TargetType) -> Tensor:
    """Turn ``target`` into a ``[B]`` long tensor on ``logits``' device, checking its range.

    ``logits``: ``[B, K]``, the unmasked model's output (used when ``target`` is None).
    """
    batch, num_classes = logits.shape
    if target is None:
        return logits.argmax(dim=1)
    if isinstance(target, bool):
        raise InputError("target must be an int, a [B] tensor of class indices, or None")
    if isinstance(target, int):
        resolved = torch.full((batch,), target, dtype=torch.long, device=logits.device)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex():
            raise InputError(f"target must hold integer class indices, got dtype {target.dtype}")
        resolved = target.to(device=logits.device, dtype=torch.long).reshape(-1)
        if resolved.numel() == 1:
            resolved = resolved.expand(batch)
        elif resolved.numel() != batch:
            raise InputError(f"target has {resolved.numel()} entries for a batch of {batch}")
    else:
        raise InputError(f"target must be an int, a tensor or None, got {type(target).__name__}")
    if resolved.min() < 0 or resolved.max() >= num_classes:
        raise InputError(f"target out of range: classes are 0..{num_classes - 1}")
    return resolved


def select_logit(logits: Tensor, target: Tensor) -> Tensor:
    """``logits[b, target[b]]`` for every sample: ``[B]``."""
    return logits.gather(1, target.view(-1, 1)).squeeze(1)
