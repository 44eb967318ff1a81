"""DGR / DGR-R: a literal float64 reference, the best-iterate rule, clamping, batching, contract."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from neuralpath.errors import InputError
from neuralpath.gating import GatedModel
from neuralpath.methods.base import FinderOptions, build_finder, finder_names
from neuralpath.methods.dgr import DGR, DGRR, DGRConfig

from contract import (
    check_batch_equals_loop,
    check_cleans_up_after_raise,
    check_leaves_model_unchanged,
)
from toys import tiny_cnn


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """TinyCNN in float64 with confident predictions (class 2 for the inputs below) and a zero-gate
    output that predicts class 0: removing every unit changes the prediction."""
    net = tiny_cnn().double()
    with torch.no_grad():
        net.classifier[4].weight.mul_(8)
        net.classifier[1].weight.mul_(3)
        net.classifier[1].bias.zero_()
        net.classifier[4].bias.copy_(torch.tensor([2.0, 0.0, 0.0]))
    return net.eval()


@pytest.fixture(scope="module")
def inputs() -> Tensor:
    return 2 * torch.randn(
        6, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )


@pytest.fixture(scope="module")
def gated(model: torch.nn.Module, inputs: Tensor) -> GatedModel:
    return GatedModel.discover(model, inputs[:1])


# ---------------------------------------------------------------------- literal reference


def reference_logits(model: torch.nn.Module, x: Tensor, g1: Tensor, g2: Tensor) -> Tensor:
    """TinyCNN's forward written out, with channel gates after each conv's ReLU."""
    f, c = model.features, model.classifier
    a1 = torch.relu(f[0](x)) * g1.view(1, -1, 1, 1)
    a2 = torch.relu(f[3](f[2](a1))) * g2.view(1, -1, 1, 1)
    hidden = torch.relu(c[1](f[5](a2).flatten(1)))
    return c[4](hidden)  # dropout (c[3]) is the identity in eval mode


def reference_dgr(model, x, start, *, gamma, lr, momentum, iterations, clamp_max):
    """One image, plainly: loss, manual momentum-SGD step, clamp, best kept iterate."""
    with torch.no_grad():
        teacher_logits = reference_logits(
            model, x, torch.ones(4, dtype=x.dtype), torch.ones(6, dtype=x.dtype)
        )
    pi = torch.softmax(teacher_logits, dim=1)[0]
    c_hat = int(teacher_logits.argmax())
    gates = [g.clone() for g in start]
    velocity = [torch.zeros_like(g) for g in start]
    best, best_loss, best_iteration, losses = [g.clone() for g in start], math.inf, -1, []
    for t in range(iterations):
        leaf = [g.clone().requires_grad_(True) for g in gates]
        z = reference_logits(model, x, *leaf)[0]
        loss = -(pi * torch.log_softmax(z, dim=0)).sum() + gamma * (
            leaf[0].abs().sum() + leaf[1].abs().sum()
        )
        grads = torch.autograd.grad(loss, leaf)
        losses.append(loss.item())
        if int(z.argmax()) == c_hat and loss.item() < best_loss:
            best, best_loss, best_iteration = [g.clone() for g in gates], loss.item(), t
        for i in range(2):
            velocity[i] = momentum * velocity[i] + grads[i]
            gates[i] = torch.clamp(gates[i] - lr * velocity[i], 0.0, clamp_max)
    return best, best_loss, best_iteration, losses


def _starts(finder: DGR, sample: Tensor) -> list[Tensor]:
    """The starting gates of one sample ``[1, *input_shape]``."""
    init = finder.initial_gates(sample)
    return [init["features.1"][0], init["features.4"][0]]


def test_sites_are_the_reference_gates(gated: GatedModel) -> None:
    assert gated.site_names == ["features.1", "features.4"]


def test_one_step_matches_manual_update(model, inputs, gated) -> None:
    cfg = DGRConfig(gamma=0.3, iterations=2)
    result = DGR(gated, cfg).optimise(inputs)
    for i in range(inputs.shape[0]):
        x = inputs[i : i + 1]
        g = [
            torch.ones(4, dtype=torch.float64).requires_grad_(True),
            torch.ones(6, dtype=torch.float64).requires_grad_(True),
        ]
        pi = torch.softmax(reference_logits(model, x, *g).detach(), dim=1)[0]
        z = reference_logits(model, x, *g)[0]
        loss0 = -(pi * torch.log_softmax(z, dim=0)).sum() + cfg.gamma * (
            g[0].abs().sum() + g[1].abs().sum()
        )
        grads = torch.autograd.grad(loss0, g)
        # v_1 = 0.9 * 0 + grad;  λ_1 = clamp(λ_0 - lr * v_1, 0, 5)
        step = [
            torch.clamp(gi.detach() - cfg.lr * (cfg.momentum * 0.0 + gr), 0.0, cfg.clamp_max)
            for gi, gr in zip(g, grads, strict=True)
        ]
        z1 = reference_logits(model, x, *step)[0]
        loss1 = -(pi * torch.log_softmax(z1, dim=0)).sum() + cfg.gamma * (
            step[0].sum() + step[1].sum()
        )
        torch.testing.assert_close(
            result.losses[:, i],
            torch.stack([loss0.detach(), loss1.detach()]),
            rtol=1e-12,
            atol=1e-12,
        )
        assert result.best_iteration[i] == 1  # the step lowered the loss and kept the prediction
        torch.testing.assert_close(result.gates["features.1"][i], step[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(result.gates["features.4"][i], step[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("init", ["ones", "uniform"])
@pytest.mark.parametrize("gamma", [0.05, 1.0])
def test_whole_loop_matches_reference(model, inputs, gated, init, gamma) -> None:
    finder = DGR(gated, DGRConfig(gamma=gamma, init=init, seed=3))
    result = finder.optimise(inputs)
    for i in range(inputs.shape[0]):
        best, best_loss, best_iteration, losses = reference_dgr(
            model,
            inputs[i : i + 1],
            _starts(finder, inputs[i : i + 1]),
            gamma=gamma,
            lr=0.1,
            momentum=0.9,
            iterations=30,
            clamp_max=5.0,
        )
        torch.testing.assert_close(
            result.losses[:, i], torch.tensor(losses, dtype=torch.float64), rtol=1e-10, atol=1e-10
        )
        assert int(result.best_iteration[i]) == best_iteration
        # kept_prediction: the binary pathway (gates > 0) is non-empty and keeps the class
        masks = [result.pathway[name][i].double() for name in ("features.1", "features.4")]
        with torch.no_grad():
            binary = reference_logits(model, inputs[i : i + 1], *masks)[0]
        kept = int(binary.argmax()) == int(result.target[i]) and any(m.any() for m in masks)
        assert bool(result.kept_prediction[i]) == kept
        torch.testing.assert_close(result.gates["features.1"][i], best[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(result.gates["features.4"][i], best[1], rtol=1e-10, atol=1e-10)
        if best_iteration >= 0:
            assert result.best_loss[i].item() == pytest.approx(best_loss, rel=1e-10)


# ---------------------------------------------------------------------- properties


def test_best_iterate_never_changes_the_prediction(gated, inputs) -> None:
    # γ = 1 makes the all-zero gates cheap, but with zero gates the model predicts class 0, not
    # the original class 2: for some samples the lowest-loss iterate changes the prediction.
    result = DGR(gated, DGRConfig(gamma=1.0)).optimise(inputs)
    lowest = result.losses.argmin(dim=0)
    lowest_kept = result.kept_history[lowest, torch.arange(inputs.shape[0])]
    assert (~lowest_kept).any(), "the construction should produce a prediction-changing minimum"
    for i in (~lowest_kept).nonzero().squeeze(1).tolist():
        chosen = int(result.best_iteration[i])
        assert chosen != int(lowest[i])
        assert result.kept_history[chosen, i]
        kept_losses = result.losses[:, i][result.kept_history[:, i]]
        assert result.best_loss[i] == kept_losses.min()
        assert result.best_loss[i] > result.losses[lowest[i], i]
    with torch.no_grad():
        pred = gated.forward(inputs, result.gates).argmax(dim=1)
    assert torch.equal(pred, result.target)


def test_gates_are_clamped(gated, inputs) -> None:
    # A huge learning rate throws the gates far outside [0, clamp_max]; every iterate is clamped.
    cfg = DGRConfig(gamma=0.0, lr=1e3, init="uniform", clamp_max=2.0, iterations=5, seed=1)
    finder = DGR(gated, cfg)
    result = finder.optimise(inputs)
    flat = result.gates.flatten()
    assert flat.min() >= 0.0 and flat.max() <= 2.0
    # the reference with the same clamp matches; without the upper bound it follows another path
    for i in range(inputs.shape[0]):
        free = reference_dgr(
            gated.model,
            inputs[i : i + 1],
            _starts(finder, inputs[i : i + 1]),
            gamma=0.0,
            lr=1e3,
            momentum=0.9,
            iterations=5,
            clamp_max=math.inf,
        )
        clamped = reference_dgr(
            gated.model,
            inputs[i : i + 1],
            _starts(finder, inputs[i : i + 1]),
            gamma=0.0,
            lr=1e3,
            momentum=0.9,
            iterations=5,
            clamp_max=2.0,
        )
        torch.testing.assert_close(
            torch.tensor(clamped[3], dtype=torch.float64), result.losses[:, i], rtol=1e-9, atol=1e-9
        )
        assert free[3] != clamped[3]
    iterate = DGR(
        gated, DGRConfig(gamma=0.0, lr=1e3, init="uniform", clamp_max=2.0, iterations=2, seed=1)
    ).optimise(inputs)  # where iterate 1 is the best, it is one clamped step: mostly on a bound
    moved = iterate.gates.flatten()[iterate.best_iteration == 1]
    assert moved.numel() and ((moved == 0.0) | (moved == 2.0)).float().mean() > 0.5


def test_gamma_zero_with_ones_never_moves(gated, inputs) -> None:
    """The claim "γ = 0 keeps every gate ≥ its start" is not true in general (a U(0, 1) start can
    decrease, checked below). What holds exactly: with γ = 0 and gates at 1, the gated model
    *is* the teacher, so the distillation loss equals the entropy H(π), its global minimum over
    all gates (Gibbs: −Σ π log q ≥ −Σ π log π, equality iff q = π). Its gradient,
    softmax(z) − π, is zero, so momentum SGD never moves: every iterate is the start (to
    rounding) and every loss is H(π)."""
    result = DGR(gated, DGRConfig(gamma=0.0)).optimise(inputs)
    with torch.no_grad():
        pi = gated.forward(inputs).softmax(dim=1)
    entropy = -(pi * pi.log()).sum(dim=1)
    torch.testing.assert_close(result.losses, entropy.expand_as(result.losses), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        result.gates.flatten(), torch.ones_like(result.gates.flatten()), rtol=0, atol=1e-12
    )
    assert result.kept_prediction.all()

    uniform = DGR(gated, DGRConfig(gamma=0.0, init="uniform", seed=0))
    start = uniform.initial_gates(inputs)
    moved = uniform.optimise(inputs).gates
    assert any((moved[n] < start[n] - 1e-3).any() for n in start)
    assert (uniform.optimise(inputs).best_loss <= uniform.optimise(inputs).losses[0] + 1e-12).all()


def test_large_gamma_keeps_only_what_the_prediction_needs(gated, inputs) -> None:
    small = DGR(gated, DGRConfig(gamma=0.01)).optimise(inputs)
    large = DGR(gated, DGRConfig(gamma=1.0, connect=False)).optimise(inputs)
    assert large.kept_prediction.all()
    kept_large, kept_small = large.pathway.kept_fraction(), small.pathway.kept_fraction()
    assert (kept_large <= 0.2).all() and (kept_large > 0).all()  # zero gates would predict class 0
    assert (kept_large < kept_small).all()
    with torch.no_grad():
        assert torch.equal(gated.forward(inputs, large.gates).argmax(1), large.target)


def test_no_kept_iterate_returns_start_and_retries(gated, inputs) -> None:
    # Target class 1 is never the prediction along the path: nothing is kept, even after a retry.
    cfg = DGRConfig.pathwaygrad(iterations=5, granularity="channel")
    finder = DGR(gated, cfg)
    result = finder.optimise(inputs, target=1)
    assert not result.kept_prediction.any()
    assert (result.best_iteration == -1).all()
    torch.testing.assert_close(result.gates.flatten(), torch.ones_like(result.gates.flatten()))
    torch.testing.assert_close(result.best_loss, result.losses[0])
    torch.testing.assert_close(result.gamma, torch.full((6,), cfg.gamma * 0.1, dtype=torch.float64))
    assert result.forward_equivalents == pytest.approx(2 + 2 * (3 * 5 - 2) + 3)
    assert finder.optimise(inputs).forward_equivalents == pytest.approx(
        finder.forward_equivalents()
    )


def test_retry_with_smaller_gamma_only_for_failed_samples(gated, inputs) -> None:
    # With these U(0, 1) starts and γ = 2, some samples keep the prediction at no iterate; γ/10
    # rescues them. Starts depend on each sample's values only, so a retry starts where it did.
    base = {"init": "uniform", "seed": 2, "iterations": 10}
    result = DGR(gated, DGRConfig(gamma=2.0, retries=1, **base)).optimise(inputs)
    plain = DGR(gated, DGRConfig(gamma=2.0, **base)).optimise(inputs)
    ok = plain.best_iteration >= 0  # some iterate kept the prediction
    failed = (~ok).nonzero().squeeze(1)
    assert 0 < failed.numel() < inputs.shape[0]
    retried = DGR(gated, DGRConfig(gamma=0.2, **base)).optimise(inputs[failed])
    assert (result.best_iteration >= 0).all() and (retried.best_iteration >= 0).all()
    for name in result.gates:
        torch.testing.assert_close(result.gates[name][ok], plain.gates[name][ok], rtol=0, atol=0)
        torch.testing.assert_close(
            result.gates[name][failed], retried.gates[name], rtol=1e-12, atol=1e-12
        )
    expected_gamma = torch.where(ok, 2.0, 0.2).tolist()
    assert result.gamma.tolist() == pytest.approx(expected_gamma)
    assert torch.equal(result.best_iteration[failed], retried.best_iteration)
    share = failed.numel() / inputs.shape[0]
    assert result.forward_equivalents == pytest.approx(2 + (3 * 10 - 2) * (1 + share) + 3)


def test_pathwaygrad_preset() -> None:
    cfg = DGRConfig.pathwaygrad()
    assert (cfg.gamma, cfg.lr, cfg.iterations, cfg.granularity, cfg.retries, cfg.retry_factor) == (
        0.01,
        0.01,
        1000,
        "element",
        1,
        0.1,
    )
    assert DGRConfig.pathwaygrad(init="uniform").init == "uniform"


def test_element_gates(gated, inputs) -> None:
    result = DGR(gated, DGRConfig(granularity="element", iterations=5)).optimise(inputs)
    assert result.gates["features.4"].shape == (6, 6, 8, 8)
    assert result.pathway.granularity == "element" and result.pathway.is_binary


def test_percentile_binarisation(gated, inputs) -> None:
    result = DGR(gated, DGRConfig(binarize="percentile", sparsity=0.5)).optimise(inputs)
    assert result.pathway.is_binary
    assert (result.pathway.kept_fraction() <= 0.5 + 1e-6).all()
    assert not result.gates.is_binary
    assert result.pathway.metadata["binarize"] == "percentile"
    assert result.gates.metadata["continuous"] and "continuous" not in result.pathway.metadata


# ---------------------------------------------------------------------- batching and contract


@pytest.mark.parametrize("init", ["ones", "uniform"])
def test_batch_equals_loop(gated, inputs, init) -> None:
    finder = DGR(gated, DGRConfig(init=init, gamma=0.3))
    check_batch_equals_loop(lambda x, t: finder.optimise(x, t).gates, inputs, atol=1e-9, rtol=1e-9)
    check_batch_equals_loop(lambda x, t: finder.find(x, t), inputs)
    check_batch_equals_loop(
        lambda x, t: finder.optimise(x, t).gates,
        inputs,
        torch.tensor([2, 2, 1, 2, 0, 2]),
        atol=1e-9,
        rtol=1e-9,
    )


def test_batch_equals_loop_float32() -> None:
    model = tiny_cnn()
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    finder = DGR(GatedModel.discover(model, x[:1]))
    check_batch_equals_loop(lambda xb, t: finder.optimise(xb, t).gates, x, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cls", [DGR, DGRR])
def test_contract(model, inputs, gated, cls) -> None:
    finder = cls(gated, DGRConfig(iterations=3))
    check_leaves_model_unchanged(model, lambda x, t: finder.find(x, t), inputs)
    check_cleans_up_after_raise(model, model.features[2], lambda x, t: finder.find(x, t), inputs)


def test_dgr_r_reproducible(gated, inputs) -> None:
    first = DGRR(gated, DGRConfig(seed=5)).optimise(inputs).gates
    again = DGRR(gated, DGRConfig(seed=5)).optimise(inputs).gates
    other = DGRR(gated, DGRConfig(seed=6)).optimise(inputs).gates
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)
    twice = torch.cat([inputs[:2], inputs[1:2], inputs[:1]])  # samples 0, 1, 1, 0
    start = DGRR(gated, DGRConfig(seed=5)).initial_gates(twice)
    for s in start.values():
        assert ((s >= 0) & (s < 1)).all() and s.dtype == torch.float64
        assert not torch.equal(s[0], s[1])  # samples start apart ...
        assert torch.equal(s[0], s[3]) and torch.equal(s[1], s[2])  # ... wherever they stand
    shared = DGRR(gated, DGRConfig(seed=5, init_draw="shared")).initial_gates(twice)
    assert all(torch.equal(s[0], s[1]) for s in shared.values())
    single = DGRR(gated, DGRConfig(seed=5)).initial_gates(inputs[1:2].float())
    assert not torch.equal(single["features.1"][0].double(), start["features.1"][1])  # other bytes


def test_registry(gated, inputs) -> None:
    assert {"dgr", "dgr-r"} <= set(finder_names())
    options = FinderOptions(sparsity=0.5, seed=4)
    dgr, dgr_r = build_finder("dgr", gated, options), build_finder("dgr-r", gated, options)
    assert (
        isinstance(dgr, DGR) and dgr.config.init == "ones" and dgr.config.binarize == "percentile"
    )
    assert isinstance(dgr_r, DGRR) and dgr_r.config.init == "uniform" and dgr_r.config.seed == 4
    pathway = dgr.find(inputs)
    assert pathway.is_binary and pathway.batch_size == 6
    assert dgr.forward_equivalents() == 93.0  # 3T + the connectivity test


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "changes",
    [
        {"iterations": 0},
        {"iterations": -3},
        {"iterations": 2.5},
        {"gamma": -0.1},
        {"gamma": float("nan")},
        {"clamp_max": 0.0},
        {"clamp_max": -1.0},
        {"lr": 0.0},
        {"momentum": 1.0},
        {"init": "zeros"},
        {"binarize": "median"},
        {"granularity": "layer"},
        {"sparsity": 1.0},
        {"retries": -1},
        {"retry_factor": 1.0},
        {"memory_format": "nhwc"},
    ],
)
def test_bad_config(changes) -> None:
    with pytest.raises(InputError):
        DGRConfig(**changes)


def test_bad_inputs(gated, inputs) -> None:
    finder = DGR(gated, DGRConfig(iterations=1))
    with pytest.raises(InputError):
        finder.find(inputs[:, :2])
    with pytest.raises(InputError):
        finder.find(torch.full_like(inputs, float("nan")))
    with pytest.raises(InputError):
        finder.find(inputs, target=7)
    with pytest.raises(InputError):
        DGR(gated, {"gamma": 0.1})  # type: ignore[arg-type]


def test_drives_pathway_gradient(gated, inputs) -> None:
    from neuralpath.attribution import PathwayGradient, zero_maps

    finder = DGR(gated, DGRConfig())  # γ = 0.3 would empty a layer for half the samples
    maps = PathwayGradient(gated, finder).attribute(inputs)
    assert not zero_maps(maps).any()
    pathway = finder.find(inputs)
    x = inputs.clone().requires_grad_(True)
    predicted = gated.forward(inputs).argmax(1, keepdim=True)  # PG's default target
    (expected,) = torch.autograd.grad(gated.forward(x, pathway).gather(1, predicted).sum(), x)
    torch.testing.assert_close(maps, expected)


# ---------------------------------------------------------------------- memory format


class _PoolCNN(torch.nn.Module):
    """One input channel, max-pooling (the case channels-last speeds up) and a ``view`` flatten
    when ``view`` is set (which channels-last activations cannot take)."""

    def __init__(self, view: bool = False) -> None:
        super().__init__()
        self.view = view
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        )  # fmt: skip
        self.fc = torch.nn.Linear(6 * 2 * 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        return self.fc(h.view(h.shape[0], -1) if self.view else h.flatten(1))


@pytest.mark.parametrize("granularity", ["channel", "element"])
def test_channels_last_gives_the_contiguous_result(granularity) -> None:
    torch.manual_seed(0)
    model = _PoolCNN().double().eval()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gated = GatedModel.discover(model, x[:1])
    layouts: list[bool] = []  # whether the first conv ran channels-last, per forward
    model.features[0].register_forward_hook(
        lambda _m, _i, out: layouts.append(not out.is_contiguous())
    )
    results = {}
    for fmt in ("contiguous", "channels_last", "auto"):
        layouts.clear()
        config = DGRConfig(granularity=granularity, memory_format=fmt, connect=False)
        results[fmt] = DGR(gated, config).optimise(x)
        assert set(layouts) == {fmt != "contiguous"}
    reference = results["contiguous"]
    for result in results.values():
        assert torch.equal(result.best_iteration, reference.best_iteration)
        for name in reference.gates:
            assert result.gates[name].is_contiguous()
            torch.testing.assert_close(
                result.gates[name], reference.gates[name], atol=1e-10, rtol=1e-10
            )


def test_auto_memory_format_falls_back_for_models_that_view() -> None:
    torch.manual_seed(0)
    model = _PoolCNN(view=True).eval()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    gated = GatedModel.discover(model, x[:1])
    result = DGR(gated, DGRConfig(iterations=3)).optimise(x)  # "auto"
    assert gated.runs_channels_last() is False
    assert result.gates["features.1"].shape == (3, 4)
    with pytest.raises(RuntimeError, match="view"):
        DGR(gated, DGRConfig(iterations=3, memory_format="channels_last")).optimise(x)
