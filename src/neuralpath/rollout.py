"""Attention rollout (Abnar & Zuidema 2020): a class-agnostic saliency baseline for vision
transformers.

Per block ``l`` the attention probabilities ``A_l`` ``[T, T]`` are averaged over heads, the
residual connection is accounted for by adding the identity and renormalising the rows,
``Â_l = (A_l + I) / rowsum``, and the blocks are multiplied through in forward order:
``R = Â_L · … · Â_1``. The map is the class token's row of ``R`` (token 0) at the patch tokens
(the last ``h·w`` tokens, a grid with the image's aspect ratio), bilinearly upsampled to the
image. Attention is recomputed from each attention module's inputs (see
:func:`neuralpath.heads.attention_weights`), so the model runs as it is; hooks are removed and
the model's state restored on exit, also when the forward raises.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuralpath.errors import InputError, LayerError
from neuralpath.gating import check_inputs, frozen
from neuralpath.heads import attention_modules, attention_weights
from neuralpath.targets import TargetType


def patch_grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """The patch grid ``(h, w)`` behind ``tokens`` tokens of an ``height × width`` image: the
    largest grid with the image's aspect ratio that leaves at least one leading (class) token;
    :class:`LayerError` when there is none."""
    for prefix in range(1, tokens):
        patches = tokens - prefix
        rows = math.isqrt(patches * height // max(1, width))
        for h in (rows, rows + 1):
            if h > 0 and patches % h == 0 and h * width == (patches // h) * height:
                return h, patches // h
    raise LayerError(
        f"attention rollout: {tokens} tokens are not a class token followed by a grid of "
        f"patches of a {height}x{width} image"
    )


class AttentionRollout:
    """Attention rollout maps ``[B, 1, H, W]`` of a vision transformer ``model`` (torchvision's
    ``VisionTransformer``, timm's ViT/DeiT: the attention modules of
    :func:`neuralpath.heads.attention_modules`, in the order the forward calls them).

    ``attribute(inputs, target=None)``: ``target`` is accepted for the common explain signature
    and ignored (rollout does not depend on the class).
    """

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.attention = attention_modules(model)
        if not self.attention:
            raise LayerError(
                "attention rollout needs a vision transformer: the model has no attention "
                "modules (no nn.MultiheadAttention and no module with an integer num_heads and "
                "an nn.Linear 'proj')"
            )

    @contextmanager
    def _recording(self) -> Iterator[list[Tensor]]:
        """Hooks that append each attention call's probabilities ``[B, H, T, T]``."""
        recorded: list[Tensor] = []
        handles = []

        def make_hook(name: str) -> Any:
            def hook(
                module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _out: object
            ) -> None:
                recorded.append(attention_weights(module, args, kwargs, name))

            return hook

        try:
            for name, module in self.attention.items():
                handles.append(module.register_forward_hook(make_hook(name), with_kwargs=True))
            yield recorded
        finally:
            for handle in handles:
                handle.remove()

    def rollout(self, inputs: Tensor) -> Tensor:
        """The rolled-out attention ``R`` ``[B, T, T]`` of ``inputs`` ``[B, C, H, W]``."""
        check_inputs(inputs)
        with frozen(self.model), torch.no_grad(), self._recording() as recorded:
            self.model(inputs)
        if not recorded:
            raise LayerError("attention rollout: no attention module was called in the forward")
        result: Tensor | None = None
        for weights in recorded:
            if weights.shape[-1] != weights.shape[-2]:
                raise LayerError("attention rollout needs self-attention (square attention maps)")
            fused = weights.mean(dim=1)
            fused = fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
            fused = fused / fused.sum(dim=-1, keepdim=True)
            result = fused if result is None else fused @ result
        assert result is not None
        return result

    def attribute(self, inputs: Tensor, target: TargetType = None) -> Tensor:
        """Rollout maps ``[B, 1, H, W]`` of ``inputs`` ``[B, C, H, W]`` (``target`` ignored)."""
        del target  # class-agnostic
        rolled = self.rollout(inputs)
        height, width = inputs.shape[-2:]
        rows, cols = patch_grid(rolled.shape[-1], height, width)
        cls_row = rolled[:, 0, rolled.shape[-1] - rows * cols :]
        grid = cls_row.reshape(-1, 1, rows, cols)
        return F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
