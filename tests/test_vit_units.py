"""Units of vision transformers: attention heads and MLP neurons as gate sites (issue 16).

References are literal float64 re-implementations of the encoder blocks of torchvision's
``VisionTransformer`` and timm's ``VisionTransformer`` with heads / neurons replaced by 0, their
reference mean, or a donor's value; NeuronMCT's head scores are recomputed by hand from
``|h · ∂y/∂h|``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from neuralpath.errors import InputError, LayerError, ShapeError
from neuralpath.gating import GatedModel, discover_sites, frozen
from neuralpath.interventions import Intervention, MeanAblation, ResampleAblation, ZeroAblation
from neuralpath.methods.critical import NeuronMCT
from neuralpath.reference import reference_statistics

from contract import assert_unchanged, snapshot
from toys import tiny_cnn

timm = pytest.importorskip("timm")

Masks = Mapping[str, Tensor]


def torchvision_vit(dtype: torch.dtype = torch.float64) -> nn.Module:
    """A 2-block torchvision ViT on 8x8 images: 4 patches + class token, 2 heads of 4 dims."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=6,
        num_classes=3,
    )  # fmt: skip
    nn.init.normal_(model.heads.head.weight, std=0.5)  # starts at zero
    nn.init.normal_(model.class_token, std=0.5)
    return model.to(dtype).eval()


def timm_vit(dtype: torch.dtype = torch.float64) -> nn.Module:
    """The same sizes as timm's VisionTransformer (qkv with bias, fused attention)."""
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=8, patch_size=4, in_chans=3, embed_dim=8, depth=2, num_heads=2, mlp_ratio=0.75,
        num_classes=3, qkv_bias=True,
    )  # fmt: skip
    return model.to(dtype).eval()


def _attention(y: Tensor, weight: Tensor, bias: Tensor, heads: int) -> Tensor:
    """Literal multi-head self-attention before the output projection: ``[B, T, H, d]``."""
    q, k, v = (t.unflatten(-1, (heads, -1)) for t in (y @ weight.T + bias).chunk(3, dim=-1))
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhts,bshd->bthd", scores.softmax(dim=-1), v)


def _gate(a: Tensor, mask: Tensor | None, replacement: Tensor | None) -> Tensor:
    """``m a + (1 - m) r`` with ``mask`` broadcast from its leading dimensions."""
    if mask is None:
        return a
    m = mask.to(a.dtype).reshape(*mask.shape, *[1] * (a.dim() - mask.dim()))
    r = torch.zeros_like(a) if replacement is None else replacement
    return m * a + (1 - m) * r


Site = Callable[[str, Tensor], Tensor]
"""A literal model's hook: ``(site name, activation) -> activation used downstream``."""


