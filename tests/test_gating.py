"""Gating engine: discovery, masking, recording, and leaving the model as it was."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from neuralpath.errors import InputError, LayerError, ShapeError
from neuralpath.gating import GatedModel, channels_last, discover_sites
from neuralpath.interventions import ResampleAblation

from contract import (
    assert_unchanged,
    check_batch_equals_loop,
    check_cleans_up_after_raise,
    check_leaves_model_unchanged,
    hook_count,
    snapshot,
)
from toys import FunctionalCNN, HandModel, tiny_cnn

TORCHVISION_ARCHS = [
    "alexnet",
    "vgg11",
    "vgg16",
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
]


@pytest.fixture(scope="module", params=TORCHVISION_ARCHS)
def torchvision_model(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    torch.manual_seed(0)
    return request.param, torchvision.models.get_model(
        request.param, weights=None, num_classes=7
    ).eval()


def _ones(gm: GatedModel, batch: int, granularity: str) -> dict[str, torch.Tensor]:
    shape = (lambda s: (s.units,)) if granularity == "channel" else (lambda s: s.shape)
    return {s.name: torch.ones(batch, *shape(s)) for s in gm.sites}


@pytest.mark.parametrize("granularity", ["channel", "element"])
def test_all_ones_pathway_is_exactly_the_model(torchvision_model, granularity) -> None:
    name, model = torchvision_model
    x = torch.randn(2, 3, 64, 64)
    gm = GatedModel.discover(model, x[:1])
    with torch.no_grad():
        plain = model(x)
        gated = gm.forward(x, _ones(gm, 2, granularity))
    assert torch.equal(plain, gated), name


def test_default_sites_per_architecture(torchvision_model) -> None:
    name, model = torchvision_model
    gm = GatedModel.discover(model, torch.zeros(1, 3, 64, 64))
    expected_counts = {
        "alexnet": 5,
        "vgg11": 8,
        "vgg16": 13,
        "resnet18": 17,
        "resnet50": 49,
        "mobilenet_v2": 35,
        "mobilenet_v3_small": 32,
    }
    assert len(gm.sites) == expected_counts[name]
    assert all(site.kind == "conv" for site in gm.sites)


def test_resnet_reused_relu_is_gated_per_call() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    gm = GatedModel.discover(model, x[:1])
    assert {"layer1.0.relu#0", "layer1.0.relu#1", "relu"} <= set(gm.site_names)
    first, second = gm.site("layer1.0.relu#0"), gm.site("layer1.0.relu#1")
    assert (first.module_name, first.call_index) == ("layer1.0.relu", 0)
    assert (second.module_name, second.call_index) == ("layer1.0.relu", 1)

    mask = torch.ones(2, 64)
    mask[:, 3] = 0
    _, rec_second = gm.record(x, {"layer1.0.relu#1": mask})
    _, rec_plain = gm.record(x)
    # Only the second call of the module is masked: the first call's output is untouched.
    assert torch.equal(
        rec_second.activations["layer1.0.relu#0"], rec_plain.activations["layer1.0.relu#0"]
    )
    assert rec_second.activations["layer1.0.relu#1"][:, 3].abs().sum() == 0
    assert rec_plain.activations["layer1.0.relu#1"][:, 3].abs().sum() > 0
    # ...and that changes what follows.
    assert not torch.equal(
        rec_second.activations["layer2.0.relu#0"], rec_plain.activations["layer2.0.relu#0"]
    )


def test_hand_model_masking_changes_logits_by_hand_computed_amount() -> None:
    model = HandModel()
    x = torch.tensor([[1.0, 2.0]])
    # h = relu(W1 x) = relu([1, 2, -1]) = [1, 2, 0];  y = W2 h = [1 + 4 + 0, -1 + 1 + 0] = [5, 0]
    gm = GatedModel.discover(model, x, include_fc=True)
    assert gm.site_names == ["act"] and gm.sites[0].kind == "fc"
    assert torch.allclose(gm.forward(x), torch.tensor([[5.0, 0.0]]))
    # Dropping hidden unit 1 (value 2) removes 2 * W2[:, 1] = [4, 1] from the logits.
    dropped = gm.forward(x, {"act": torch.tensor([[1.0, 0.0, 1.0]])})
    assert torch.allclose(dropped, torch.tensor([[1.0, -1.0]]))
    # A continuous gate scales the contribution linearly: gate 0.25 on unit 0 removes 0.75 * [1, -1].
    scaled = gm.forward(x, {"act": torch.tensor([[0.25, 1.0, 1.0]])})
    assert torch.allclose(scaled, torch.tensor([[4.25, 0.75]]))


def test_functional_activations_fall_back_to_conv_outputs_and_named_modules() -> None:
    torch.manual_seed(0)
    model = FunctionalCNN().eval()
    x = torch.randn(3, 1, 6, 6)
    gm = GatedModel.discover(model, x[:1])
    assert gm.site_names == ["conv1", "conv2"]
    mask = torch.ones(3, 4)
    mask[:, 0] = 0
    _, rec = gm.record(x, {"conv2": mask})
    assert rec.activations["conv2"][:, 0].abs().sum() == 0
    # Gating a module's output reaches what its forward computes (here the whole model's logits).
    whole = GatedModel.discover(model, x[:1], layers=["fc"])
    logits = whole.forward(x, {"fc": torch.tensor([[1.0, 0.0]])})
    assert torch.equal(logits[:, 1], torch.zeros(3))


def test_inplace_relu_gives_same_outputs_and_mask_gradients() -> None:
    x = torch.randn(4, 3, 8, 8)
    results = []
    for inplace in (False, True):
        model = tiny_cnn(seed=1, inplace=inplace)
        gm = GatedModel.discover(model, x[:1])
        masks = {s.name: torch.rand(4, s.units, requires_grad=True) for s in gm.sites}
        torch.manual_seed(5)
        for m in masks.values():
            m.data.uniform_()
        out = gm.forward(x, masks)
        grads = torch.autograd.grad(out[:, 0].sum(), list(masks.values()))
        results.append((out.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b)


def test_mask_gradient_matches_finite_differences() -> None:
    model = tiny_cnn(seed=2).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gm = GatedModel.discover(model, x[:1])
    masks = {
        s.name: torch.rand(2, s.units, dtype=torch.float64, requires_grad=True) for s in gm.sites
    }

    def f(*values: torch.Tensor) -> torch.Tensor:
        return gm.forward(x, dict(zip(masks, values, strict=True)))

    assert torch.autograd.gradcheck(f, tuple(masks.values()))


def test_gradient_of_ones_element_gate_is_activation_times_gradient() -> None:
    model = tiny_cnn(seed=3).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    gm = GatedModel.discover(model, x[:1])
    logits, rec = gm.record(x)
    grads = rec.gradients(logits[:, 1])
    gates = {
        s.name: torch.ones(2, *s.shape, dtype=torch.float64, requires_grad=True) for s in gm.sites
    }
    gated_logits = gm.forward(x, gates)
    gate_grads = torch.autograd.grad(gated_logits[:, 1].sum(), list(gates.values()))
    for site, gate_grad in zip(gm.sites, gate_grads, strict=True):
        expected = rec.activations[site.name] * grads[site.name]
        torch.testing.assert_close(gate_grad, expected.detach())


def test_batch_of_different_masks_equals_loop() -> None:
    model = tiny_cnn(seed=4)
    x = torch.randn(5, 3, 8, 8)
    gm = GatedModel.discover(model, x[:1])
    torch.manual_seed(0)
    channel = {s.name: torch.rand(5, s.units) > 0.5 for s in gm.sites}
    element = {s.name: torch.rand(5, *s.shape) for s in gm.sites}
    for masks in (channel, element):

        def run(inputs: torch.Tensor, _target: object, masks=masks) -> torch.Tensor:
            rows = slice(None) if inputs.shape[0] == 5 else _row_of(x, inputs)
            return gm.forward(inputs, {n: m[rows] for n, m in masks.items()})

        check_batch_equals_loop(run, x)


def _row_of(batch: torch.Tensor, sample: torch.Tensor) -> slice:
    for i in range(batch.shape[0]):
        if torch.equal(batch[i : i + 1], sample):
            return slice(i, i + 1)
    raise AssertionError("sample not in batch")


def test_shared_mask_broadcasts_over_batch() -> None:
    model = tiny_cnn(seed=5)
    x = torch.randn(3, 3, 8, 8)
    gm = GatedModel.discover(model, x[:1])
    one = {s.name: (torch.rand(1, s.units) > 0.3) for s in gm.sites}
    full = {n: m.expand(3, -1) for n, m in one.items()}
    assert torch.equal(gm.forward(x, one), gm.forward(x, full))


def test_model_left_unchanged_after_gated_runs() -> None:
    model = tiny_cnn(seed=6)
    x = torch.randn(2, 3, 8, 8)
    gm = GatedModel.discover(model, x[:1])
    masks = {s.name: torch.rand(2, s.units, requires_grad=True) for s in gm.sites}

    def run(inputs: torch.Tensor, _target: object) -> torch.Tensor:
        logits, rec = gm.record(inputs, masks)
        logits.sum().backward()
        return logits

    check_leaves_model_unchanged(model, run, x)
    check_cleans_up_after_raise(model, model.classifier[1], run, x)
    # Discovery itself leaves nothing behind either.
    check_leaves_model_unchanged(model, lambda inputs, _t: discover_sites(model, inputs), x)


def test_hooks_removed_when_mask_is_malformed() -> None:
    model = tiny_cnn(seed=7)
    x = torch.randn(2, 3, 8, 8)
    gm = GatedModel.discover(model, x[:1])
    bad = {gm.sites[1].name: torch.ones(2, 99)}
    with pytest.raises(ShapeError, match="expected"):
        gm.forward(x, bad)
    with pytest.raises(ShapeError, match="batch size"):
        gm.forward(x, {gm.sites[0].name: torch.ones(3, gm.sites[0].units)})
    from contract import hook_count

    assert hook_count(model) == 0 and not model.training


def test_layer_selection_by_name_type_and_fc() -> None:
    model = tiny_cnn(seed=8)
    x = torch.zeros(1, 3, 8, 8)
    assert discover_sites(model, x, include_fc=True)[-1].name == "classifier.2"
    by_type = discover_sites(model, x, layers=(nn.Conv2d,))
    assert [s.name for s in by_type] == ["features.0", "features.2"]
    assert [s.shape for s in by_type] == [(4, 8, 8), (6, 8, 8)]
    by_name = discover_sites(model, x, layers=["features.3", "classifier.1"])
    assert [(s.name, s.kind, s.units) for s in by_name] == [
        ("features.3", "custom", 6),
        ("classifier.1", "custom", 5),
    ]


def test_layer_selection_errors() -> None:
    model = tiny_cnn(seed=9)
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(LayerError, match="unknown layer .features.l.; did you mean features"):
        discover_sites(model, x, layers=["features.l"])
    with pytest.raises(LayerError, match="no call #2"):
        discover_sites(model, x, layers=["features.1#2"])
    with pytest.raises(InputError):
        discover_sites(model, x, layers=["features.1", nn.ReLU])  # type: ignore[list-item]
    gm = GatedModel.discover(model, x)
    with pytest.raises(LayerError, match="unknown gate site"):
        gm.forward(x, {"nope": torch.ones(1, 4)})


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (torch.zeros(2, 1, 8, 8), "shape"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.int64), "floating-point"),
        (torch.full((2, 3, 8, 8), float("nan")), "NaN"),
        (torch.zeros(0, 3, 8, 8), "empty"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_bad_inputs_are_clear_errors(inputs: object, message: str) -> None:
    gm = GatedModel.discover(tiny_cnn(), torch.zeros(1, 3, 8, 8))
    with pytest.raises(InputError, match=message):
        gm.forward(inputs)  # type: ignore[arg-type]


class _ViewCNN(nn.Module):
    """Flattens with ``view``, as many research models do: channels-last activations cannot."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).view(x.shape[0], -1))


