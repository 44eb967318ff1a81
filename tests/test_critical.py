"""Critical pathways (NeuronMCT, NeuronIntGrad) against slow, literal float64 re-implementations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from neuralpath.errors import InputError
from neuralpath.gating import GatedModel
from neuralpath.methods import FinderOptions, build_finder, finder_names
from neuralpath.methods.critical import NeuronIntGrad, NeuronMCT, alpha_steps, taylor_scores

from contract import (
    check_batch_equals_loop,
    check_cleans_up_after_raise,
    check_leaves_model_unchanged,
)
from toys import HandModel, tiny_cnn

torch.set_num_threads(1)


def _double_setup(seed: int = 0, batch: int = 3) -> tuple[nn.Module, GatedModel, Tensor]:
    model = tiny_cnn(seed).double()
    inputs = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed + 1)).double()
    return model, GatedModel.discover(model, inputs, include_fc=True), inputs


def _literal_forward(
    model: nn.Module, gated: GatedModel, x: Tensor, scale: dict[str, float] | None = None
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Forward with plain hooks: ``(logits, raw outputs a, scaled outputs kept in the graph)``."""
    modules = dict(model.named_modules())
    raw, used, handles = {}, {}, []
    for site in gated.sites:

        def hook(_m: nn.Module, _i: object, out: Tensor, name: str = site.name) -> Tensor:
            raw[name] = out.detach().clone()
            factor = (scale or {}).get(name)
            scaled = out if factor is None else out * factor
            scaled.retain_grad()
            used[name] = scaled
            return scaled

        handles.append(modules[site.module_name].register_forward_hook(hook))
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return logits, raw, used


def _literal_taylor(model: nn.Module, gated: GatedModel, inputs: Tensor) -> dict[str, Tensor]:
    """``|a · ∂y_c/∂a|`` one sample at a time, via ``retain_grad`` on each site's output."""
    rows: dict[str, list[Tensor]] = {s.name: [] for s in gated.sites}
    for i in range(inputs.shape[0]):
        x = inputs[i : i + 1].clone().requires_grad_(True)
        logits, raw, used = _literal_forward(model, gated, x)
        logits[0, int(logits[0].argmax())].backward()
        for name in rows:
            rows[name].append((raw[name] * used[name].grad).abs())
    return {name: torch.cat(r) for name, r in rows.items()}


def test_mct_hand_model_by_hand() -> None:
    """x = (1, 2): a = relu(1, 2, -1) = (1, 2, 0), y = (5, 0), c = 0, ∂y_0/∂a = (1, 2, 3)."""
    model = HandModel()
    x = torch.tensor([[1.0, 2.0]])
    gated = GatedModel.discover(model, x, include_fc=True)
    scores = NeuronMCT(gated).scores(x)
    assert list(scores) == ["act"]
    torch.testing.assert_close(scores["act"], torch.tensor([[1.0, 4.0, 0.0]]))
    # Keeping one of three units keeps unit 1 (score 4); for class 1 the scores are (1, 1, 0).
    pathway = NeuronMCT(gated, sparsity=0.6).find(x)
    assert pathway["act"].tolist() == [[False, True, False]]
    torch.testing.assert_close(
        NeuronMCT(gated).scores(x, target=1)["act"], torch.tensor([[1.0, 1.0, 0.0]])
    )


def test_mct_element_scores_equal_literal_autograd() -> None:
    model, gated, inputs = _double_setup()
    scores = NeuronMCT(gated, granularity="element").scores(inputs)
    expected = _literal_taylor(model, gated, inputs)
    assert set(scores) == {"features.1", "features.4", "classifier.2"}
    for name, value in expected.items():
        assert scores[name].dtype == torch.float64
        torch.testing.assert_close(scores[name], value, rtol=1e-12, atol=1e-14)
    assert all(bool((s > 0).any()) for s in scores.values())