def literal_torchvision(model: nn.Module, x: Tensor, site: Site) -> Tensor:
    """torchvision's ViT forward written out; ``site`` sees heads ``[B, T, H, d]`` and the MLP's
    hidden activations ``[B, T, D]``."""
    tokens = model._process_input(x)
    tokens = torch.cat([model.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
    h = tokens + model.encoder.pos_embedding
    for i, block in enumerate(model.encoder.layers):
        name = f"encoder.layers.encoder_layer_{i}"
        mha = block.self_attention
        heads = _attention(block.ln_1(h), mha.in_proj_weight, mha.in_proj_bias, mha.num_heads)
        heads = site(f"{name}.self_attention", heads)
        h = h + heads.flatten(2) @ mha.out_proj.weight.T + mha.out_proj.bias
        hidden = site(f"{name}.mlp.1", F.gelu(block.mlp[0](block.ln_2(h))))
        h = h + block.mlp[3](hidden)
    return model.heads(model.encoder.ln(h)[:, 0])


def literal_timm(model: nn.Module, x: Tensor, site: Site) -> Tensor:
    """timm's ViT forward written out (same ``site`` convention)."""
    h = model._pos_embed(model.patch_embed(x))
    for i, block in enumerate(model.blocks):
        attn = block.attn
        heads = _attention(block.norm1(h), attn.qkv.weight, attn.qkv.bias, attn.num_heads)
        h = h + attn.proj(site(f"blocks.{i}.attn", heads).flatten(2))
        hidden = site(f"blocks.{i}.mlp.act", F.gelu(block.mlp.fc1(block.norm2(h))))
        h = h + block.mlp.fc2(hidden)
    return model.head(model.norm(h)[:, 0])


LITERAL = {"torchvision": (torchvision_vit, literal_torchvision), "timm": (timm_vit, literal_timm)}


def _recorded(literal: Callable[..., Tensor], model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    seen: dict[str, Tensor] = {}

    def site(name: str, a: Tensor) -> Tensor:
        seen[name] = a
        return a

    literal(model, x, site)
    return seen


def _random_masks(gm: GatedModel, batch: int, granularity: str, seed: int = 1) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        s.name: torch.rand(batch, *s.mask_shape(granularity), generator=generator) > 0.5
        for s in gm.sites
    }


def _intervention(name: str, gm: GatedModel, reference: Tensor) -> Intervention:
    if name == "zero":
        return ZeroAblation()
    if name == "mean":
        return MeanAblation(reference_statistics(gm, reference, progress=False))
    return ResampleAblation(reference, seed=3)


@pytest.mark.parametrize("family", ["torchvision", "timm"])
@pytest.mark.parametrize("granularity", ["channel", "element"])
@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_head_and_neuron_gates_equal_the_literal_blocks(
    family: str, granularity: str, ablation: str
) -> None:
    build, literal = LITERAL[family]
    model = build()
    torch.manual_seed(2)
    x, reference = torch.randn(3, 3, 8, 8, dtype=torch.float64), torch.randn(5, 3, 8, 8).double()
    gm = GatedModel.discover(model, x[:1], unit_types=["heads", "mlp"])
    gm = gm.with_intervention(_intervention(ablation, gm, reference))
    masks = _random_masks(gm, 3, granularity)
    if ablation == "mean":
        means = gm.intervention.statistics.means  # type: ignore[attr-defined]
        replace = {n: means[n].double().unsqueeze(0) for n in masks}
    elif ablation == "resample":
        donors = gm.intervention.donors(x)  # type: ignore[attr-defined]
        replace = _recorded(literal, model, donors)
    else:
        replace = {}

    def site(name: str, a: Tensor) -> Tensor:
        s = gm.site(name)
        mask = masks[name] if granularity == "element" else s.unit_view(masks[name])
        return _gate(a, mask, replace.get(name))

    with torch.no_grad():
        expected = literal(model, x, site)
        got = gm.forward(x, masks)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(got, gm.forward(x)), "the masks changed nothing"


@pytest.mark.parametrize("family", ["torchvision", "timm"])
def test_literal_reference_is_the_model(family: str) -> None:
    build, literal = LITERAL[family]
    model = build()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(literal(model, x, lambda _n, a: a), model(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", ["torchvision", "timm"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_all_ones_pathway_reproduces_the_model_exactly(family: str, grad: bool) -> None:
    """float32, as deployed: without gradients torch runs nn.MultiheadAttention's fused kernel,
    which the gate leaves running (see neuralpath.heads). The reference forward runs as gate()
    runs the model (eval, parameters frozen): which kernel torch picks depends on that."""
    model = LITERAL[family][0](torch.float32)
    x = torch.randn(4, 3, 8, 8)
    gm = GatedModel.discover(model, x[:1], unit_types=["heads", "mlp"])
    if grad:  # gradients wanted for the input, as saliency methods do
        x.requires_grad_(True)
    with torch.set_grad_enabled(grad), frozen(model):  # the state gate() runs the model in
        plain = model(x)
        for granularity in ("channel", "element"):
            ones = {s.name: torch.ones(4, *s.mask_shape(granularity)) for s in gm.sites}
            assert torch.equal(gm.forward(x, ones), plain), granularity
            logits, recording = gm.record(x, ones)
            assert torch.equal(logits, plain), granularity
    shapes = {n: tuple(a.shape[1:]) for n, a in recording.activations.items()}
    assert shapes == {s.name: s.shape for s in gm.sites}


def test_discovery_of_heads_and_mlp_neurons_on_torchvision() -> None:
    model = torchvision_vit()
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    both = discover_sites(model, x, unit_types=["mlp", "heads"])
    described = [(s.name, s.kind, s.shape, s.unit_dim, s.units, s.element_shape) for s in both]
    assert described == [
        ("encoder.layers.encoder_layer_0.self_attention", "head", (5, 2, 4), 1, 2, (5, 2)),
        ("encoder.layers.encoder_layer_0.mlp.1", "token", (5, 6), 1, 6, (5, 6)),
        ("encoder.layers.encoder_layer_1.self_attention", "head", (5, 2, 4), 1, 2, (5, 2)),
        ("encoder.layers.encoder_layer_1.mlp.1", "token", (5, 6), 1, 6, (5, 6)),
    ]
    assert [s.name for s in discover_sites(model, x, unit_types=["heads"])] == [
        both[0].name, both[2].name,
    ]  # fmt: skip
    assert discover_sites(model, x, unit_types=["mlp"]) == discover_sites(model, x)
    timm_sites = discover_sites(timm_vit(), x, unit_types=["heads", "mlp"])
    assert [(s.name, s.kind, s.shape) for s in timm_sites] == [
        ("blocks.0.attn", "head", (5, 2, 4)),
        ("blocks.0.mlp.act", "token", (5, 6)),
        ("blocks.1.attn", "head", (5, 2, 4)),
        ("blocks.1.mlp.act", "token", (5, 6)),
    ]


@pytest.mark.parametrize("family", ["torchvision", "timm"])
@pytest.mark.parametrize("granularity", ["channel", "element"])
def test_mct_head_scores_are_h_dot_gradient_by_hand(family: str, granularity: str) -> None:
    build, literal = LITERAL[family]
    model = build()
    torch.manual_seed(4)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 2, 1])
    gm = GatedModel.discover(model, x[:1], unit_types=["heads", "mlp"])
    scores = NeuronMCT(gm, granularity=granularity).scores(x, target)

    seen: dict[str, Tensor] = {}

    def site(name: str, a: Tensor) -> Tensor:
        seen[name] = a  # in the graph (the weights require gradients): ∂y/∂a over all paths
        return a

    logits = literal(model, x, site)
    grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), list(seen.values()))
    for (name, a), grad in zip(seen.items(), grads, strict=True):
        contribution = a * grad  # heads: |h · ∂y/∂h| per head and token, [B, T, H]
        head = gm.site(name).kind == "head"
        element = contribution.sum(dim=-1).abs() if head else contribution.abs()
        expected = element if granularity == "element" else element.sum(dim=1)
        torch.testing.assert_close(scores[name], expected, rtol=1e-9, atol=1e-12)