class _AssertsContiguous(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.is_contiguous(), "this model wants NCHW-contiguous inputs"
        return self.relu(self.conv(x)).mean(dim=(2, 3))


def test_runs_channels_last_is_false_for_any_error_in_the_probe() -> None:
    gm = GatedModel.discover(_AssertsContiguous(), torch.randn(1, 3, 6, 6))
    assert gm.runs_channels_last() is False
    x = torch.randn(2, 3, 6, 6)
    assert gm.fast_layout(x) is x


def test_channels_last_copy_is_nhwc_even_for_one_channel() -> None:
    x = torch.randn(2, 1, 5, 4)
    assert x.contiguous(memory_format=torch.channels_last).stride() == x.stride()  # torch's no-op
    y = channels_last(x)
    assert torch.equal(x, y) and y.stride() == (20, 1, 4, 1)
    conv_out = nn.functional.conv2d(y, torch.randn(3, 1, 3, 3))
    assert (
        conv_out.is_contiguous(memory_format=torch.channels_last) and not conv_out.is_contiguous()
    )
    with pytest.raises(ShapeError, match="channels-last"):
        channels_last(torch.randn(2, 3))


def test_runs_channels_last_probes_once_and_leaves_the_model_unchanged() -> None:
    view_model = _ViewCNN().eval()
    calls = []
    handle = view_model.register_forward_pre_hook(lambda *_: calls.append(1))
    gm = GatedModel.discover(view_model, torch.randn(1, 1, 4, 4))
    calls.clear()
    before = snapshot(view_model)
    assert gm.runs_channels_last() is False
    assert gm.runs_channels_last() is False
    assert len(calls) == 1
    handle.remove()
    before["hooks"] -= 1
    assert_unchanged(view_model, before)
    x = torch.randn(2, 1, 4, 4)
    assert gm.fast_layout(x) is x  # the model cannot take channels-last: inputs unchanged
    convnet = GatedModel.discover(tiny_cnn(), torch.randn(1, 3, 8, 8))
    assert convnet.runs_channels_last() is True
    images = torch.randn(2, 3, 8, 8)
    fast = convnet.fast_layout(images)
    assert torch.equal(fast, images) and fast.is_contiguous(memory_format=torch.channels_last)
    assert not fast.is_contiguous()
    assert (
        GatedModel.discover(HandModel(), torch.randn(1, 2), include_fc=True).runs_channels_last()
        is False
    )


class _Reuse(nn.Module):
    """``x -> relu(conv_i(x))`` for ``i < repeats``: one ReLU module called ``repeats`` times."""

    def __init__(self, repeats: int = 2) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(2, 2, 1) for _ in range(3))
        self.relu = nn.ReLU()
        self.repeats = repeats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs[: self.repeats]:
            x = self.relu(conv(x))
        return x