def test_mct_channel_scores_are_spatial_sums_of_element_scores() -> None:
    _, gated, inputs = _double_setup(seed=3)
    element = NeuronMCT(gated, granularity="element").scores(inputs)
    channel = NeuronMCT(gated, granularity="channel").scores(inputs)
    for name, value in element.items():
        summed = value.sum(dim=(2, 3)) if value.dim() == 4 else value
        assert channel[name].shape == summed.shape
        torch.testing.assert_close(channel[name], summed, rtol=1e-12, atol=1e-14)


def _literal_intgrad(
    model: nn.Module, gated: GatedModel, inputs: Tensor, alphas: list[float]
) -> dict[str, Tensor]:
    """Per sample, per layer, per α: scale that layer alone, take ∂y_c/∂(α a); average; |a · mean|."""
    out: dict[str, list[Tensor]] = {s.name: [] for s in gated.sites}
    for i in range(inputs.shape[0]):
        x = inputs[i : i + 1]
        with torch.no_grad():
            cls = int(model(x)[0].argmax())
        for site in gated.sites:
            grads = []
            raw = None
            for alpha in alphas:
                logits, raw_out, used = _literal_forward(model, gated, x, {site.name: alpha})
                logits[0, cls].backward()
                grads.append(used[site.name].grad)
                raw = raw_out[site.name]
            out[site.name].append((raw * torch.stack(grads).mean(dim=0)).abs())
    return {name: torch.cat(rows) for name, rows in out.items()}


@pytest.mark.parametrize("schedule", ["uniform", "cumulative"])
def test_intgrad_equals_literal_per_layer_per_alpha_loop(schedule: str) -> None:
    model, gated, inputs = _double_setup(seed=5, batch=2)
    finder = NeuronIntGrad(gated, steps=4, alpha_schedule=schedule, granularity="element")
    scores = finder.scores(inputs)
    expected = _literal_intgrad(model, gated, inputs, alpha_steps(4, schedule))
    for name, value in expected.items():
        torch.testing.assert_close(scores[name], value, rtol=1e-11, atol=1e-13)
    # Channel granularity sums the element scores; passes of few rows give the same result.
    chunked = NeuronIntGrad(
        gated, steps=4, alpha_schedule=schedule, granularity="channel", internal_batch_size=3
    ).scores(inputs)
    for name, value in expected.items():
        summed = value.sum(dim=(2, 3)) if value.dim() == 4 else value
        torch.testing.assert_close(chunked[name], summed, rtol=1e-11, atol=1e-13)


def test_alpha_schedules() -> None:
    assert alpha_steps(10) == [k / 10 for k in range(11)]
    cumulative = alpha_steps(10, "cumulative")
    assert cumulative[:4] == pytest.approx([0.0, 0.1, 0.3, 0.6])
    assert cumulative[-1] == pytest.approx(5.5)
    with pytest.raises(InputError):
        alpha_steps(0)
    with pytest.raises(InputError):
        alpha_steps(10, "log")  # type: ignore[arg-type]