def test_vit_b_16_heads_and_neurons_discovered_and_gated_at_32_pixels() -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model("vit_b_16", weights=None, image_size=32, num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    before = snapshot(model)
    gm = GatedModel.discover(model, x[:1], unit_types=["heads", "mlp"])
    assert [s.kind for s in gm.sites] == ["head", "token"] * 12
    assert {(s.shape, s.units) for s in gm.sites if s.kind == "head"} == {((5, 12, 64), 12)}
    assert {(s.shape, s.units) for s in gm.sites if s.kind == "token"} == {((5, 3072), 3072)}
    with torch.no_grad():
        plain = model(x)
        ones = {s.name: torch.ones(2, s.units) for s in gm.sites}
        assert torch.equal(gm.forward(x, ones), plain)
        heads_off = {s.name: torch.zeros(2, s.units) for s in gm.sites if s.kind == "head"}
        assert not torch.allclose(gm.forward(x, heads_off), plain)
    assert_unchanged(model, before)


def test_model_is_unchanged_and_forward_restored_after_gating_heads() -> None:
    model = torchvision_vit()
    model.train()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gm = GatedModel.discover(model, x[:1], unit_types=["heads", "mlp"])
    before = snapshot(model)
    forwards = {name: m.forward for name, m in model.named_modules()}
    masks = _random_masks(gm, 2, "element")
    _logits, recording = gm.record(x, masks)
    recording.gradients(_logits[:, 0])
    assert_unchanged(model, before)
    assert all(m.training for m in model.modules())
    assert {name: m.forward for name, m in model.named_modules()} == forwards
    assert all("forward" not in vars(m) for m in model.modules())


def test_bad_unit_requests_are_clear_errors() -> None:
    cnn, x = tiny_cnn(), torch.zeros(1, 3, 8, 8)
    with pytest.raises(LayerError, match="unit type 'heads': the model has no attention heads"):
        discover_sites(cnn, x, unit_types=["heads"])
    with pytest.raises(LayerError, match="unit type 'mlp': the model has no MLP neurons"):
        GatedModel.discover(cnn, x, unit_types=["mlp"])
    vit, y = torchvision_vit(), torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    with pytest.raises(InputError, match=r"unknown unit type\(s\) \['neurons'\]"):
        discover_sites(vit, y, unit_types=["neurons"])  # type: ignore[list-item]
    with pytest.raises(InputError, match="unit_types must be a non-empty list"):
        discover_sites(vit, y, unit_types="heads")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="either layers or unit_types"):
        discover_sites(vit, y, layers=["encoder.ln"], unit_types=["heads"])
    gm = GatedModel.discover(vit, y, unit_types=["heads"])
    name = gm.sites[0].name
    with pytest.raises(ShapeError, match=r"expected \[B, 2\] \(channel\) or \[B, 5, 2\]"):
        gm.forward(y, {name: torch.ones(1, 5, 2, 4)})


