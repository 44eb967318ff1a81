"""Cascading randomisation sanity check: similarity measures, layer order, model untouched."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata, spearmanr

from neuralpath.errors import InputError, LayerError, ShapeError
from neuralpath.metrics.perturbation import method_explainer
from neuralpath.metrics.sanity import (
    CascadingRandomisation,
    average_ranks,
    hog_correlation,
    normalised_maps,
    similarities,
    spearman,
    ssim,
    weight_layers,
)

from contract import (
    check_batch_equals_loop,
    check_cleans_up_after_raise,
    check_leaves_model_unchanged,
)
from toys import tiny_cnn


def smooth_maps(batch: int = 2, side: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    coarse = torch.randn(batch, 1, 4, 4, generator=gen)
    return torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear").squeeze(1)


def test_identical_maps_score_one() -> None:
    maps = normalised_maps(smooth_maps())
    scores = similarities(maps, maps.clone())
    for name, value in scores.items():
        torch.testing.assert_close(value, torch.ones(2, dtype=torch.float64), msg=name)


def test_anti_correlated_maps_score_negative() -> None:
    maps = normalised_maps(smooth_maps())
    positive = maps.abs()
    assert torch.all(ssim(positive, 1 - positive) < 0)  # same luminance sign, opposite structure
    assert torch.all(
        spearman(positive, 1 - positive) < -0.999
    )  # float32 rounding of 1 - x may tie values
    torch.testing.assert_close(spearman(maps, -maps), -torch.ones(2, dtype=torch.float64))
    # |map| is identical for a negated map: the abs variant and HOG (on |map|) cannot tell
    torch.testing.assert_close(
        spearman(maps.abs(), (-maps).abs()), torch.ones(2, dtype=torch.float64)
    )
    torch.testing.assert_close(hog_correlation(maps, -maps), torch.ones(2, dtype=torch.float64))


def test_constant_map_correlation_is_nan() -> None:
    maps = normalised_maps(smooth_maps(1))
    assert torch.isnan(spearman(maps, torch.zeros_like(maps))).all()


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=3, max_size=30), st.integers(0, 1000))
def test_ranks_and_spearman_match_scipy(values, seed) -> None:
    a = torch.tensor(values, dtype=torch.float32).view(1, -1)
    torch.testing.assert_close(average_ranks(a)[0], torch.from_numpy(rankdata(values)).double())
    b = torch.randint(-2, 3, a.shape, generator=torch.Generator().manual_seed(seed)).float()
    expected = spearmanr(a[0].numpy(), b[0].numpy()).statistic
    got = spearman(a, b)[0].item()
    if torch.isnan(torch.tensor(expected)):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-9)


def gradient_explain():
    return method_explainer("gradient")


def test_layers_randomised_in_order_from_the_output() -> None:
    model = tiny_cnn()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    changed_per_call: list[list[str]] = []
    explain = gradient_explain()

    def recording(m, inputs, targets):
        state = m.state_dict()
        changed = sorted(
            {k.rsplit(".", 1)[0] for k, v in state.items() if not torch.equal(v, original[k])}
        )
        changed_per_call.append(changed)
        return explain(m, inputs, targets)

    result = CascadingRandomisation()(model, torch.randn(2, 3, 8, 8), None, recording)
    assert result.layers == ["classifier.4", "classifier.1", "features.2", "features.0"]
    assert changed_per_call == [
        [],
        ["classifier.4"],
        ["classifier.1", "classifier.4"],
        ["classifier.1", "classifier.4", "features.2"],
        ["classifier.1", "classifier.4", "features.0", "features.2"],
    ]
    assert set(result.scores) == {"ssim", "spearman", "spearman_abs", "hog"}
    assert all(v.shape == (4, 2) for v in result.scores.values())
    summary = result.summary()
    assert summary["higher_is_better"] is False and len(summary["similarity"]["ssim"]) == 4
    assert summary["zero_maps"] == [0, 0, 0, 0]

    def blank_first(m, inputs, targets):  # the randomised copies explain sample 0 by zeros
        maps = explain(m, inputs, targets)
        return maps if m is model else torch.cat([maps[:1] * 0, maps[1:]])

    blanked = CascadingRandomisation()(model, torch.randn(2, 3, 8, 8), None, blank_first)
    assert blanked.zero_maps == [1, 1, 1, 1]


def test_seeded_and_model_untouched() -> None:
    model = tiny_cnn()
    x = torch.randn(3, 3, 8, 8)
    metric = CascadingRandomisation(seed=3)

    def run(inputs, target):
        result = metric(model, inputs, target, gradient_explain())
        return torch.stack(
            [result.scores[m] for m in ("spearman", "spearman_abs", "ssim")], dim=-1
        ).transpose(0, 1)

    check_leaves_model_unchanged(model, run, x)
    check_cleans_up_after_raise(model, model.features[2], run, x)
    check_batch_equals_loop(run, x, torch.tensor([0, 1, 2]), atol=1e-6)
    torch.testing.assert_close(run(x, None), run(x, None))
    other = CascadingRandomisation(seed=4)(model, x, None, gradient_explain()).scores["spearman"]
    assert not torch.equal(other, run(x, None)[..., 0].T)


def test_randomised_gradient_loses_similarity_but_edge_detector_does_not() -> None:
    """Adebayo's point: a model-independent map (here the input itself) stays identical."""
    model = tiny_cnn()
    x = torch.nn.functional.interpolate(torch.randn(4, 3, 4, 4), size=(8, 8), mode="bilinear")
    result = CascadingRandomisation(measures=("spearman",))(model, x, None, lambda m, i, t: i * 2)
    torch.testing.assert_close(result.scores["spearman"], torch.ones(4, 4, dtype=torch.float64))
    grad = CascadingRandomisation(measures=("spearman",))(model, x, None, gradient_explain())
    assert grad.scores["spearman"][-1].abs().mean() < 0.9


def test_explicit_layers_and_bad_input() -> None:
    model = tiny_cnn()
    x = torch.randn(2, 3, 8, 8)
    result = CascadingRandomisation(layers=["classifier.4", "features.3"], measures=("spearman",))(
        model, x, None, gradient_explain()
    )
    assert result.layers == ["classifier.4", "features.3"]
    assert weight_layers(model, x[:1]) == [
        "features.0",
        "features.2",
        "classifier.1",
        "classifier.4",
    ]
    with pytest.raises(LayerError):
        CascadingRandomisation(layers=["nope"])(model, x, None, gradient_explain())
    with pytest.raises(InputError):
        CascadingRandomisation(measures=("psnr",))
    with pytest.raises(InputError):
        CascadingRandomisation()(model, x[:0], None, gradient_explain())
    with pytest.raises(ShapeError):
        CascadingRandomisation()(model, x, None, lambda m, i, t: torch.ones(2, 5, 5))