def _literal_global_masks(scores: dict[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """Per sample: sort all scores, threshold = the round(s·N)-th smallest, keep those above."""
    masks: dict[str, list[Tensor]] = {n: [] for n in scores}
    batch = next(iter(scores.values())).shape[0]
    for i in range(batch):
        every = sorted(float(v) for s in scores.values() for v in s[i].reshape(-1))
        drop = round(sparsity * len(every))
        threshold = every[drop - 1]
        for name, s in scores.items():
            masks[name].append(s[i : i + 1] > threshold)
    return {n: torch.cat(m) for n, m in masks.items()}


@pytest.mark.parametrize("granularity", ["element", "channel"])
@pytest.mark.parametrize("method", ["cp-mct", "cp-intgrad"])
def test_global_selection_equals_literal_threshold(method: str, granularity: str) -> None:
    """``min_per_layer=0``: the paper's rule exactly; the default 1 adds the top unit of each
    layer the rule empties (this toy's channel pathways at 0.8 empty ``features.1``)."""
    _, gated, inputs = _double_setup(seed=7)
    paper = {"min_per_layer": 0, "connect": False}
    options = FinderOptions(sparsity=0.8, granularity=granularity, settings=paper)  # type: ignore[arg-type]
    finder = build_finder(method, gated, options)
    pathway = finder.find(inputs)
    scores = finder.scores(inputs)  # type: ignore[attr-defined]
    expected = _literal_global_masks(scores, 0.8)
    assert pathway.granularity == granularity and pathway.is_binary
    for name, mask in expected.items():
        assert torch.equal(pathway[name], mask)
    assert pathway.metadata["method"] == method
    default = build_finder(method, gated, FinderOptions(sparsity=0.8, granularity=granularity))  # type: ignore[arg-type]
    kept = default.find(inputs)
    for name, mask in expected.items():
        flat = mask.reshape(3, -1)
        top = flat.new_zeros(flat.shape).scatter(
            1, scores[name].reshape(3, -1).argmax(1, True), True
        )
        empty = ~flat.any(dim=1, keepdim=True)
        assert torch.equal(kept[name].reshape(3, -1), flat | (empty & top))
    assert granularity == "element" or any(not m.any() for m in expected.values())
    # Units that are inactive score 0 and are dropped first.
    _, raw, _ = _literal_forward(gated.model, gated, inputs)
    if granularity == "element":
        for name, mask in pathway.items():
            assert not bool((mask & (raw[name] <= 0)).any())


def test_per_layer_topk_selection_keeps_count_per_layer() -> None:
    _, gated, inputs = _double_setup(seed=2)
    finder = NeuronMCT(gated, sparsity=0.75, selection="per_layer")
    pathway = finder.find(inputs)
    scores = finder.scores(inputs)
    for name, mask in pathway.items():
        flat_mask, flat_scores = mask.reshape(3, -1), scores[name].reshape(3, -1)
        keep = max(1, round(0.25 * flat_mask.shape[1]))
        assert flat_mask.sum(dim=1).tolist() == [keep] * 3
        # every kept unit scores at least as high as every dropped one
        low_kept = flat_scores.masked_fill(~flat_mask, math.inf).amin(dim=1)
        high_dropped = flat_scores.masked_fill(flat_mask, -math.inf).amax(dim=1)
        assert bool((low_kept >= high_dropped).all())


def test_sparsity_zero_keeps_everything_and_registry() -> None:
    _, gated, inputs = _double_setup()
    assert {"cp-mct", "cp-intgrad"} <= set(finder_names())
    for name in ("cp-mct", "cp-intgrad"):
        pathway = build_finder(name, gated, FinderOptions(sparsity=0.0)).find(inputs)
        assert pathway.granularity == "element"  # the method's default
        assert all(bool(m.all()) for m in pathway.values())
    assert NeuronMCT(gated, connect=False).forward_equivalents() == 3.0
    assert NeuronMCT(gated).forward_equivalents() == 6.0  # + the connectivity test
    intgrad = NeuronIntGrad(gated, steps=10, connect=False)
    assert intgrad.forward_equivalents() == 1.0 + 3.0 * 3 * 11
    assert NeuronIntGrad(gated, steps=10).forward_equivalents() == 4.0 + 3.0 * 3 * 11


@pytest.mark.parametrize("granularity", ["element", "channel"])
@pytest.mark.parametrize("method", ["cp-mct", "cp-intgrad"])
def test_contract(method: str, granularity: str) -> None:
    model = tiny_cnn(1, inplace=True)
    inputs = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    gated = GatedModel.discover(model, inputs)
    finder = build_finder(method, gated, FinderOptions(sparsity=0.7, granularity=granularity))  # type: ignore[arg-type]
    check_leaves_model_unchanged(model, finder.find, inputs)
    check_cleans_up_after_raise(model, model.features[2], finder.find, inputs)
    check_batch_equals_loop(finder.find, inputs)
    check_batch_equals_loop(finder.find, inputs, torch.tensor([0, 1, 2, 1]))
    check_batch_equals_loop(lambda x, t: finder.scores(x, t)["features.4"], inputs)  # type: ignore[attr-defined]


def test_bad_inputs() -> None:
    model = tiny_cnn()
    inputs = torch.randn(2, 3, 8, 8)
    gated = GatedModel.discover(model, inputs)
    for sparsity in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(InputError, match="sparsity"):
            NeuronMCT(gated, sparsity=sparsity)
        with pytest.raises(InputError, match="sparsity"):
            NeuronIntGrad(gated, sparsity=sparsity)
    with pytest.raises(InputError, match="granularity"):
        NeuronMCT(gated, granularity="neuron")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="selection"):
        NeuronMCT(gated, selection="local")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="internal_batch_size"):
        NeuronIntGrad(gated, internal_batch_size=0)
    for finder in (NeuronMCT(gated), NeuronIntGrad(gated, steps=2)):
        with pytest.raises(InputError, match="out of range"):
            finder.find(inputs, target=3)
        with pytest.raises(InputError, match="out of range"):
            finder.find(inputs, target=torch.tensor([0, -1]))
        with pytest.raises(InputError, match="empty batch"):
            finder.find(inputs[:0])
        with pytest.raises(InputError, match="shape"):
            finder.find(torch.randn(2, 3, 9, 9))