class _Outer(nn.Module):
    """A conv stage (single-call ReLU), a :class:`_Reuse` block, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU())
        self.block = _Reuse()
        self.head = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean(dim=(2, 3)))


def test_submodule_called_directly_is_masked_on_every_call() -> None:
    model = tiny_cnn(seed=10)
    x = torch.randn(2, 3, 8, 8)
    gm = GatedModel.discover(model, x[:1])
    mask = torch.ones(2, 4)
    mask[:, 0] = 0
    with torch.no_grad():
        kept = model.features[0](x).relu() * mask[:, :, None, None]
        expected = model.features[2:](kept)
        with gm.gate({"features.1": mask}):
            first = model.features(x)
            second = model.features(x)  # the call counter must not run past the site
            whole = model(x)
            third = model.features(x)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert torch.equal(third, expected)
    assert torch.equal(whole, model.classifier(expected))


def test_reused_module_gets_each_calls_own_mask() -> None:
    torch.manual_seed(0)
    model = _Reuse(repeats=3).eval()
    x = torch.randn(2, 2, 4, 4)
    gm = GatedModel.discover(model, x[:1])
    assert gm.site_names == ["relu#0", "relu#1", "relu#2"]
    assert gm.calls_per_forward == {"relu": 3}
    masks = {name: torch.rand(2, 2) for name in gm.site_names}
    expected = x
    with torch.no_grad():
        for conv, name in zip(model.convs, gm.site_names, strict=True):
            expected = conv(expected).relu() * masks[name][:, :, None, None]
        for _ in range(2):  # every whole forward starts counting again
            assert torch.equal(gm.forward(x, masks), expected)


def test_reused_module_called_outside_a_whole_forward_is_an_error() -> None:
    model = _Outer().eval()
    x = torch.randn(2, 1, 4, 4)
    gm = GatedModel.discover(model, x[:1])
    assert gm.calls_per_forward == {"stem.1": 1, "block.relu": 2}
    masks = {"block.relu#1": torch.zeros(2, 2)}
    with torch.no_grad(), gm.gate(masks):
        hidden = model.stem(x)
        with pytest.raises(LayerError, match="'block.relu' is called 2 times per forward"):
            model.block(hidden)
        model(x)  # a whole forward after the error is gated as usual
    # Without a mask or recording on the reused module, running it directly is harmless.
    with torch.no_grad(), gm.gate({"stem.1": torch.ones(2, 2)}):
        model.block(model.stem(x))


def test_module_called_more_times_than_traced_is_an_error() -> None:
    model = _Reuse(repeats=2).eval()
    x = torch.randn(1, 2, 4, 4)
    gm = GatedModel.discover(model, x)
    model.repeats = 3
    with pytest.raises(LayerError, match="'relu' was called 3 times in one forward; discovery"):
        gm.forward(x, {"relu#1": torch.ones(1, 2)})
    assert hook_count(model) == 0


def test_resample_ablation_refuses_a_part_of_the_model_after_a_whole_forward() -> None:
    model = tiny_cnn(seed=11)
    x = torch.randn(2, 3, 8, 8)
    gm = GatedModel.discover(model, x[:1])
    under = gm.with_intervention(ResampleAblation(torch.randn(4, 3, 8, 8)))
    with torch.no_grad(), under.gate({"features.1": torch.zeros(2, 4)}):
        model(x)  # donors of x exist now, but a part of the model must not reuse them
        with pytest.raises(LayerError, match="no donor activation"):
            model.features(x)


class _PaddedConv(nn.Conv2d):
    """A conv owning its padding module, as EfficientNet-Lite's 'same' convs do."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3)
        self.pad = nn.ZeroPad2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pad(x))