class _Attention(nn.Module):
    """timm-style attention (``num_heads``, ``proj``) applying ``proj`` with ``F.linear``."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 2
        self.qkv, self.proj = nn.Linear(4, 12), nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        heads = _attention(x, self.qkv.weight, self.qkv.bias, self.num_heads)
        return F.linear(heads.flatten(2), self.proj.weight, self.proj.bias)


class _Tokens(nn.Module):
    def __init__(self, attention: nn.Module, used: bool = True) -> None:
        super().__init__()
        self.embed, self.attention, self.used = nn.Conv2d(1, 4, 2, stride=2), attention, used
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x).flatten(2).mT
        return self.head((self.attention(tokens) if self.used else tokens).mean(dim=1))


def test_attention_whose_heads_cannot_be_read_is_reported() -> None:
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(LayerError, match=r"\['attention'\] were never called as modules"):
        discover_sites(_Tokens(nn.MultiheadAttention(4, 2), used=False), x, unit_types=["heads"])
    with pytest.raises(LayerError, match="called its output projection 'attention.proj' 0 times"):
        discover_sites(_Tokens(_Attention()), x, unit_types=["heads"])


@pytest.mark.parametrize("family", ["torchvision", "timm"])
def test_gradients_reach_recorded_heads_and_the_input_as_in_the_literal_model(
    family: str,
) -> None:
    """∂y/∂h at the recorded (gated) heads and ∂y/∂x through the pathway model equal the literal
    model's, with every unit kept and with some heads dropped."""
    build, literal = LITERAL[family]
    model = build()
    torch.manual_seed(6)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gm = GatedModel.discover(model, x[:1], unit_types=["heads", "mlp"])
    for masks in (None, _random_masks(gm, 2, "channel", seed=7)):
        seen: dict[str, Tensor] = {}

        def site(
            name: str, a: Tensor, masks: Masks | None = masks, seen: dict[str, Tensor] = seen
        ) -> Tensor:
            if masks is not None:
                a = _gate(a, gm.site(name).unit_view(masks[name]), None)
            seen[name] = a
            return a

        inputs = x.clone().requires_grad_(True)
        expected = literal(model, inputs, site)[:, 1].sum()
        want = torch.autograd.grad(expected, [inputs, *seen.values()])
        inputs = x.clone().requires_grad_(True)
        logits, recording = gm.record(inputs, masks)
        names = list(seen)
        got = torch.autograd.grad(
            logits[:, 1].sum(), [inputs, *(recording.activations[n] for n in names)]
        )
        for label, g, w in zip(["input", *names], got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12, msg=label)


