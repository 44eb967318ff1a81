"""Pathway Gradient, Grad-CAM on the pathway model, the method registry and Quantus adapter."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam, NoiseTunnel, Saliency
from test_critical import ArgmaxNet
from torch import Tensor, nn

from neuralpath.attribution import (
    ATTENTION_METHODS,
    METHOD_NAMES,
    PATHWAY_METHODS,
    PathwayGradCAM,
    PathwayGradient,
    explainer_factory,
    make_attribution_method,
    make_explainer,
    pathway_options,
    quantus_explain_func,
    rebind_finder,
    signed_max_abs,
    zero_maps,
)
from neuralpath.errors import InputError, LayerError
from neuralpath.gating import GatedModel
from neuralpath.methods import FinderOptions, build_finder
from neuralpath.methods.baselines import RandomPathway
from neuralpath.methods.critical import NeuronIntGrad, NeuronMCT
from neuralpath.pathway import Pathway

from contract import (
    check_batch_equals_loop,
    check_cleans_up_after_raise,
    check_leaves_model_unchanged,
)
from toys import tiny_cnn

torch.set_num_threads(1)


def _setup(
    seed: int = 0, batch: int = 4, double: bool = True
) -> tuple[nn.Module, GatedModel, Tensor]:
    model = tiny_cnn(seed)
    inputs = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed + 10))
    if double:
        model, inputs = model.double(), inputs.double()
    return model, GatedModel.discover(model, inputs, include_fc=True), inputs


def _input_gradient(model: nn.Module, inputs: Tensor, cls: Tensor) -> Tensor:
    x = inputs.clone().requires_grad_(True)
    return torch.autograd.grad(model(x).gather(1, cls[:, None]).sum(), x)[0]


def test_full_pathway_equals_plain_gradient_and_captum_saliency() -> None:
    model, gated, inputs = _setup()
    cls = model(inputs).argmax(1)
    for finder in (NeuronMCT(gated, sparsity=0.0), NeuronIntGrad(gated, sparsity=0.0, steps=2)):
        pg = PathwayGradient(gated, finder).attribute(inputs)
        assert pg.shape == inputs.shape and pg.dtype == inputs.dtype
        torch.testing.assert_close(pg, _input_gradient(model, inputs, cls), rtol=1e-12, atol=1e-14)
        saliency = Saliency(model).attribute(
            inputs.clone().requires_grad_(True), target=cls, abs=False
        )
        torch.testing.assert_close(pg, saliency, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        make_explainer("gradient", gated)(inputs, None), _input_gradient(model, inputs, cls)
    )


@pytest.mark.parametrize("granularity", ["element", "channel"])
def test_active_pathway_gradient_equals_captum_saliency(granularity) -> None:
    """Units with ``a <= 0`` after a ReLU pass neither signal nor gradient: dropping exactly them
    (the ``active`` finder) leaves the input gradient unchanged."""
    model, gated, inputs = _setup(seed=2)
    cls = model(inputs).argmax(1)
    active = build_finder("active", gated, FinderOptions(granularity=granularity))
    assert active.find(inputs).kept_fraction().max() < 1.0  # some units are dropped
    pg = PathwayGradient(gated, active).attribute(inputs)
    saliency = Saliency(model).attribute(inputs.clone().requires_grad_(True), target=cls, abs=False)
    torch.testing.assert_close(pg, saliency, rtol=1e-12, atol=1e-14)


def test_pathway_gradient_equals_literal_masked_gradient() -> None:
    model, gated, inputs = _setup(seed=1)
    finder = NeuronMCT(gated, sparsity=0.8)
    pathway = finder.find(inputs)
    cls = model(inputs).argmax(1)
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_hook(lambda _m, _i, out, mask=mask: out * mask.to(out.dtype))
        for name, mask in pathway.items()
    ]
    try:
        expected = _input_gradient(model, inputs, cls)
    finally:
        for handle in handles:
            handle.remove()
    pg = PathwayGradient(gated, finder).attribute(inputs)
    torch.testing.assert_close(pg, expected, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(pg, _input_gradient(model, inputs, cls))
    # a pathway with a whole layer removed passes no gradient at all
    empty = Pathway(
        {n: torch.zeros_like(m) if n == "features.4" else m for n, m in pathway.items()}, "element"
    )
    with pytest.warns(UserWarning, match=r"4 of 4 .* all zero: .*keep no unit of features\.4"):
        maps = PathwayGradient(gated).attribute(inputs, cls, pathway=empty)
    assert bool((maps == 0).all()) and zero_maps(maps).tolist() == [True] * 4
    one_cut = Pathway(
        {n: torch.cat([m[:1] * 0, m[1:]]) if n == "features.4" else m for n, m in pathway.items()},
        "element",
    )
    with pytest.warns(UserWarning, match=r"^1 of 4 Pathway Gradient maps"):
        maps = PathwayGradient(gated).attribute(inputs, cls, pathway=one_cut)
    assert zero_maps(maps).tolist() == [True, False, False, False]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pathway that passes gradient: no warning
        PathwayGradient(gated).attribute(inputs, cls, pathway=pathway)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pathway_model_is_locally_linear(seed: int) -> None:
    """On a ReLU net, ``H_P(x + δ) = H_P(x) + PG · δ`` up to float64 rounding, unlike the full net.

    Every ReLU is gated (``include_fc``), at 90 % sparsity with element units. NeuronMCT drops every
    inactive unit (score 0) and the barely active ones (small ``|a · ∂y/∂a|``): exactly the units
    whose on/off state a small δ (here ``0.01 · N(0, 1)`` per pixel) flips. The kept units sit far
    from their ReLU kink, so ``H_P`` with ``P`` fixed is affine in a ball around x and its gradient
    is the exact linear coefficient, while the full network changes activation pattern within the
    same δ and its first-order error is many orders of magnitude larger.
    """
    model, gated, inputs = _setup(seed=seed, batch=8)
    inputs = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(seed)).double()
    finder = NeuronMCT(gated, sparsity=0.9)
    pathway, cls = finder.find_with_target(inputs)
    pg = PathwayGradient(gated).attribute(inputs, cls, pathway=pathway)
    full = _input_gradient(model, inputs, cls)
    delta = 0.01 * torch.randn(inputs.shape, generator=torch.Generator().manual_seed(9)).double()

    def first_order_error(masks: Pathway | None, grad: Tensor) -> Tensor:
        with torch.no_grad():
            y = lambda z: gated.forward(z, masks).gather(1, cls[:, None])[:, 0]  # noqa: E731
            return (y(inputs + delta) - y(inputs) - (grad * delta).flatten(1).sum(1)).abs()

    path_error, full_error = first_order_error(pathway, pg), first_order_error(None, full)
    assert float(path_error.max()) < 1e-12
    assert float(full_error.max()) > 1e-7
    assert float(full_error.max()) > 1e6 * float(path_error.max())


def test_noise_tunnel_averages_pathway_gradients_of_noisy_copies() -> None:
    _, gated, inputs = _setup(seed=3, batch=2)
    pg = PathwayGradient(gated, NeuronMCT(gated, sparsity=0.7))
    torch.manual_seed(123)
    smooth = NoiseTunnel(pg).attribute(inputs, nt_type="smoothgrad", nt_samples=3, stdevs=0.2)
    torch.manual_seed(123)
    noise = torch.normal(0, torch.tensor(0.2).repeat((6, 3, 8, 8)))  # as Captum draws it
    noisy = inputs.repeat_interleave(3, dim=0) + noise
    expected = pg.attribute(noisy).reshape(2, 3, 3, 8, 8).mean(dim=1)
    assert smooth.shape == inputs.shape
    torch.testing.assert_close(smooth, expected, rtol=1e-10, atol=1e-12)
    squared = NoiseTunnel(pg).attribute(
        inputs, nt_type="smoothgrad_sq", nt_samples=2, stdevs=0.1, target=1
    )
    assert squared.shape == inputs.shape and bool((squared >= 0).all())


def _methods(gated: GatedModel) -> dict[str, PathwayGradient | PathwayGradCAM]:
    return {
        "pg-mct-element": PathwayGradient(gated, NeuronMCT(gated, sparsity=0.7)),
        "pg-intgrad-channel": PathwayGradient(
            gated, NeuronIntGrad(gated, sparsity=0.5, granularity="channel", steps=3)
        ),
        "pg-greedy": PathwayGradient(
            gated, build_finder("greedy", gated, FinderOptions(sparsity=0.6))
        ),
        "cam-mct": PathwayGradCAM(gated, NeuronMCT(gated, sparsity=0.7)),
    }


def test_contract() -> None:
    model = tiny_cnn(2, inplace=True)
    inputs = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    gated = GatedModel.discover(model, inputs)
    for name, method in _methods(gated).items():
        check_leaves_model_unchanged(model, method.attribute, inputs)
        check_cleans_up_after_raise(model, model.features[2], method.attribute, inputs)
        check_batch_equals_loop(method.attribute, inputs)
        check_batch_equals_loop(method.attribute, inputs, torch.tensor([0, 2, 1, 1]))
        assert method.attribute(inputs).shape[0] == 4, name
    finder = build_finder("cp-mct", gated, pathway_options())
    for name in (m for m in METHOD_NAMES if m not in ATTENTION_METHODS):  # see test_rollout.py
        explain = make_explainer(name, gated, finder if name in PATHWAY_METHODS else None)
        check_leaves_model_unchanged(model, explain, inputs)
        check_batch_equals_loop(explain, inputs)
        assert explain(inputs, None).shape[1] == (1 if "cam" in name else 3)


def test_pathway_grad_cam_at_sparsity_zero_equals_captum_layer_grad_cam() -> None:
    model, gated, inputs = _setup(seed=4)
    cls = model(inputs).argmax(1)
    cam = PathwayGradCAM(gated, NeuronMCT(gated, sparsity=0.0)).attribute(inputs)
    assert cam.shape == (4, 1, 8, 8) and bool((cam >= 0).all())
    layer = LayerGradCam(model, model.features[4]).attribute(
        inputs, target=cls, relu_attributions=True
    )
    expected = LayerAttribution.interpolate(layer, (8, 8), interpolate_mode="bilinear")
    torch.testing.assert_close(cam, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(make_explainer("grad-cam", gated)(inputs, None), expected)


def test_pathway_grad_cam_uses_gated_activations() -> None:
    model, gated, inputs = _setup(seed=5)
    finder = NeuronMCT(gated, sparsity=0.8)
    pathway, cls = finder.find_with_target(inputs)
    modules = dict(model.named_modules())
    seen: dict[str, Tensor] = {}

    def hook(_m: nn.Module, _i: object, out: Tensor, name: str) -> Tensor:
        masked = out * pathway[name].to(out.dtype)
        if name == "features.4":
            masked.retain_grad()
            seen["a"] = masked
        return masked

    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: hook(m, i, o, n)) for n in pathway
    ]
    try:
        model(inputs).gather(1, cls[:, None]).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    a, grad = seen["a"].detach(), seen["a"].grad
    raw = (grad.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp_min(0)
    expected = nn.functional.interpolate(raw, size=(8, 8), mode="bilinear", align_corners=False)
    cam = PathwayGradCAM(gated, finder, layer="features.4").attribute(inputs)
    torch.testing.assert_close(cam, expected, rtol=1e-12, atol=1e-14)
    with pytest.raises(LayerError):
        PathwayGradCAM(gated, finder, layer="classifier.2")  # not spatial


def test_signed_max_abs_by_hand() -> None:
    attr = torch.tensor(
        [[[[1.0, -4.0]], [[-2.0, 3.0]], [[0.5, 0.0]]], [[[0.0, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]]]]
    )  # [2, 3, 1, 2]
    shown = signed_max_abs(attr)
    assert shown.shape == (2, 1, 2)
    torch.testing.assert_close(shown[0], torch.tensor([[-0.5, -1.0]]))
    torch.testing.assert_close(shown[1], torch.zeros(1, 2))
    with pytest.raises(InputError):
        signed_max_abs(torch.zeros(3, 4))


def test_quantus_explain_func_numpy_in_and_out() -> None:
    model = tiny_cnn(6)
    x = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2])
    maps = quantus_explain_func(model, x, y, sparsity=0.8)
    assert isinstance(maps, np.ndarray) and maps.shape == x.shape and maps.dtype == np.float32
    gated = GatedModel.discover(model, torch.from_numpy(x))
    expected = PathwayGradient(gated, NeuronMCT(gated, sparsity=0.8)).attribute(
        torch.from_numpy(x), torch.from_numpy(y)
    )
    np.testing.assert_allclose(maps, expected.numpy(), rtol=1e-6, atol=1e-8)
    cam = quantus_explain_func(model, x, y, method="pathway-grad-cam", finder="cp-intgrad")
    assert cam.shape == (3, 1, 8, 8)
    with pytest.raises(InputError, match="unexpected"):
        quantus_explain_func(model, x, y, softmax=True)


def test_bad_inputs() -> None:
    _, gated, inputs = _setup(double=False)
    pg = PathwayGradient(gated, NeuronMCT(gated, sparsity=0.5))
    cam = PathwayGradCAM(gated, NeuronMCT(gated, sparsity=0.5))
    for method in (pg, cam):
        with pytest.raises(InputError, match="out of range"):
            method.attribute(inputs, target=3)
        with pytest.raises(InputError, match="empty batch"):
            method.attribute(inputs[:0])
        with pytest.raises(InputError, match="tuple"):
            method.attribute((inputs, inputs))  # type: ignore[arg-type]
        with pytest.raises(InputError, match="samples for a batch"):
            method.attribute(inputs, pathway=NeuronMCT(gated).find(inputs[:2]))
    with pytest.raises(InputError, match="sparsity"):
        make_attribution_method("pathway-gradient", sparsity=1.0)
    with pytest.raises(InputError, match="unknown attribution method"):
        make_attribution_method("lime")
    with pytest.raises(InputError, match="needs a finder"):
        PathwayGradient(gated).attribute(inputs)
    other = GatedModel.discover(tiny_cnn(1), inputs)
    with pytest.raises(InputError, match="different GatedModel"):
        PathwayGradient(gated, NeuronMCT(other))
    with pytest.raises(InputError, match="takes no pathway finder"):
        make_explainer("gradient", gated, NeuronMCT(gated))
    with pytest.raises(InputError, match="needs a pathway finder"):
        make_explainer("pathway-gradient", gated)
    with pytest.raises(InputError, match="unknown attribution method"):
        make_explainer("lime", gated)
    with pytest.raises(InputError, match="unexpected keywords"):
        make_attribution_method("pathway-gradient", temperature=2)
    # one-sample pathways broadcast over the batch
    one = RandomPathway(gated, sparsity=0.5).find(inputs[:1])
    assert PathwayGradient(gated).attribute(inputs, pathway=one).shape == inputs.shape


def test_non_differentiable_model_gives_clear_error() -> None:
    model = ArgmaxNet().eval()
    inputs = torch.randn(2, 3, 8, 8)
    gated = GatedModel.discover(model, inputs)
    pathway = RandomPathway(gated, sparsity=0.5).find(inputs)
    with pytest.raises(InputError, match="no gradient"):
        PathwayGradient(gated).attribute(inputs, pathway=pathway)
    with pytest.raises(InputError, match="no gradient"):
        PathwayGradient(gated, NeuronMCT(gated)).attribute(inputs)
    with pytest.raises(InputError, match="no gradient"):
        PathwayGradCAM(gated, RandomPathway(gated), layer="relu").attribute(inputs)


def test_cli_attribute_writes_maps_meta_and_overlays(tmp_path, capsys) -> None:
    from neuralpath.checkpoint import TargetMeta, save_target
    from neuralpath.cli import main
    from neuralpath.data import SYNTHETIC_CLASSES
    from neuralpath.io import load_tensors, read_json
    from neuralpath.models import build_model

    torch.manual_seed(0)
    args = {"num_classes": 4, "in_channels": 3, "input_size": 32, "width": 0.125}
    meta = TargetMeta(
        arch="vgg11", arch_args=args, data="synthetic", input_shape=(3, 32, 32), num_classes=4,
        class_names=list(SYNTHETIC_CLASSES), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
    )  # fmt: skip
    save_target(tmp_path / "ck", build_model("vgg11", **args).eval(), meta)
    out = tmp_path / "maps"
    common = [
        "--checkpoint",
        str(tmp_path / "ck"),
        "--data",
        "synthetic",
        "--limit",
        "3",
        "--no-progress",
    ]
    code = main(
        [
            "attribute",
            *common,
            "--method",
            "pathway-gradient",
            "--sparsity",
            "0.8",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    summary = __import__("json").loads(capsys.readouterr().out)
    assert summary["n"] == 3 and summary["finder"] == "cp-mct" and summary["overlays"] == 3
    assert summary["zero_maps"] == 0
    tensors, stored = load_tensors(out / "maps.safetensors")
    assert tensors["maps"].shape == (3, 3, 32, 32) and tensors["display"].shape == (3, 32, 32)
    assert stored == read_json(out / "meta.json") and stored["method"] == "pathway-gradient"
    assert sorted(p.name for p in (out / "overlays").iterdir()) == [
        "00000.png",
        "00001.png",
        "00002.png",
    ]
    assert (out / "overlays" / "00000.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code = main(
        ["attribute", *common, "--method", "grad-cam", "--no-png", "--out", str(tmp_path / "c")]
    )
    assert code == 0 and load_tensors(tmp_path / "c" / "maps.safetensors")[0]["maps"].shape == (
        3,
        1,
        32,
        32,
    )
    capsys.readouterr()
    bad = main(
        [
            "attribute",
            *common,
            "--method",
            "pathway-gradient",
            "--sparsity",
            "1.2",
            "--out",
            str(out),
        ]
    )
    assert bad == 2 and "sparsity" in capsys.readouterr().err

    cut = ["--method", "pathway-gradient", "--granularity", "channel", "--sparsity", "0.99"]
    code = main([
        "attribute", *common, *cut, "--set", "min_per_layer=0", "--no-png",
        "--out", str(tmp_path / "repaired"),
    ])  # fmt: skip
    printed = capsys.readouterr()  # the default connecting repair widens the emptied pathways
    assert code == 0 and __import__("json").loads(printed.out)["zero_maps"] == 0
    assert "warning" not in printed.err
    code = main([
        "attribute", *common, *cut, "--set", "min_per_layer=0", "--set", "connect=false",
        "--no-png", "--out", str(tmp_path / "cut"),
    ])  # fmt: skip
    printed = capsys.readouterr()
    assert code == 0 and __import__("json").loads(printed.out)["zero_maps"] == 3
    assert printed.err.splitlines() == [
        "neuralpath: warning: 3 of 3 maps are all zero (see --granularity, --sparsity)"
    ]  # one line for the run, not one Python warning per batch
    assert read_json(tmp_path / "cut" / "meta.json")["zero_maps"] == 3


class ReusedReLU(nn.Module):
    """One ReLU module called twice (like torchvision ResNet blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.relu(self.conv2(self.relu(self.conv1(x)))).mean(dim=(2, 3)))