class _WrappedConv(nn.Conv2d):
    """A conv whose forward runs a child conv first: one layer, not two."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cout, cout, 1)
        self.inner = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.inner(x))


class _ScaledSiLU(nn.SiLU):
    """An activation with a child module."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(super().forward(x))


def test_layers_and_activations_with_children_are_found() -> None:
    model = nn.Sequential(
        _PaddedConv(3, 4), nn.ReLU6(), _WrappedConv(4, 5), _ScaledSiLU(), nn.Flatten()
    ).eval()
    x = torch.randn(2, 3, 5, 5)
    sites = discover_sites(model, x[:1])
    assert [(s.name, s.kind, s.shape) for s in sites] == [
        ("1", "conv", (4, 5, 5)),
        ("3", "conv", (5, 5, 5)),
    ]
    gm = GatedModel.discover(model, x[:1])
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]])
    with torch.no_grad():
        expected = nn.functional.silu(model[2](model[1](model[0](x)))) * mask[:, :, None, None]
        assert torch.equal(gm.forward(x, {"3": mask}), expected.flatten(1))


def test_functional_fallback_counts_a_conv_with_children_once() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = _PaddedConv(1, 2), _WrappedConv(2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.b(torch.relu(self.a(x)))).mean(dim=(2, 3))

    sites = discover_sites(Functional(), torch.zeros(1, 1, 4, 4))
    assert [(s.name, s.kind) for s in sites] == [("a", "conv"), ("b", "conv")]