class ArgmaxNet(nn.Module):
    """conv -> relu -> argmax over channels -> one-hot -> linear: no gradient reaches the relu."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.relu(self.conv(x)).mean(dim=(2, 3))
        return self.fc(nn.functional.one_hot(pooled.argmax(dim=1), 4).to(x.dtype))


def test_non_differentiable_model_gives_clear_error() -> None:
    model = ArgmaxNet().eval()
    inputs = torch.randn(2, 3, 8, 8)
    gated = GatedModel.discover(model, inputs)
    for finder in (NeuronMCT(gated), NeuronIntGrad(gated, steps=2)):
        with pytest.raises(InputError, match="no gradient"):
            finder.find(inputs)


def test_taylor_scores_in_masked_network_and_under_no_grad() -> None:
    """With masks, a is each site's raw output and the gradient is taken in the masked network."""
    model, gated, inputs = _double_setup(seed=4)
    mask = torch.rand(3, 4, generator=torch.Generator().manual_seed(0)) > 0.5
    with torch.no_grad():
        scores, cls = taylor_scores(gated, inputs, None, {"features.1": mask})
    assert cls.tolist() == model(inputs).argmax(1).tolist()
    expected = _masked_literal(model, inputs, cls, mask.double()[:, :, None, None])
    for name, value in expected.items():
        torch.testing.assert_close(scores[name], value, rtol=1e-12, atol=1e-14)


def _masked_literal(
    model: nn.Module, inputs: Tensor, cls: Tensor, mask: Tensor
) -> dict[str, Tensor]:
    """|a · ∂y/∂(masked a)| at features.1 (masked by ``mask``) and features.4, via plain hooks."""
    modules = dict(model.named_modules())
    raw: dict[str, Tensor] = {}
    used: dict[str, Tensor] = {}

    def make(name: str, factor: Tensor | None):
        def hook(_m: nn.Module, _i: object, out: Tensor) -> Tensor:
            raw[name] = out.detach()
            gated_out = out if factor is None else out * factor
            gated_out.retain_grad()
            used[name] = gated_out
            return gated_out

        return hook

    handles = [
        modules["features.1"].register_forward_hook(make("features.1", mask)),
        modules["features.4"].register_forward_hook(make("features.4", None)),
        modules["classifier.2"].register_forward_hook(make("classifier.2", None)),
    ]
    try:
        x = inputs.clone().requires_grad_(True)
        model(x).gather(1, cls[:, None]).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    return {n: (raw[n] * used[n].grad).abs() for n in raw}
