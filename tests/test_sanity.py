"""Cascading randomisation sanity check: similarity measures, layer order, model untouched."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata, spearmanr

from neuralpath.attribution import explainer_factory
from neuralpath.errors import InputError, LayerError, ShapeError
from neuralpath.gating import GatedModel
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


def gradient_explain(model: torch.nn.Module):
    """Captum's input gradient as an explainer factory (built for each model it is given)."""
    return explainer_factory("gradient", GatedModel.discover(model, torch.zeros(1, 3, 8, 8)))


def test_layers_randomised_in_order_from_the_output() -> None:
    model = tiny_cnn()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    changed_per_call: list[list[str]] = []
    factory = gradient_explain(model)

    def recording(m):
        state = m.state_dict()
        changed = sorted(
            {k.rsplit(".", 1)[0] for k, v in state.items() if not torch.equal(v, original[k])}
        )
        changed_per_call.append(changed)
        return factory(m)

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

    def blank_first(m):  # the randomised copies explain sample 0 by zeros
        explain = factory(m)
        if m is model:
            return explain
        return lambda inputs, targets: torch.cat([explain(inputs, targets)[:1] * 0,
                                                  explain(inputs, targets)[1:]])  # fmt: skip

    blanked = CascadingRandomisation()(model, torch.randn(2, 3, 8, 8), None, blank_first)
    assert blanked.zero_maps == [1, 1, 1, 1]


def test_explainers_are_called_in_batches() -> None:
    model = tiny_cnn()
    sizes = []
    factory = gradient_explain(model)

    def counting(m):
        explain = factory(m)
        return lambda inputs, targets: sizes.append(inputs.shape[0]) or explain(inputs, targets)

    x = torch.randn(5, 3, 8, 8)
    whole = CascadingRandomisation(measures=("spearman",))(model, x, None, factory)
    batched = CascadingRandomisation(measures=("spearman",), batch_size=2)(model, x, None, counting)
    assert sizes == [2, 2, 1] * 5  # the trained model, then 4 randomised copies
    torch.testing.assert_close(batched.scores["spearman"], whole.scores["spearman"])
    with pytest.raises(InputError, match="batch_size"):
        CascadingRandomisation(batch_size=0)


def test_seeded_and_model_untouched() -> None:
    model = tiny_cnn()
    x = torch.randn(3, 3, 8, 8)
    metric = CascadingRandomisation(seed=3)

    def run(inputs, target):
        result = metric(model, inputs, target, gradient_explain(model))
        return torch.stack(
            [result.scores[m] for m in ("spearman", "spearman_abs", "ssim")], dim=-1
        ).transpose(0, 1)

    check_leaves_model_unchanged(model, run, x)
    check_cleans_up_after_raise(model, model.features[2], run, x)
    check_batch_equals_loop(run, x, torch.tensor([0, 1, 2]), atol=1e-6)
    torch.testing.assert_close(run(x, None), run(x, None))
    other = CascadingRandomisation(seed=4)(model, x, None, gradient_explain(model)).scores[
        "spearman"
    ]
    assert not torch.equal(other, run(x, None)[..., 0].T)


def test_randomised_gradient_loses_similarity_but_edge_detector_does_not() -> None:
    """Adebayo's point: a model-independent map (here the input itself) stays identical."""
    model = tiny_cnn()
    x = torch.nn.functional.interpolate(torch.randn(4, 3, 4, 4), size=(8, 8), mode="bilinear")
    result = CascadingRandomisation(measures=("spearman",))(
        model, x, None, lambda m: lambda i, t: i * 2
    )
    torch.testing.assert_close(result.scores["spearman"], torch.ones(4, 4, dtype=torch.float64))
    grad = CascadingRandomisation(measures=("spearman",))(model, x, None, gradient_explain(model))
    assert grad.scores["spearman"][-1].abs().mean() < 0.9


def test_explicit_layers_and_bad_input() -> None:
    model = tiny_cnn()
    x = torch.randn(2, 3, 8, 8)
    result = CascadingRandomisation(layers=["classifier.4", "features.3"], measures=("spearman",))(
        model, x, None, gradient_explain(model)
    )
    assert result.layers == ["classifier.4", "features.3"]
    assert weight_layers(model, x[:1]) == [
        "features.0",
        "features.2",
        "classifier.1",
        "classifier.4",
    ]
    with pytest.raises(LayerError):
        CascadingRandomisation(layers=["nope"])(model, x, None, gradient_explain(model))
    with pytest.raises(InputError):
        CascadingRandomisation(measures=("psnr",))
    with pytest.raises(InputError):
        CascadingRandomisation()(model, x[:0], None, gradient_explain(model))
    with pytest.raises(ShapeError):
        CascadingRandomisation()(model, x, None, lambda m: lambda i, t: torch.ones(2, 5, 5))


def test_mean_ablation_means_are_recomputed_for_every_randomised_model(monkeypatch) -> None:
    """The trained model's per-unit means do not describe a randomised copy: under mean ablation
    each randomised model gets its own, over the same reference images, once per step."""
    import neuralpath.attribution as attribution
    from neuralpath.attribution import pathway_options
    from neuralpath.interventions import MeanAblation
    from neuralpath.methods import build_finder
    from neuralpath.reference import reference_statistics

    model = tiny_cnn()
    images = torch.randn(12, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    gated = GatedModel.discover(model, images[:1])
    trained = reference_statistics(gated, images, progress=False)
    under = gated.with_intervention(MeanAblation(trained))
    finder = build_finder("cp-mct", under, pathway_options(sparsity=0.5))
    computed = []

    def spy(plain, data, **options):
        statistics = reference_statistics(plain, data, **options)
        computed.append((plain.model, data, statistics))
        return statistics

    monkeypatch.setattr(attribution, "reference_statistics", spy)
    factory = explainer_factory("pathway-gradient", under, finder, reference_images=images)
    metric = CascadingRandomisation(measures=("spearman",), batch_size=2)
    result = metric(model, images[:3], None, factory)
    assert len(computed) == len(result.layers) == 4  # once per step, not per batch
    assert all(copy is not model and data is images for copy, data, _ in computed)
    randomised = computed[-1][2].means  # every layer randomised
    assert all(not torch.allclose(randomised[n], trained.means[n]) for n in trained.means)
    assert computed[-1][2].source["recomputed_for"] == "changed copy of the target"

    bare = explainer_factory("pathway-gradient", under, finder)  # no reference images
    with pytest.raises(InputError, match="reference images"):
        metric(model, images[:2], None, bare)