def test_grad_cam_on_a_reused_module_call() -> None:
    torch.manual_seed(0)
    model = ReusedReLU().double().eval()
    inputs = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    gated = GatedModel.discover(model, inputs)
    assert gated.site_names == ["relu#0", "relu#1"]
    cam = make_explainer("grad-cam", gated)(inputs, None)
    # Captum on an equivalent model with two separate ReLU modules
    twin = nn.Sequential(model.conv1, nn.ReLU(), model.conv2, nn.ReLU())
    full = lambda x: model.fc(twin(x).mean(dim=(2, 3)))  # noqa: E731
    cls = model(inputs).argmax(1)
    layer = LayerGradCam(full, twin[3]).attribute(inputs, target=cls, relu_attributions=True)
    expected = LayerAttribution.interpolate(layer, (8, 8), interpolate_mode="bilinear")
    torch.testing.assert_close(cam, expected, rtol=1e-12, atol=1e-14)


class Shifted(nn.Module):
    """A classifier with a second forward argument (Captum's ``additional_forward_args``)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn(7).double()

    def forward(self, x: Tensor, shift: Tensor | None = None) -> Tensor:
        logits = self.net(x)
        return logits if shift is None else logits + shift


def test_pathway_methods_take_captums_additional_forward_args() -> None:
    """The extra arguments reach every forward: target resolution, the finder and ``H_P``. A
    shift that makes another class the prediction explains that class (it is constant in x)."""
    model = Shifted().eval()
    inputs = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4)).double()
    gated = GatedModel.discover(model, inputs)
    other = (model(inputs).argmax(1) + 1) % 3
    shift = 1e3 * nn.functional.one_hot(other, 3).double()
    for method in (
        PathwayGradient(gated, NeuronMCT(gated, sparsity=0.7)),
        PathwayGradCAM(gated, NeuronMCT(gated, sparsity=0.7)),
    ):
        shifted = method.attribute(inputs, additional_forward_args=shift)
        torch.testing.assert_close(shifted, method.attribute(inputs, other), rtol=1e-12, atol=1e-14)
        assert not torch.allclose(shifted, method.attribute(inputs))
        torch.testing.assert_close(method.attribute(inputs, None, (shift,)), shifted)
    pg = PathwayGradient(gated, NeuronMCT(gated, sparsity=0.7))
    smooth = NoiseTunnel(pg).attribute(
        inputs, nt_type="smoothgrad", nt_samples=2, stdevs=0.0, additional_forward_args=shift
    )
    torch.testing.assert_close(smooth, pg.attribute(inputs, other), rtol=1e-12, atol=1e-14)
    assert model._forward_pre_hooks == {}  # the hook that passes them is removed


def test_explainers_are_built_once_per_gated_model(monkeypatch) -> None:
    import neuralpath.attribution as attribution

    built = []
    real = attribution.build_finder
    monkeypatch.setattr(attribution, "build_finder", lambda *a: built.append(a[0]) or real(*a))
    _, gated, inputs = _setup()
    method = make_attribution_method("pathway-gradient", finder="cp-intgrad", sparsity=0.6)
    first = method(gated, inputs)
    for _ in range(3):
        torch.testing.assert_close(method(gated, inputs[:2]), first[:2])
    assert built == ["cp-intgrad"]
    method(GatedModel.discover(gated.model, inputs), inputs)  # another gated model: built again
    assert built == ["cp-intgrad", "cp-intgrad"]


def test_factory_rebinds_the_finder_and_recomputes_mean_ablation_for_a_copy() -> None:
    """A changed copy gets the same sites and a rebound finder (nothing rebuilt), and under mean
    ablation the per-unit means of the copy, not the trained model's."""
    import copy

    from neuralpath.interventions import MeanAblation
    from neuralpath.reference import reference_statistics

    model, gated, inputs = _setup(seed=3)
    images = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(8)).double()
    under = gated.with_intervention(
        MeanAblation(reference_statistics(gated, images, progress=False))
    )
    finder = NeuronMCT(under, sparsity=0.7)
    factory = explainer_factory("pathway-gradient", under, finder, reference_images=images)
    assert factory(model) is factory(model)  # the trained model's explainer, built once
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.features[0].weight.mul_(-1.5)
    got = factory(changed)(inputs, None)

    plain = GatedModel.discover(changed, inputs, include_fc=True)
    mean = MeanAblation(reference_statistics(plain, images, progress=False))
    own = plain.with_intervention(mean)
    expected = PathwayGradient(own, NeuronMCT(own, sparsity=0.7)).attribute(inputs)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    stale = plain.with_intervention(under.intervention)  # the trained model's means
    assert not torch.allclose(
        got, PathwayGradient(stale, NeuronMCT(stale, sparsity=0.7)).attribute(inputs)
    )
    with pytest.raises(InputError, match="reference images"):
        explainer_factory("pathway-gradient", under, finder)(changed)

    rebound = rebind_finder(finder, own)
    assert rebound.gated is own and finder.gated is under and rebound.sparsity == 0.7
    with pytest.raises(InputError, match="layers"):
        rebind_finder(finder, GatedModel.discover(model, inputs))  # fewer sites