class _Tokens(nn.Module):
    """Patches of 2 -> tokens ``[B, T, D]`` -> MLP (Linear, GELU, Linear) -> mean -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 3, 2, stride=2)
        self.norm = nn.LayerNorm(3)
        self.mlp = nn.Sequential(nn.Linear(3, 5), nn.GELU(), nn.Linear(5, 3))
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head((tokens + self.mlp(self.norm(tokens))).mean(dim=1))


class _ChannelsLast(nn.Module):
    """A ConvNeXt-style block: depthwise conv, permute to ``[B, H, W, C]``, pointwise MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(2, 2, 3, padding=1, groups=2)
        self.up, self.act, self.down = nn.Linear(2, 4), nn.GELU(), nn.Linear(4, 2)
        self.head = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(self.act(self.up(self.dw(x).permute(0, 2, 3, 1))))
        return self.head(y.mean(dim=(1, 2)))


@pytest.mark.parametrize(
    ("model", "inputs", "shape", "unit_dim", "hidden"),
    [
        (_Tokens(), (1, 4, 4), (4, 5), 1, lambda m, x: m.mlp[0](m.norm(m.patch(x).flatten(2).mT))),
        (_ChannelsLast(), (2, 3, 3), (3, 3, 4), 2, lambda m, x: m.up(m.dw(x).permute(0, 2, 3, 1))),
    ],
    ids=["tokens", "channels-last"],
)
def test_token_wise_mlp_activations_have_units_on_the_last_dimension(
    model: nn.Module, inputs: tuple[int, ...], shape: tuple[int, ...], unit_dim: int, hidden
) -> None:
    torch.manual_seed(0)
    model = model.eval()
    x = torch.randn(2, *inputs)
    gm = GatedModel.discover(model, x[:1])
    (site,) = gm.sites
    assert (site.kind, site.shape, site.unit_dim, site.units) == (
        "token",
        shape,
        unit_dim,
        shape[-1],
    )
    mask = (torch.rand(2, site.units) > 0.5).float()
    with torch.no_grad(), gm.gate({site.name: mask}, record=True) as recording:
        model(x)
        # literal: hidden unit j of the MLP dropped at every token / position
        units_last = mask.reshape(2, *[1] * (len(shape) - 1), -1)
        expected = nn.functional.gelu(hidden(model, x)) * units_last
    assert torch.equal(recording.activations[site.name], expected)


