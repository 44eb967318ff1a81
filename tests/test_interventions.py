"""Interventions (zero / mean / resample ablation) against a literal float64 forward; reference
statistics; leakage controls on a model built to leak and on one that cannot; the contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuralpath.errors import CheckpointError, InputError, ShapeError
from neuralpath.gating import GatedModel
from neuralpath.interventions import (
    MeanAblation,
    ResampleAblation,
    ZeroAblation,
    check_ablation,
)
from neuralpath.metrics.leakage import (
    LeakageOutcome,
    leak_warning,
    leakage_outcome,
    summarize_leakage,
    swap_partners,
    transfer_specificity_outcome,
)
from neuralpath.pathway import ClassPathways, Pathway
from neuralpath.reference import (
    ReferenceStatistics,
    load_or_compute_reference,
    reference_path,
    reference_statistics,
)
from neuralpath.seeding import sample_seed

from contract import check_batch_equals_loop, check_leaves_model_unchanged
from toys import tiny_cnn

SITES = ("features.1", "features.4")


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_cnn(seed=3)


@pytest.fixture(scope="module")
def gated(model: nn.Module) -> GatedModel:
    return GatedModel.discover(model, torch.zeros(1, 3, 8, 8))


@pytest.fixture(scope="module")
def inputs() -> Tensor:
    return torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reference() -> Tensor:
    return torch.randn(7, 3, 8, 8, generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def statistics(gated: GatedModel, reference: Tensor) -> ReferenceStatistics:
    return reference_statistics(gated, reference, batch_size=3, progress=False)


def literal_forward(
    model: nn.Module, x: Tensor, masks: dict[str, Tensor], replacements: dict[str, Tensor]
) -> Tensor:
    """TinyCNN's forward written out in float64, each site ``m * a + (1 - m) * r``."""
    f, c = model.features, model.classifier
    w = {k: v.double() for k, v in model.state_dict().items()}
    x = x.double()

    def site(name: str, a: Tensor) -> Tensor:
        if name not in masks:
            return a
        m = masks[name].double()
        m = m.view(*m.shape, 1, 1) if m.dim() == 2 else m
        return m * a + (1 - m) * replacements[name].double()

    a = site(SITES[0], F.relu(F.conv2d(x, w["features.0.weight"], w["features.0.bias"], padding=1)))
    z = F.conv2d(a, w["features.2.weight"], w["features.2.bias"], padding=1)
    bn = f[3]
    z = (z - w["features.3.running_mean"].view(1, -1, 1, 1)) / torch.sqrt(
        w["features.3.running_var"].view(1, -1, 1, 1) + bn.eps
    ) * w["features.3.weight"].view(1, -1, 1, 1) + w["features.3.bias"].view(1, -1, 1, 1)
    a = site(SITES[1], F.relu(z))
    h = F.relu(
        F.linear(
            F.adaptive_avg_pool2d(a, 2).flatten(1), w["classifier.1.weight"], w["classifier.1.bias"]
        )
    )
    assert isinstance(c[4], nn.Linear)
    return F.linear(h, w["classifier.4.weight"], w["classifier.4.bias"])