class _SequenceFirst(nn.Module):
    """Tokens ``[T, B, D]`` through ``nn.MultiheadAttention(batch_first=False)``, called with its
    default ``need_weights=True``, then a mean over tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, 4, 2, stride=2)
        self.attention = nn.MultiheadAttention(4, 2)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x).flatten(2).permute(2, 0, 1)  # [T, B, D]
        mixed, _weights = self.attention(tokens, tokens, tokens)
        return self.head((tokens + mixed).mean(dim=0))


def test_sequence_first_attention_with_weights_is_gated_per_head() -> None:
    torch.manual_seed(8)
    model = _SequenceFirst().double().eval()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    gm = GatedModel.discover(model, x[:1], unit_types=["heads"])
    ((site_name, shape),) = [(s.name, s.shape) for s in gm.sites]
    assert (site_name, shape) == ("attention", (4, 2, 2))
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    tokens = model.embed(x).flatten(2).mT  # [B, T, D]
    mha = model.attention
    heads = _attention(tokens, mha.in_proj_weight, mha.in_proj_bias, 2) * mask[:, None, :, None]
    mixed = heads.flatten(2) @ mha.out_proj.weight.T + mha.out_proj.bias
    expected = model.head((tokens + mixed).mean(dim=1))
    with torch.no_grad():
        torch.testing.assert_close(
            gm.forward(x, {site_name: mask}), expected, rtol=1e-10, atol=1e-10
        )
        ones = gm.forward(x, {site_name: torch.ones(3, 2)})
        with frozen(model):  # as gate() runs it: kernels may round otherwise with trainable weights
            assert torch.equal(ones, model(x))


def test_timm_deit_heads_and_neurons_gated_exactly() -> None:
    torch.manual_seed(0)
    model = timm.create_model(
        "deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, num_classes=5
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    before = snapshot(model)
    gm = GatedModel.discover(model, x[:1], unit_types=["heads", "mlp"])
    assert [s.kind for s in gm.sites] == ["head", "token"] * 12
    assert {s.shape for s in gm.sites if s.kind == "head"} == {(6, 3, 64)}  # 4 patches + 2 tokens
    with torch.no_grad():
        plain = model(x)
        ones = {s.name: torch.ones(2, *s.element_shape) for s in gm.sites}
        assert torch.equal(gm.forward(x, ones), plain)
        first_heads = {gm.sites[0].name: torch.zeros(2, 3)}
        assert not torch.allclose(gm.forward(x, first_heads), plain)
    assert_unchanged(model, before)


def test_torchvision_swin_heads_are_a_clear_error_and_its_mlp_neurons_are_units() -> None:
    """Swin's window attention applies its projection with F.linear inside a function: its heads
    cannot be read (a later phase may recompute them); its MLP neurons are ordinary units."""
    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None, num_classes=5).eval()
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(LayerError, match="'features.1.0.attn.proj' 0 times"):
        discover_sites(model, x, unit_types=["heads"])
    sites = discover_sites(model, x, unit_types=["mlp"])
    assert len(sites) == 12 and {s.kind for s in sites} == {"token"}


def test_a_module_cannot_hold_head_sites_and_other_sites() -> None:
    model = timm_vit()
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    (heads,) = discover_sites(model, x, unit_types=["heads"])[:1]
    (output,) = discover_sites(model, x, layers=["blocks.0.attn"])
    assert (heads.module_name, output.module_name, output.kind) == (
        "blocks.0.attn", "blocks.0.attn", "custom",
    )  # fmt: skip
    renamed = dataclasses.replace(output, name="attention output")
    with pytest.raises(LayerError, match=r"\['blocks.0.attn'\] have head sites and other sites"):
        GatedModel(model, [heads, renamed], (3, 8, 8))
