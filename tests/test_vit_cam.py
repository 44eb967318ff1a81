"""Phase 3 of issue 16 on a toy torchvision ViT: Grad-CAM on the patch tokens of MLP-neuron and
head sites (plain model and pathway model) against a literal float64 computation, critical
pathways' ``token_budget``, and the report's per-block labels of heads and MLP neurons."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from test_vit_units import LITERAL, literal_torchvision, torchvision_vit
from torch import Tensor

from neuralpath.attribution import PathwayGradCAM, default_cam_layer, make_explainer
from neuralpath.errors import InputError, LayerError, ZeroMapsWarning
from neuralpath.gating import GatedModel
from neuralpath.methods.critical import NeuronMCT
from neuralpath.pathway import Pathway
from neuralpath.report import layer_labels

from contract import (
    check_batch_equals_loop,
    check_cleans_up_after_raise,
    check_leaves_model_unchanged,
)
from toys import tiny_cnn

BLOCK0 = "encoder.layers.encoder_layer_0"
BLOCK1 = "encoder.layers.encoder_layer_1"


def _vit() -> tuple[torch.nn.Module, GatedModel, Tensor]:
    """2 blocks, 8x8 images: a 2x2 patch grid after the class token (T = 5)."""
    model = torchvision_vit()
    torch.manual_seed(5)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    return model, GatedModel.discover(model, x[:1], unit_types=["heads", "mlp"]), x


def literal_token_cam(
    model: torch.nn.Module,
    x: Tensor,
    layer: str,
    masks: Callable[[str, Tensor], Tensor],
    literal: Callable[..., Tensor] = literal_torchvision,
) -> Tensor:
    """Grad-CAM written out: the (masked) activation ``a`` of ``layer`` ``[B, 5, ...]`` from the
    literal forward, ``w_k = mean over the 4 patch tokens of ∂y_c/∂a_k``, ``relu(Σ_k w_k a_k)``
    per patch token laid out 2x2, bilinearly upsampled to 8x8."""
    seen: dict[str, Tensor] = {}

    def site(name: str, a: Tensor) -> Tensor:
        seen[name] = masks(name, a)
        return seen[name]

    logits = literal(model, x, site)
    target = model(x).argmax(dim=1)
    a = seen[layer]
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)
    a, grad = a.reshape(3, 5, -1), grad.reshape(3, 5, -1)
    cam = torch.zeros(3, 1, 2, 2, dtype=x.dtype)
    for b in range(3):
        for t in range(1, 5):  # token 0 is the class token
            weights = grad[b, 1:].mean(dim=0)
            cam[b, 0, (t - 1) // 2, (t - 1) % 2] = (weights * a[b, t]).sum().clamp_min(0)
    return F.interpolate(cam, size=(8, 8), mode="bilinear", align_corners=False)


def _unmasked(_name: str, a: Tensor) -> Tensor:
    return a


@pytest.mark.parametrize("layer", [f"{BLOCK0}.mlp.1", f"{BLOCK0}.self_attention"])
def test_grad_cam_of_the_plain_vit_is_the_literal_token_cam(layer: str) -> None:
    model, gm, x = _vit()
    maps = make_explainer("grad-cam", gm, layer=layer)(x, None)
    expected = literal_token_cam(model, x, layer, _unmasked)
    assert maps.shape == (3, 1, 8, 8) and expected.amax() > 0
    torch.testing.assert_close(maps, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layer", [f"{BLOCK0}.mlp.1", f"{BLOCK0}.self_attention"])
def test_pathway_grad_cam_of_the_vit_is_the_literal_gated_token_cam(layer: str) -> None:
    model, gm, x = _vit()
    pathway = NeuronMCT(gm, sparsity=0.5).find(x)

    def masked(name: str, a: Tensor) -> Tensor:
        mask = pathway[name].to(a.dtype)
        return a * mask.reshape(*mask.shape, *[1] * (a.dim() - mask.dim()))

    cam = PathwayGradCAM(gm, NeuronMCT(gm, sparsity=0.5), layer=layer)
    maps = cam.attribute(x)
    expected = literal_token_cam(model, x, layer, masked)
    assert expected.amax() > 0
    torch.testing.assert_close(maps, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(cam.attribute(x, pathway=pathway), maps, rtol=0, atol=0)


@pytest.mark.parametrize("layer", ["blocks.0.mlp.act", "blocks.0.attn"])
def test_grad_cam_of_a_timm_vit_is_the_literal_token_cam(layer: str) -> None:
    build, literal = LITERAL["timm"]
    model = build()
    torch.manual_seed(5)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    gm = GatedModel.discover(model, x[:1], unit_types=["heads", "mlp"])
    assert default_cam_layer(gm) == "blocks.0.mlp.act"
    maps = make_explainer("grad-cam", gm, layer=layer)(x, None)
    expected = literal_token_cam(model, x, layer, _unmasked, literal)
    assert expected.amax() > 0
    torch.testing.assert_close(maps, expected, rtol=1e-9, atol=1e-12)


def test_vit_grad_cam_defaults_to_the_last_token_site_before_the_last_block() -> None:
    """The last block reads only its class token on, so its patch tokens get no gradient: its
    CAM is blank (with a warning), hence the default one block earlier."""
    model, gm, x = _vit()
    assert default_cam_layer(gm) == f"{BLOCK0}.mlp.1"
    keep_all = Pathway({s.name: torch.ones(1, s.units, dtype=torch.bool) for s in gm.sites})
    with pytest.warns(ZeroMapsWarning, match="nowhere positive"):
        last = PathwayGradCAM(gm, layer=f"{BLOCK1}.mlp.1").attribute(x, pathway=keep_all)
    assert not last.any()
    only_last = GatedModel.discover(model, x[:1], layers=[f"{BLOCK1}.mlp.1"])
    with pytest.raises(LayerError, match="patch tokens before its last block"):
        PathwayGradCAM(only_last)
    with pytest.raises(LayerError, match="patch tokens before its last block"):
        make_explainer("grad-cam", only_last)


def test_vit_pathway_grad_cam_contract() -> None:
    model, gm, x = _vit()
    cam = PathwayGradCAM(gm, NeuronMCT(gm, sparsity=0.5))

    def run(inputs: Tensor, target: object) -> Tensor:
        return cam.attribute(inputs, target)  # type: ignore[arg-type]

    check_leaves_model_unchanged(model, run, x)
    check_cleans_up_after_raise(model, model.heads, run, x)
    check_batch_equals_loop(run, x)


def test_grad_cam_on_a_site_without_patch_tokens_is_a_clear_error() -> None:
    model = tiny_cnn().double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gm = GatedModel.discover(model, x[:1], include_fc=True)
    fc = [s.name for s in gm.sites if not s.spatial]
    assert fc and gm.site(default_cam_layer(gm)).spatial
    with pytest.raises(LayerError, match="neither a spatial"):
        PathwayGradCAM(gm, layer=fc[0])
    with pytest.raises(LayerError, match="neither a spatial"):
        make_explainer("grad-cam", gm, layer=fc[0])


# token_budget ---------------------------------------------------------------------------------


def test_token_budget_keeps_the_top_kept_tokens_of_each_head_and_neuron() -> None:
    _model, gm, x = _vit()
    free = NeuronMCT(gm, sparsity=0.3, min_per_layer=0)
    capped = NeuronMCT(gm, sparsity=0.3, min_per_layer=0, token_budget=2)
    scores, wide, narrow = free.scores(x), free.find(x), capped.find(x)
    assert narrow.metadata["token_budget"] == 2
    # the cap bites (the last block's patch tokens score 0: their kept tokens are fewer)
    assert max(int(wide[s.name].sum(dim=1).amax()) for s in gm.sites) > 2
    for site in gm.sites:
        kept, score = wide[site.name].bool(), scores[site.name]  # [3, 5 tokens, units]
        assert int(narrow[site.name].sum(dim=1).amax()) <= 2
        for b in range(3):
            for unit in range(site.units):
                tokens = kept[b, :, unit].nonzero().flatten().tolist()
                best = sorted(tokens, key=lambda t: -float(score[b, t, unit]))[:2]
                expected = torch.zeros(5, dtype=torch.bool)
                expected[best] = True
                got = narrow[site.name][b, :, unit].bool()
                assert torch.equal(got, expected), (site.name, b, unit)


def test_token_budget_larger_than_the_sequence_is_a_clear_error() -> None:
    _model, gm, x = _vit()
    with pytest.raises(InputError, match=r"token_budget=6 is larger than the sequence of 5 tok"):
        NeuronMCT(gm, token_budget=6)
    NeuronMCT(gm, token_budget=5).find(x)  # the whole sequence is fine
    with pytest.raises(InputError, match="token_budget must be >= 1"):
        NeuronMCT(gm, token_budget=0)
    with pytest.raises(InputError, match="token_budget needs granularity='element'"):
        NeuronMCT(gm, token_budget=2, granularity="channel")
    cnn = tiny_cnn()
    with pytest.raises(InputError, match="token_budget=2 needs a transformer's token sites"):
        NeuronMCT(GatedModel.discover(cnn, torch.randn(1, 3, 8, 8)), token_budget=2)


# report labels --------------------------------------------------------------------------------


def test_layer_labels_name_the_block_and_unit_type() -> None:
    _model, gm, _x = _vit()
    assert layer_labels(gm, gm.site_names) == [
        "block 0 heads", "block 0 MLP", "block 1 heads", "block 1 MLP",
    ]  # fmt: skip
    cnn = GatedModel.discover(tiny_cnn(), torch.randn(1, 3, 8, 8))
    assert layer_labels(cnn, cnn.site_names) == cnn.site_names