def plain_activations(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    a1 = F.relu(model.features[0](x))
    a2 = model.features[4](model.features[3](model.features[2](a1)))
    return {SITES[0]: a1.detach(), SITES[1]: a2.detach()}


def random_masks(granularity: str, batch: int, binary: bool, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {SITES[0]: (4, 8, 8), SITES[1]: (6, 8, 8)}
    masks = {}
    for name, shape in shapes.items():
        size = (batch, shape[0]) if granularity == "channel" else (batch, *shape)
        values = torch.rand(size, generator=g)
        masks[name] = (values > 0.4).float() if binary else values
    return masks


def interventions(statistics: ReferenceStatistics, reference: Tensor):
    return {
        "zero": ZeroAblation(),
        "mean": MeanAblation(statistics),
        "resample": ResampleAblation(reference, seed=5),
    }


def replacements_for(name: str, model, statistics, reference, x: Tensor) -> dict[str, Tensor]:
    if name == "zero":
        return {s: torch.zeros(()) for s in SITES}
    if name == "mean":
        return {s: statistics.means[s].unsqueeze(0) for s in SITES}
    donors = torch.stack([reference[sample_seed(5, row) % reference.shape[0]] for row in x])
    with torch.no_grad():
        return plain_activations(model, donors)


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
@pytest.mark.parametrize("granularity", ["channel", "element"])
@pytest.mark.parametrize("binary", [True, False])
def test_equals_literal_float64(
    model, gated, inputs, statistics, reference, ablation, granularity, binary
) -> None:
    masks = random_masks(granularity, inputs.shape[0], binary)
    under = gated.with_intervention(interventions(statistics, reference)[ablation])
    with torch.no_grad():
        got = under.forward(inputs, masks)
    expected = literal_forward(
        model, inputs, masks, replacements_for(ablation, model, statistics, reference, inputs)
    )
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_continuous_masks_are_differentiable(
    model, gated, inputs, statistics, reference, ablation
) -> None:
    masks = random_masks("channel", inputs.shape[0], binary=False, seed=4)
    leaves = {k: v.clone().requires_grad_() for k, v in masks.items()}
    under = gated.with_intervention(interventions(statistics, reference)[ablation])
    under.forward(inputs, leaves)[:, 0].sum().backward()
    ref_leaves = {k: v.double().clone().requires_grad_() for k, v in masks.items()}
    reps = replacements_for(ablation, model, statistics, reference, inputs)
    literal_forward(model, inputs, ref_leaves, reps)[:, 0].sum().backward()
    for name in SITES:
        assert leaves[name].grad is not None and leaves[name].grad.abs().sum() > 0
        torch.testing.assert_close(
            leaves[name].grad.double(), ref_leaves[name].grad, atol=1e-5, rtol=1e-4
        )


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
@pytest.mark.parametrize("granularity", ["channel", "element"])
def test_all_ones_mask_is_the_plain_model(
    gated, inputs, statistics, reference, ablation, granularity
) -> None:
    ones = {k: torch.ones_like(v) for k, v in random_masks(granularity, 5, True).items()}
    under = gated.with_intervention(interventions(statistics, reference)[ablation])
    with torch.no_grad():
        assert torch.equal(under.forward(inputs, ones), gated.forward(inputs))


def test_mean_with_zero_masks_is_a_function_of_mu_alone(gated, inputs, statistics) -> None:
    zeros = {k: torch.zeros_like(v) for k, v in random_masks("channel", 5, True).items()}
    with torch.no_grad():
        out = gated.with_intervention(MeanAblation(statistics)).forward(inputs, zeros)
    assert torch.equal(out, out[:1].expand_as(out))
    with torch.no_grad():
        plain = gated.forward(inputs)
    assert not torch.allclose(plain, plain[:1].expand_as(plain))


def test_resample_runs_one_donor_forward_per_batch(model, gated, inputs, reference) -> None:
    calls = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        under = gated.with_intervention(ResampleAblation(reference))
        masks = random_masks("channel", 5, True)
        with torch.no_grad(), under.gate(masks):
            model(inputs)
            model(inputs)  # same tensor: donors reused
    finally:
        handle.remove()
    assert len(calls) == 3  # two gated forwards + one donor forward


def test_resample_refuses_a_partial_forward(model, gated, inputs, reference) -> None:
    under = gated.with_intervention(ResampleAblation(reference))
    with (
        pytest.raises(Exception, match="no donor activation"),
        torch.no_grad(),
        under.gate(random_masks("channel", 5, True)),
    ):
        model.features(inputs)


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_contract_for_every_intervention(
    model, gated, inputs, statistics, reference, ablation
) -> None:
    from neuralpath.attribution import PathwayGradient
    from neuralpath.methods import FinderOptions, build_finder

    under = gated.with_intervention(interventions(statistics, reference)[ablation])
    finder = build_finder("cp-mct", under, FinderOptions(sparsity=0.5, granularity="element"))
    masks = finder.find(inputs)

    def run_pathway(x: Tensor, _target: object) -> Tensor:
        with torch.no_grad():
            return under.forward(x, masks.select(torch.arange(x.shape[0])))

    def run_pg(x: Tensor, target: object) -> Tensor:
        return PathwayGradient(under, finder).attribute(x, target=target)

    check_leaves_model_unchanged(model, run_pathway, inputs)
    check_leaves_model_unchanged(model, run_pg, inputs)
    check_batch_equals_loop(lambda x, t: finder.find(x, t), inputs)
    check_batch_equals_loop(run_pg, inputs)


# ----------------------------------------------------------------------- reference statistics


def test_reference_streamed_equals_one_shot(gated, model, reference, statistics) -> None:
    acts = plain_activations(model, reference)
    for name in SITES:
        torch.testing.assert_close(statistics.means[name], acts[name].mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(statistics.input_mean, reference.mean(0))
    assert statistics.count == 7
    one_batch = reference_statistics(gated, reference, batch_size=100, progress=False)
    for name in SITES:
        torch.testing.assert_close(statistics.means[name], one_batch.means[name])


def test_reference_from_a_dataset_and_limit(gated, reference) -> None:
    data = torch.utils.data.TensorDataset(reference, torch.zeros(7, dtype=torch.long))
    stats = reference_statistics(gated, data, batch_size=2, limit=4, progress=False)
    assert stats.count == 4
    torch.testing.assert_close(stats.input_mean, reference[:4].mean(0))


def test_reference_round_trip_and_stale_file(tmp_path, gated, reference) -> None:
    first = load_or_compute_reference(tmp_path, gated, reference, progress=False)
    path = reference_path(tmp_path, gated)
    assert path.exists()
    loaded = ReferenceStatistics.load(path)
    for name in SITES:
        assert torch.equal(loaded.means[name], first.means[name])
    other = tiny_cnn(seed=9)
    other_gated = GatedModel.discover(other, torch.zeros(1, 3, 8, 8))
    with pytest.raises(CheckpointError, match="other weights"):
        load_or_compute_reference(tmp_path, other_gated, reference, progress=False)
    recomputed = load_or_compute_reference(
        tmp_path, other_gated, reference, recompute=True, progress=False
    )
    recomputed.check_target(other)


def test_reference_for_another_layer_set(model, statistics) -> None:
    fc = GatedModel.discover(model, torch.zeros(1, 3, 8, 8), include_fc=True)
    with pytest.raises(ShapeError, match="another layer set"):
        fc.with_intervention(MeanAblation(statistics))


def test_bad_input(gated, reference) -> None:
    with pytest.raises(InputError, match="unknown ablation"):
        check_ablation("noise")
    with pytest.raises(InputError, match="non-empty"):
        ResampleAblation(reference[:0])
    with pytest.raises(ShapeError, match="reference inputs have shape"):
        gated.with_intervention(ResampleAblation(torch.zeros(3, 1, 8, 8)))
    with pytest.raises(InputError, match="shape"):
        reference_statistics(gated, torch.zeros(3, 1, 8, 8), progress=False)
    with pytest.raises(InputError, match="empty"):
        reference_statistics(gated, reference[:0], progress=False)
    with pytest.raises(CheckpointError):
        ReferenceStatistics.load(__file__)


# -------------------------------------------------------------------------- leakage controls


class Leaky(nn.Module):
    """h = relu(x + 10), logits = h: the kept hidden unit alone decides under zero ablation."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 2)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.eye(2))
            self.fc1.bias.fill_(10.0)
            self.fc2.weight.copy_(torch.eye(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


LEAK_X = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [2.0, -1.0], [-1.0, 3.0]])


def leak_setup() -> tuple[GatedModel, Pathway, ReferenceStatistics]:
    gated = GatedModel.discover(Leaky(), torch.zeros(1, 2), include_fc=True)
    keep_own = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    pathway = Pathway({"act": keep_own.bool()}, "channel")
    stats = reference_statistics(gated, torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), progress=False)
    return gated, pathway, stats


def test_leakage_on_a_model_built_to_leak() -> None:
    gated, pathway, _ = leak_setup()
    summary = summarize_leakage(leakage_outcome(gated, LEAK_X, pathway))
    assert summary["blank_agreement"] == 1.0
    assert summary["blank_agreement_plain"] == 0.5  # H(0) = (10, 10): argmax 0, half the samples
    assert summary["swap_follows_mask"] == 1.0 and summary["swap_follows_input"] == 0.0
    assert summary["swap_n"] == 4
    # p'(x) - p'(0) with kept logit 10 + x_c and the other 0
    sig = lambda z: 1.0 / (1.0 + math.exp(-z))  # noqa: E731
    expected = sum(sig(10 + d) - sig(10) for d in (1.0, 1.0, 2.0, 3.0)) / 4
    assert summary["input_attributable_confidence"] == pytest.approx(expected, abs=1e-6)
    assert leak_warning({**summary, "ablation": "zero"}, "cp-mct") is not None


def test_leakage_is_chance_when_the_mask_cannot_carry_the_class() -> None:
    gated, pathway, stats = leak_setup()
    under = gated.with_intervention(MeanAblation(stats))  # mu = (10, 10)
    summary = summarize_leakage(leakage_outcome(under, LEAK_X, pathway))
    assert summary["blank_agreement"] == 0.5 == summary["blank_agreement_plain"]
    assert summary["swap_follows_input"] == 1.0 and summary["swap_follows_mask"] == 0.0
    assert leak_warning(summary, "cp-mct") is None


def test_swap_partners_have_another_class_and_are_seeded() -> None:
    classes = torch.tensor([0, 0, 1, 2, 1, 0])
    partner, valid = swap_partners(classes, seed=3)
    assert valid.all()
    assert (classes[partner] != classes).all()
    again, _ = swap_partners(classes, seed=3)
    assert torch.equal(partner, again)
    _, none = swap_partners(torch.tensor([4, 4, 4]))
    assert not none.any()


def test_transfer_specificity_on_a_leaky_model() -> None:
    gated, _, stats = leak_setup()
    frequency = Pathway({"act": torch.eye(2)}, "channel")
    classes = ClassPathways(frequency, torch.tensor([3, 3]), theta=0.5)
    forced, valid = transfer_specificity_outcome(gated, LEAK_X, classes)
    assert valid.all() and forced.all()  # zero ablation: the other class is forced every time
    under = gated.with_intervention(MeanAblation(stats))
    forced, valid = transfer_specificity_outcome(under, LEAK_X, classes)
    assert valid.all() and not forced.any()


def test_dgr_optimises_under_the_gated_models_intervention(gated, inputs, statistics) -> None:
    from neuralpath.methods.dgr import DGR, DGRConfig

    controlled = gated.with_intervention(MeanAblation(statistics))
    config = DGRConfig(iterations=8, gamma=0.2)
    under_mean = DGR(controlled, config).optimise(inputs)
    under_zero = DGR(gated, config).optimise(inputs)
    assert not torch.equal(under_mean.losses, under_zero.losses)
    with torch.no_grad():
        predicted = controlled.forward(inputs, under_mean.pathway).argmax(1)
    nonempty = under_mean.pathway.kept_fraction() > 0
    assert torch.equal(under_mean.kept_prediction, (predicted == under_mean.target) & nonempty)


def test_leakage_reuses_the_pathway_outcome_exactly(gated, inputs, statistics) -> None:
    from neuralpath.metrics.faithfulness import pathway_outcome

    under = gated.with_intervention(MeanAblation(statistics))
    pathway = Pathway(
        {n: m.bool() for n, m in random_masks("channel", inputs.shape[0], True).items()},
        "channel",
    )
    outcome = pathway_outcome(under, inputs, pathway)
    reused = leakage_outcome(under, inputs, pathway, outcome=outcome)
    fresh = leakage_outcome(under, inputs, pathway)
    for name in LeakageOutcome.__dataclass_fields__:
        assert torch.equal(getattr(reused, name), getattr(fresh, name)), name
    with pytest.raises(InputError, match="not beside"):
        leakage_outcome(under, inputs, pathway, 1, outcome=outcome)