class _TableBias(nn.Module):
    """Runs a small MLP on a fixed coordinate table (no batch dimension), as Swin V2's
    continuous position bias does, and adds the result to a conv stage."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU()
        self.table_mlp = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
        self.register_buffer("table", torch.randn(1, 3, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.table_mlp(self.table).permute(0, 3, 1, 2)
        return (self.relu(self.conv(x)) + bias).mean(dim=(2, 3))


def test_computations_without_the_batch_dimension_are_not_sites() -> None:
    model = _TableBias().eval()
    for batch in (1, 2):
        assert [s.name for s in discover_sites(model, torch.zeros(batch, 1, 3, 3))] == ["relu"]
    with pytest.raises(LayerError, match="'table_mlp.1' does not output a \\[B, C, ...\\] tensor"):
        discover_sites(model, torch.zeros(1, 1, 3, 3), layers=["table_mlp.1"])


def test_no_gateable_layers_message_says_what_was_found() -> None:
    with pytest.raises(LayerError, match="no gateable layers.*include_fc=True to gate the 1"):
        GatedModel.discover(HandModel(), torch.zeros(1, 2))
    with pytest.raises(LayerError, match="no gateable layers: no activation module after a conv"):
        GatedModel.discover(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), torch.zeros(1, 2))
    with pytest.raises(LayerError, match="no layer was selected"):
        GatedModel.discover(tiny_cnn(), torch.zeros(1, 3, 8, 8), layers=(nn.LSTM,))


def test_calls_per_forward_without_discovery_and_across_interventions() -> None:
    model = _Outer().eval()
    x = torch.randn(2, 1, 4, 4)
    discovered = GatedModel.discover(model, x[:1])
    built = GatedModel(model, discovered.sites, discovered.input_shape)
    assert built.calls_per_forward == {"stem.1": 1, "block.relu": None}  # None: several
    resample = ResampleAblation(torch.randn(3, 1, 4, 4))
    assert discovered.with_intervention(resample).calls_per_forward == {
        "stem.1": 1,
        "block.relu": 2,
    }
    with (
        torch.no_grad(),
        built.gate({"block.relu#0": torch.ones(2, 2)}),
        pytest.raises(LayerError, match="'block.relu' is called several times"),
    ):
        model.block(model.stem(x))
    with pytest.raises(LayerError, match="site 'block.relu#1' is call #1"):
        GatedModel(
            model, discovered.sites, (1, 4, 4), calls_per_forward={"stem.1": 1, "block.relu": 1}
        )
