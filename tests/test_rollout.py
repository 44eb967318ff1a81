"""Attention rollout (Abnar & Zuidema 2020) against a literal float64 re-implementation on toy
ViTs (torchvision and timm), through the common explain signature, and its errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from neuralpath.attribution import METHOD_NAMES, make_explainer
from neuralpath.errors import LayerError
from neuralpath.gating import GatedModel
from neuralpath.rollout import AttentionRollout, patch_grid

from contract import (
    check_batch_equals_loop,
    check_cleans_up_after_raise,
    check_leaves_model_unchanged,
)
from toys import tiny_cnn


def torchvision_vit() -> nn.Module:
    """3 blocks of 2 heads on 12x12 images: 3x3 patches of 4 px and a class token."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=12, patch_size=4, num_layers=3, num_heads=2, hidden_dim=8, mlp_dim=6,
        num_classes=3,
    )  # fmt: skip
    nn.init.normal_(model.class_token, std=0.5)
    nn.init.normal_(model.encoder.pos_embedding, std=0.5)
    return model.double().eval()


def literal_attentions(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Per block, the attention probabilities ``[B, H, T, T]`` of torchvision's ViT, written out:
    patch embedding, class token, position embedding, then per block softmax(q·kᵀ/√d) of the
    layer-normed tokens and the block's own residual updates."""
    tokens = model.conv_proj(x).flatten(2).transpose(1, 2)
    tokens = torch.cat([model.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
    tokens = tokens + model.encoder.pos_embedding
    attentions = []
    for block in model.encoder.layers:
        mha = block.self_attention
        y = block.ln_1(tokens)
        q, k, v = (y @ mha.in_proj_weight.T + mha.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (mha.num_heads, -1)).transpose(1, 2) for t in (q, k, v))
        probabilities = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        attentions.append(probabilities)
        heads = (probabilities @ v).transpose(1, 2).flatten(2)
        tokens = tokens + mha.out_proj(heads)
        tokens = tokens + block.mlp(block.ln_2(tokens))
    return attentions


def literal_rollout(attentions: list[Tensor], grid: tuple[int, int], size: tuple[int, int]):
    """Average heads, add the identity, renormalise the rows, multiply through the blocks (one
    sample at a time), take the class token's row at the patch tokens, upsample."""
    maps = []
    for b in range(attentions[0].shape[0]):
        tokens = attentions[0].shape[-1]
        rolled = torch.eye(tokens, dtype=torch.float64)
        for attention in attentions:
            averaged = sum(attention[b, h] for h in range(attention.shape[1])) / attention.shape[1]
            with_identity = averaged + torch.eye(tokens, dtype=torch.float64)
            normalised = with_identity / with_identity.sum(dim=1, keepdim=True)
            rolled = normalised @ rolled
        patches = rolled[0, tokens - grid[0] * grid[1] :].reshape(1, 1, *grid)
        maps.append(F.interpolate(patches, size=size, mode="bilinear", align_corners=False)[0])
    return torch.stack(maps)


def test_rollout_equals_the_literal_reimplementation_on_torchvision() -> None:
    model = torchvision_vit()
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        attentions = literal_attentions(model, x)
        expected = literal_rollout(attentions, (3, 3), (12, 12))
    maps = AttentionRollout(model).attribute(x, target=torch.tensor([0, 1, 2]))
    assert maps.shape == (3, 1, 12, 12) and maps.dtype == torch.float64
    torch.testing.assert_close(maps, expected, rtol=1e-12, atol=1e-14)
    rows = AttentionRollout(model).rollout(x).sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows))  # products of row-stochastic maps


def test_rollout_on_timm_equals_its_own_attention_probabilities() -> None:
    """timm's unfused attention passes its probabilities through ``attn_drop``: recorded there,
    they are an independent reference; a 12x8 image gives a 3x2 patch grid."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=(12, 8), patch_size=4, embed_dim=8, depth=2, num_heads=2, mlp_ratio=0.75,
        num_classes=3, qkv_bias=True,
    ).double().eval()  # fmt: skip
    recorded: list[Tensor] = []
    handles = []
    for block in model.blocks:
        block.attn.fused_attn = False
        handles.append(
            block.attn.attn_drop.register_forward_hook(
                lambda _m, args, _o: recorded.append(args[0])
            )
        )
    x = torch.randn(2, 3, 12, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    expected = literal_rollout(recorded, (3, 2), (12, 8))
    torch.testing.assert_close(AttentionRollout(model).attribute(x), expected)


def test_rollout_through_the_explain_signature_keeps_the_contract() -> None:
    model = torchvision_vit().float()
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    gated = GatedModel.discover(model, x[:1], unit_types=["heads", "mlp"])
    assert "attention-rollout" in METHOD_NAMES
    explain = make_explainer("attention-rollout", gated)
    assert explain(x, None).shape == (4, 1, 12, 12)
    check_leaves_model_unchanged(model, explain, x)
    check_batch_equals_loop(explain, x)
    rollout = AttentionRollout(model)
    check_cleans_up_after_raise(model, model.encoder.layers[1].mlp, rollout.attribute, x)
    with pytest.raises(Exception, match="takes no pathway finder"):
        make_explainer("attention-rollout", gated, finder=object())  # type: ignore[arg-type]


def test_rollout_on_a_model_without_attention_is_a_clear_error() -> None:
    model = tiny_cnn(seed=0)
    with pytest.raises(LayerError, match="needs a vision transformer"):
        AttentionRollout(model)
    gated = GatedModel.discover(model, torch.zeros(1, 3, 8, 8))
    with pytest.raises(LayerError, match="no attention modules"):
        make_explainer("attention-rollout", gated)


def test_patch_grid() -> None:
    assert patch_grid(50, 28, 28) == (7, 7)
    assert patch_grid(198, 224, 224) == (14, 14)  # DeiT: class and distillation tokens
    assert patch_grid(7, 12, 8) == (3, 2)
    with pytest.raises(LayerError, match="not a class token followed by a grid"):
        patch_grid(1, 8, 8)
