"""A small vision transformer target (``vit-tiny``) for 28-32 px images [ours].

torchvision's :class:`~torchvision.models.VisionTransformer` as it is (``nn.MultiheadAttention``
heads, a ``Linear -> GELU -> Linear`` MLP per block: the head and MLP units of
:mod:`neuralpath.heads` and :mod:`neuralpath.gating`), with a patch embedding that takes
``in_channels`` channels: patches of 4 px, 4 blocks of 4 heads, hidden width ``64·width`` and
MLP width twice that. On 28 px Fashion-MNIST images that is 49 patch tokens and a class token.
"""

from __future__ import annotations

from torch import nn

from neuralpath.errors import InputError

VIT_ARCHS = ("vit-tiny",)
VIT_TINY_PATCH = 4
VIT_TINY_BLOCKS = 4
VIT_TINY_HEADS = 4
VIT_TINY_HIDDEN = 64
VIT_TINY_MLP_RATIO = 2


def build_vit(
    arch: str, *, num_classes: int, in_channels: int, input_size: int, width: float = 1.0
) -> nn.Module:
    """A freshly initialised ``arch`` (:data:`VIT_ARCHS`) for
    ``[B, in_channels, input_size, input_size]`` inputs; ``input_size`` must be a multiple of
    the patch size, ``width`` scales the hidden and MLP widths (a multiple of the heads)."""
    if arch not in VIT_ARCHS:
        raise InputError(f"unknown vision transformer {arch!r}; available: {', '.join(VIT_ARCHS)}")
    if input_size < VIT_TINY_PATCH or input_size % VIT_TINY_PATCH:
        raise InputError(
            f"{arch} cuts {VIT_TINY_PATCH} px patches: input_size must be a positive multiple of "
            f"{VIT_TINY_PATCH}, got {input_size}"
        )
    from torchvision.models.vision_transformer import VisionTransformer

    hidden = max(1, round(VIT_TINY_HIDDEN * width / VIT_TINY_HEADS)) * VIT_TINY_HEADS
    model: nn.Module = VisionTransformer(
        image_size=input_size,
        patch_size=VIT_TINY_PATCH,
        num_layers=VIT_TINY_BLOCKS,
        num_heads=VIT_TINY_HEADS,
        hidden_dim=hidden,
        mlp_dim=VIT_TINY_MLP_RATIO * hidden,
        num_classes=num_classes,
    )
    if in_channels != 3:
        stem = nn.Conv2d(in_channels, hidden, kernel_size=VIT_TINY_PATCH, stride=VIT_TINY_PATCH)
        nn.init.trunc_normal_(stem.weight, std=(in_channels * VIT_TINY_PATCH**2) ** -0.5)
        if stem.bias is not None:
            nn.init.zeros_(stem.bias)
        model.conv_proj = stem
    return model
