"""DGR on samples whose teacher softmax is exactly 1.0 in float32 (issue 15)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from neuralpath.gating import GatedModel
from neuralpath.methods.dgr import DGR, DGRConfig, distillation_loss
from neuralpath.metrics.connectivity import input_dependence

from toys import tiny_cnn


@pytest.fixture(scope="module")
def saturated() -> tuple[GatedModel, Tensor]:
    """TinyCNN in float32 with logits in the hundreds (softmax exactly 1.0) whose biases alone
    predict class 0, unlike the full model: an empty pathway changes the prediction."""
    model = tiny_cnn()
    with torch.no_grad():
        model.classifier[1].bias.zero_()
        model.classifier[4].weight.mul_(1e4)
        model.classifier[4].bias.copy_(torch.tensor([500.0, 0.0, 0.0]))
    inputs = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return GatedModel.discover(model, inputs[:1]), inputs


def test_the_toy_is_saturated(saturated) -> None:
    gated, inputs = saturated
    with torch.no_grad():
        logits = gated.forward(inputs)
        empty = {site.name: torch.zeros(1, site.units) for site in gated.sites}
        biases_only = gated.forward(inputs, empty).argmax(dim=1)
    assert (logits.softmax(dim=1).amax(dim=1) == 1.0).all()
    assert (biases_only != logits.argmax(dim=1)).all()


@pytest.mark.parametrize("binarize", ["percentile", "positive"])
def test_saturated_samples_get_faithful_non_empty_pathways(saturated, binarize) -> None:
    gated, inputs = saturated
    result = DGR(gated, DGRConfig(binarize=binarize, sparsity=0.9)).optimise(inputs)
    assert (result.pathway.kept_fraction() > 0).all()
    with torch.no_grad():
        predicted = gated.forward(inputs, result.pathway).argmax(dim=1)
    assert torch.equal(result.kept_prediction, predicted == result.target)
    assert result.kept_prediction.all()


def test_tied_gates_are_kept_not_dropped(saturated) -> None:
    """Every gate equal: the percentile rule drops all of them; the tie keeps all of them.
    ``min_per_layer`` (default 1) then keeps a layer's largest positive gate, never a zero one."""
    gated, inputs = saturated
    finder = DGR(gated, DGRConfig(binarize="percentile", sparsity=0.9, min_per_layer=0))
    tied = {site.name: torch.full((inputs.shape[0], site.units), 0.35) for site in gated.sites}
    mixed = {name: gate.clone() for name, gate in tied.items()}
    mixed["features.4"][:, 0] = 0.5  # one gate above the tie: the rule applies as usual
    assert (finder._binarize(tied).kept_fraction() == 1).all()
    assert (finder._binarize(mixed).kept_fraction() == 0.1).all()
    zero = {name: torch.zeros_like(gate) for name, gate in tied.items()}
    assert (finder._binarize(zero).kept_fraction() == 0).all()  # nothing positive to keep

    default = DGR(gated, DGRConfig())
    assert (default._binarize(tied).kept_fraction() == 1).all()
    per_layer = default._binarize(mixed).kept_fraction_per_layer()
    assert (per_layer["features.1"] == 0.25).all() and (per_layer["features.4"] == 1 / 6).all()
    closed = {name: gate.clone() for name, gate in mixed.items()}
    closed["features.1"].zero_()  # a layer the optimisation closed stays closed
    assert (default._binarize(closed).kept_fraction_per_layer()["features.1"] == 0).all()
    assert (default._binarize(zero).kept_fraction() == 0).all()


def test_empty_pathway_never_keeps_the_prediction() -> None:
    """Logits from the biases alone: DGR drives every gate to 0 and still predicts the class,
    but a pathway that keeps nothing does not count as keeping it."""
    model = tiny_cnn()
    with torch.no_grad():
        model.classifier[4].bias.copy_(torch.tensor([0.0, 0.0, 50.0]))
    inputs = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    gated = GatedModel.discover(model, inputs[:1])
    result = DGR(gated, DGRConfig(gamma=1.0, connect=False)).optimise(inputs)
    assert (result.best_iteration >= 0).all() and (result.gates.flatten() == 0).all()
    assert (result.pathway.kept_fraction() == 0).all()
    assert not result.kept_prediction.any()
    # by default the empty pathway is widened until the input reaches the output
    repaired = DGR(gated, DGRConfig(gamma=1.0)).optimise(inputs).pathway
    assert (repaired.kept_fraction() > 0).all()
    assert input_dependence(gated, inputs, repaired, result.target).all()


def test_distillation_gradient_survives_saturation() -> None:
    """Teacher and student softmax both exactly 1.0 in float32 (gaps 40 and 30): the plain
    ``−Σ π log softmax(z)`` gives the top logit a gradient of exactly 0; ours gives the float64
    value ``−Σ_{j≠ĉ} (softmax(z)_j − π_j)``, and the same loss as the plain form in float64."""
    teacher_logits = torch.tensor([[40.0, 0.0, 1.0]])
    teacher = teacher_logits.softmax(dim=1)
    student = torch.tensor([[30.0, 0.0, 1.0]], requires_grad=True)
    assert teacher[0, 0] == 1.0 and student.softmax(dim=1)[0, 0] == 1.0
    (plain,) = torch.autograd.grad(-(teacher * student.log_softmax(dim=1)).sum(), student)
    (ours,) = torch.autograd.grad(distillation_loss(student, teacher).sum(), student)
    assert plain[0, 0] == 0.0

    z, pi = student.detach().double()[0], teacher_logits.double().softmax(dim=1)[0]
    rest = z[1:] - z[0]
    q = rest.exp() / (1 + rest.exp().sum())
    expected_top = -(q - pi[1:]).sum()
    torch.testing.assert_close(ours[0, 0].double(), expected_top, rtol=1e-4, atol=0)
    torch.testing.assert_close(ours[0, 1:].double(), q - pi[1:], rtol=1e-4, atol=0)

    logits = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    soft = torch.randn(5, 4, dtype=torch.float64).softmax(dim=1)
    torch.testing.assert_close(
        distillation_loss(logits, soft),
        -(soft * logits.log_softmax(dim=1)).sum(dim=1),
        rtol=1e-12,
        atol=1e-12,
    )
