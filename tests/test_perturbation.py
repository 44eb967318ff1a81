"""LeRF/MoRF and deletion/insertion: hand-computed values, properties, contract, bad input."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from neuralpath.attribution import make_explainer
from neuralpath.errors import InputError, ShapeError
from neuralpath.gating import GatedModel
from neuralpath.metrics.perturbation import (
    Deletion,
    FastLayout,
    Insertion,
    LeRF,
    MoRF,
    order_ranks,
    pixel_count,
    pixel_relevance,
    relevance_order,
    top_mask,
)

from contract import (
    check_batch_equals_loop,
    check_cleans_up_after_raise,
    check_leaves_model_unchanged,
)
from toys import tiny_cnn


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def linear_model(weights: torch.Tensor) -> nn.Module:
    """logits = [w . x, 0] for 1-channel images flattened row-major: p(class 0) = sigmoid(w . x)."""
    n = weights.numel()
    model = nn.Sequential(nn.Flatten(), nn.Linear(n, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([weights.flatten(), torch.zeros(n)]))
    return model.eval()


# The hand case: a 2x2 image x = [1, 0.5, -1, 2] (row-major), w = 1, so p = sigmoid(sum of kept pixels);
# relevance 4, 3, 2, 1: pixel 0 is the most relevant, pixel 3 the least.
X = torch.tensor([1.0, 0.5, -1.0, 2.0]).view(1, 1, 2, 2)
RELEVANCE = torch.tensor([4.0, 3.0, 2.0, 1.0]).view(1, 1, 2, 2)
MODEL = linear_model(torch.ones(4))
P = sigmoid(2.5)


def rel_change(z: float) -> float:
    return abs(P - sigmoid(z)) / P


def test_lerf_hand_values() -> None:
    result = LeRF([25, 50, 75])(MODEL, X, None, RELEVANCE)
    # drop pixel 3 (2.0) -> 0.5; pixels 3, 2 -> 1.5; pixels 3, 2, 1 -> 1.0
    expected = [rel_change(0.5), rel_change(1.5), rel_change(1.0)]
    torch.testing.assert_close(result.curve[0], torch.tensor(expected), rtol=1e-6, atol=1e-7)
    area = (expected[0] + 2 * expected[1] + expected[2]) / 4  # trapezoid / width of [0.25, 0.75]
    assert result.area.item() == pytest.approx(area, rel=1e-6)
    assert not result.higher_is_better and LeRF().direction == "lower"


def test_morf_hand_values() -> None:
    result = MoRF([25, 50, 75])(MODEL, X, None, RELEVANCE)
    # drop pixel 0 (1.0) -> 1.5; pixels 0, 1 -> 1.0; pixels 0, 1, 2 -> 2.0
    expected = [rel_change(1.5), rel_change(1.0), rel_change(2.0)]
    torch.testing.assert_close(result.curve[0], torch.tensor(expected), rtol=1e-6, atol=1e-7)
    assert result.higher_is_better and MoRF().direction == "higher"


def test_baseline_value_and_single_q() -> None:
    result = MoRF([25])(MODEL, X, None, RELEVANCE)
    assert result.area.item() == pytest.approx(result.curve[0, 0].item())
    shifted = MoRF([25], baseline=3.0)(MODEL, X, None, RELEVANCE)
    assert shifted.curve[0, 0].item() == pytest.approx(rel_change(2.5 - 1.0 + 3.0), rel=1e-6)
    per_channel = MoRF([25], baseline=torch.tensor([3.0]))(MODEL, X, None, RELEVANCE)
    torch.testing.assert_close(per_channel.curve, shifted.curve)


def test_explicit_target_label() -> None:
    # explaining class 1: p = 1 - sigmoid(2.5); LeRF 25 % -> 1 - sigmoid(0.5)
    result = LeRF([25])(MODEL, X, torch.tensor([1]), RELEVANCE)
    p = 1 - sigmoid(2.5)
    assert result.curve[0, 0].item() == pytest.approx(abs(p - (1 - sigmoid(0.5))) / p, rel=1e-6)


def test_deletion_and_insertion_auc_hand_values() -> None:
    deletion = Deletion(steps=4)(MODEL, X, None, RELEVANCE)
    kept_sums = [2.5, 1.5, 1.0, 2.0, 0.0]  # delete pixel 0, then 1, 2, 3
    probs = [sigmoid(z) for z in kept_sums]
    torch.testing.assert_close(deletion.curve[0], torch.tensor(probs), rtol=1e-6, atol=1e-7)
    trapezoid = 0.25 * sum((a + b) / 2 for a, b in pairwise(probs))
    assert deletion.area.item() == pytest.approx(trapezoid, rel=1e-6)
    torch.testing.assert_close(deletion.fractions, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))

    insertion = Insertion(steps=4)(MODEL, X, None, RELEVANCE)
    inserted_sums = [0.0, 1.0, 1.5, 0.5, 2.5]  # insert pixel 0, then 1, 2, 3 into the zero image
    probs = [sigmoid(z) for z in inserted_sums]
    torch.testing.assert_close(insertion.curve[0], torch.tensor(probs), rtol=1e-6, atol=1e-7)
    assert insertion.area.item() == pytest.approx(
        0.25 * sum((a + b) / 2 for a, b in pairwise(probs)), rel=1e-6
    )
    assert insertion.higher_is_better and not deletion.higher_is_better


def test_steps_round_pixel_counts() -> None:
    # 4 pixels in 3 steps: counts round(k * 4 / 3) = 0, 1, 3, 4
    curve = Deletion(steps=3)(MODEL, X, None, RELEVANCE).curve[0]
    expected = [sigmoid(2.5), sigmoid(1.5), sigmoid(2.0), sigmoid(0.0)]
    torch.testing.assert_close(curve, torch.tensor(expected), rtol=1e-6, atol=1e-7)


def test_ties_follow_row_major_order() -> None:
    flat = torch.ones(1, 1, 2, 2)
    morf = MoRF([25])(MODEL, X, None, flat)
    lerf = LeRF([25])(MODEL, X, None, flat)
    # both remove pixel 0 first
    assert morf.curve[0, 0].item() == pytest.approx(rel_change(1.5), rel=1e-6)
    assert lerf.curve[0, 0].item() == pytest.approx(rel_change(1.5), rel=1e-6)


def test_reductions() -> None:
    a = torch.tensor([[1.0, -3.0], [2.0, 2.0]]).view(1, 2, 2, 1)  # C=2, H=2, W=1
    assert pixel_relevance(a, "sum-abs").flatten().tolist() == [3.0, 5.0]
    assert pixel_relevance(a, "sum").flatten().tolist() == [3.0, -1.0]
    assert pixel_relevance(a, "max-abs").flatten().tolist() == [2.0, 3.0]
    assert pixel_relevance(a, "signed-max-abs").flatten().tolist() == [2.0, -3.0]
    with pytest.raises(InputError):
        pixel_relevance(a, "median")


def test_pixel_count_rounding() -> None:
    assert [pixel_count(q, 1024) for q in (1, 5, 10, 100)] == [10, 51, 102, 1024]
    assert pixel_count(50, 3) == 2  # 1.5 rounds up


@st.composite
def linear_case(draw):
    n = draw(st.integers(2, 16))
    floats = st.floats(0.0, 2.0, allow_nan=False, width=32)
    w = torch.tensor(draw(st.lists(floats, min_size=n, max_size=n)))
    x = torch.tensor(draw(st.lists(floats, min_size=n, max_size=n)))
    qs = sorted(set(draw(st.lists(st.integers(1, 100), min_size=2, max_size=6))))
    return w, x, qs


@settings(max_examples=40, deadline=None)
@given(linear_case())
def test_curves_monotone_and_morf_dominates_lerf(case) -> None:
    """Non-negative contributions w_i x_i and a 0 baseline: removing more pixels lowers p, so both
    curves rise with q, and MoRF (ranked by the true contributions) is never below LeRF."""
    w, x, qs = case
    model = linear_model(w)
    inputs = x.view(1, 1, 1, -1)
    contributions = (w * x).view(1, 1, 1, -1)
    if model(inputs).argmax().item() != 0:
        return  # w . x == 0: the prediction is a tie
    morf = MoRF(qs)(model, inputs, None, contributions).curve[0]
    lerf = LeRF(qs)(model, inputs, None, contributions).curve[0]
    assert torch.all(morf[1:] >= morf[:-1] - 1e-6)
    assert torch.all(lerf[1:] >= lerf[:-1] - 1e-6)
    assert torch.all(morf >= lerf - 1e-6)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(2, 5), st.integers(1, 12), st.integers(0, 10_000))
def test_auc_in_unit_interval(batch, side, steps, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    model = linear_model(torch.randn(side * side, generator=gen))
    x = torch.randn(batch, 1, side, side, generator=gen)
    a = torch.randn(batch, 1, side, side, generator=gen)
    for metric in (Deletion(steps), Insertion(steps)):
        result = metric(model, x, None, a)
        assert torch.all((result.area >= 0) & (result.area <= 1))
        assert result.curve.shape == (batch, steps + 1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=2, max_size=20), st.integers(0, 100))
def test_ties_equal_explicit_row_major_tiebreak(values, q) -> None:
    """A map with ties ranks exactly as the same map with ties broken by a tiny row-major bonus."""
    relevance = torch.tensor(values, dtype=torch.float64).view(1, 1, -1)
    n = relevance.numel()
    tiebroken = relevance - torch.arange(n, dtype=torch.float64).view(1, 1, -1) * 1e-6
    for first in (True, False):
        bonus = (
            tiebroken
            if first
            else relevance + torch.arange(n, dtype=torch.float64).view(1, 1, -1) * 1e-6
        )
        assert torch.equal(relevance_order(relevance, first), relevance_order(bonus, first))
    ranks = order_ranks(relevance_order(relevance))
    small, large = sorted((q, min(100, q + 17)))
    inner = top_mask(ranks, pixel_count(max(small, 1), n), (1, n))
    outer = top_mask(ranks, pixel_count(max(large, 1), n), (1, n))
    assert torch.all(outer | ~inner)  # masks are nested in q


def test_bad_input() -> None:
    with pytest.raises(InputError):
        LeRF([0])
    with pytest.raises(InputError):
        MoRF([101])
    with pytest.raises(InputError):
        LeRF([])
    with pytest.raises(InputError):
        Deletion(steps=0)
    with pytest.raises(ShapeError):
        LeRF()(MODEL, X, None, torch.ones(1, 1, 3, 3))
    with pytest.raises(InputError):
        LeRF()(MODEL, X[:0], None, RELEVANCE[:0])
    with pytest.raises(InputError, match="explanation must be maps"):
        LeRF()(MODEL, X, None, "maps")  # neither maps nor an explainer
    with pytest.raises(InputError):
        LeRF()(MODEL, X, None, torch.full_like(RELEVANCE, float("nan")))
    with pytest.raises(ShapeError):
        MoRF(baseline=torch.ones(5))(MODEL, X, None, RELEVANCE)


def _tiny_run(metric):
    model = tiny_cnn()
    explain = make_explainer("gradient", GatedModel.discover(model, torch.zeros(1, 3, 8, 8)))

    def run(inputs, target):
        return metric(model, inputs, target, explain).curve

    return model, run


@pytest.mark.parametrize(
    "metric", [LeRF([5, 20]), MoRF([5, 20]), Deletion(3), Insertion(3)], ids=lambda m: m.name
)
def test_contract(metric) -> None:
    model, run = _tiny_run(metric)
    inputs = torch.randn(3, 3, 8, 8)
    check_leaves_model_unchanged(model, run, inputs)
    check_cleans_up_after_raise(model, model.features[2], run, inputs)
    check_batch_equals_loop(run, inputs, torch.tensor([0, 1, 2]))
    check_batch_equals_loop(run, inputs, None)


class ViewNet(nn.Module):
    """Flattens with ``view``, which a channels-last tensor refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv(x))
        return self.fc(a.view(a.shape[0], -1))


def test_fast_layout_gives_the_models_outputs() -> None:
    """Channels-last copies where the model accepts them (same values to rounding), the inputs
    unchanged where it does not."""
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    for model in (tiny_cnn(), ViewNet().eval()):
        fast = FastLayout(GatedModel.discover(model, x[:1]))
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-6)
    assert not GatedModel.discover(ViewNet().eval(), x[:1]).runs_channels_last()
