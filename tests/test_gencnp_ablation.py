"""GEN-CNP trained under an intervention, with CE distillation and the swap / blank penalties:
each loss against a hand computation on a toy batch; checkpoints record the training settings and
older checkpoints without them still load."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from neuralpath.errors import CheckpointError, InputError
from neuralpath.gating import GatedModel
from neuralpath.interventions import MeanAblation
from neuralpath.methods.gencnp import (
    FitConfig,
    GeneratorConfig,
    PathwayGenerator,
    fit_gencnp,
    load_generator,
)
from neuralpath.methods.gencnp.train import (
    blank_term,
    distillation_term,
    follow_penalty,
    step_loss,
    swap_term,
)
from neuralpath.metrics.leakage import swap_partners
from neuralpath.reference import reference_statistics

from toys import tiny_cnn

# init_logit 0: about half of the channels start dropped, so the replacement matters.
SMALL = GeneratorConfig(width=16, rfe_width=8, heads=2, resolution=2, init_logit=0.0)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """A TinyCNN with a 10× last layer and no classifier biases: confident enough that the
    replacement shows, and predicting two classes on the noise images (swap pairs exist)."""
    model = tiny_cnn(seed=10)
    with torch.no_grad():
        model.classifier[-1].weight.mul_(10.0)
        model.classifier[-1].bias.zero_()
        model.classifier[1].bias.zero_()
    return model


@pytest.fixture(scope="module")
def gated(model: nn.Module) -> GatedModel:
    return GatedModel.discover(model, torch.zeros(1, 3, 8, 8))


@pytest.fixture(scope="module")
def images() -> Tensor:
    return torch.randn(24, 3, 8, 8, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def mean_gated(gated: GatedModel, images: Tensor) -> GatedModel:
    statistics = reference_statistics(gated, images, progress=False)
    return gated.with_intervention(MeanAblation(statistics))


def by_hand(
    model: nn.Module, x: Tensor, masks: Mapping[str, Tensor], means: Mapping[str, Tensor] | None
) -> Tensor:
    """TinyCNN's logits with ``m*a + (1-m)*r`` at both ReLU sites (r = 0 or the mean map)."""
    f = model.features

    def site(name: str, a: Tensor) -> Tensor:
        m = masks[name][:, :, None, None]
        r = torch.zeros_like(a) if means is None else means[name].unsqueeze(0)
        return m * a + (1 - m) * r

    a1 = site("features.1", torch.relu(f[0](x)))
    a2 = site("features.4", torch.relu(f[3](f[2](a1))))
    return model.classifier(f[5](a2))


def generator_output(gated: GatedModel, x: Tensor, seed: int = 0):
    torch.manual_seed(seed)
    generator = PathwayGenerator(gated.sites, SMALL)
    _, recording = gated.record(x)
    return generator, generator({n: a.detach() for n, a in recording.activations.items()})


def test_mean_ablation_training_loss_is_the_hand_loss(model, gated, mean_gated, images) -> None:
    """fit_gencnp's first-step loss (one batch = the whole set) is KL + alpha * l2 with the
    masked forward ``m*a + (1-m)*mu`` computed by hand; zero ablation gives another loss."""
    config = FitConfig(epochs=1, batch_size=24, alpha=0.5, val_fraction=0.0, generator=SMALL)
    with torch.no_grad():
        _, output = generator_output(gated, images, seed=config.seed)
        teacher = model(images)
        means = mean_gated.intervention.statistics.means
        losses = {}
        for name, replacement in (("mean", means), ("zero", None)):
            student = by_hand(model, images, output.masks, replacement)
            log_q, log_p = F.log_softmax(student, 1), F.log_softmax(teacher, 1)
            kd = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
            losses[name] = float(kd + 0.5 * output.sparsity_penalty().mean())
    assert 0.2 < float(output.kept_fraction().mean()) < 0.8
    assert abs(losses["mean"] - losses["zero"]) > 1e-3  # far above the 1e-5 tolerance below
    data = TensorDataset(images, torch.zeros(24, dtype=torch.long))
    for name, trained_under in (("mean", mean_gated), ("zero", gated)):
        generator = fit_gencnp(trained_under, data, config, progress=False)
        assert generator.fit_history[0]["train_loss"] == pytest.approx(losses[name], rel=1e-5)


def test_ce_distillation_by_hand(gated, images) -> None:
    teacher = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    student = torch.tensor([[0.0, 1.0, 0.0], [1.0, 2.0, 3.0]])
    expected = [
        -math.log(1 / (1 + math.e + 1)),  # class 0
        -math.log(math.exp(3) / (math.e + math.exp(2) + math.exp(3))),  # class 2
    ]
    got = distillation_term(teacher, student, "ce")
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    config = FitConfig(distillation="ce", alpha=0.25, generator=SMALL)
    torch.manual_seed(0)
    generator = PathwayGenerator(gated.sites, SMALL)
    with torch.no_grad():
        step = step_loss(gated, generator, images[:6], config)
    ce = F.cross_entropy(step.student, step.teacher.argmax(1))
    assert float(step.kd) == pytest.approx(float(ce), rel=1e-6)
    assert float(step.total) == pytest.approx(float(ce + 0.25 * step.sparsity), rel=1e-6)


def test_follow_penalty_is_minus_log_one_minus_p() -> None:
    logits = torch.tensor([[1.0, 2.0, -1.0], [30.0, 0.0, 0.0]])
    classes = torch.tensor([1, 0])
    p = logits.softmax(1)[torch.arange(2), classes]
    assert follow_penalty(logits, classes)[0] == pytest.approx(float(-torch.log1p(-p[0])))
    assert follow_penalty(logits, classes)[1] == pytest.approx(30.0 - math.log(2), rel=1e-6)


def test_swap_term_by_hand_with_gradients(model, mean_gated, images) -> None:
    x = images[:6]
    classes = torch.tensor([0, 1, 2, 0, 1, 1])
    generator, output = generator_output(mean_gated, x)
    term = swap_term(mean_gated, x, output.masks, classes, seed=3)
    partner, valid = swap_partners(classes, 3)
    assert bool(valid.all())
    means = mean_gated.intervention.statistics.means
    expected, follows = [], []
    with torch.no_grad():
        for i, j in enumerate(partner.tolist()):
            logits = by_hand(
                model, x[i : i + 1], {n: m[j : j + 1] for n, m in output.masks.items()}, means
            )
            p = logits.softmax(1)[0, classes[j]]
            expected.append(float(-torch.log1p(-p)))
            follows.append(bool(logits.argmax(1) == classes[j]))
    assert term.penalty.tolist() == pytest.approx(expected, rel=1e-5)
    assert term.follows.tolist() == follows
    term.mean().backward()
    grads = [p.grad for p in generator.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert generator.rpd.heads[0].bias.grad.abs().sum() > 0  # reaches the first layer's scores


def test_swap_term_without_partners_is_zero(mean_gated, images) -> None:
    _, output = generator_output(mean_gated, images[:4])
    term = swap_term(mean_gated, images[:4], output.masks, torch.zeros(4, dtype=torch.long), 0)
    assert term.penalty.numel() == 0 and float(term.mean()) == 0.0


def test_blank_term_by_hand_and_in_the_loss(model, mean_gated, images) -> None:
    x = images[:5]
    baseline = torch.full((3, 8, 8), 0.1)
    generator, output = generator_output(mean_gated, x)
    classes = torch.tensor([0, 1, 2, 0, 1])
    term = blank_term(mean_gated, baseline, output.masks, classes)
    means = mean_gated.intervention.statistics.means
    with torch.no_grad():
        logits = by_hand(model, baseline.expand(5, 3, 8, 8), output.masks, means)
    p = logits.softmax(1)[torch.arange(5), classes]
    assert term.penalty.tolist() == pytest.approx((-torch.log1p(-p)).tolist(), rel=1e-5)
    term.mean().backward()
    assert generator.rpd.heads[-1].bias.grad.abs().sum() > 0
    # in the objective: total = kd + alpha * l2 + W_swap * swap + W_blank * blank
    config = FitConfig(alpha=0.5, swap_weight=2.0, blank_weight=3.0, generator=SMALL)
    with torch.no_grad():
        step = step_loss(mean_gated, generator, x, config, baseline=baseline, seed=7)
        assert step.swap is not None and step.blank is not None
        again = swap_term(mean_gated, x, step.output.masks, step.teacher.argmax(1), 7)
    assert again.penalty.numel() > 0
    expected = step.kd + 0.5 * step.sparsity + 2.0 * again.mean() + 3.0 * step.blank.mean()
    assert float(step.total) == pytest.approx(float(expected), rel=1e-6)
    plain = step_loss(mean_gated, generator, x, FitConfig(alpha=0.5, generator=SMALL))
    assert plain.swap is None and plain.blank is None


def test_bad_knobs() -> None:
    with pytest.raises(InputError, match="swap_weight"):
        FitConfig(swap_weight=-0.5)
    with pytest.raises(InputError, match="blank_weight"):
        FitConfig(blank_weight=float("nan"))
    with pytest.raises(InputError, match="distillation"):
        FitConfig(distillation="mse")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="temperature"):
        FitConfig(distillation="ce", temperature=2.0)


def test_checkpoint_records_training_settings(mean_gated, gated, images, tmp_path) -> None:
    data = TensorDataset(images, torch.zeros(24, dtype=torch.long))
    config = FitConfig(
        epochs=2, batch_size=8, distillation="ce", swap_weight=0.5, blank_weight=0.25,
        val_fraction=0.25, generator=SMALL,
    )  # fmt: skip
    fit_gencnp(mean_gated, data, config, out_dir=tmp_path, progress=False, stop_after=1)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["ablation"] == mean_gated.intervention.describe()
    assert meta["ablation"]["ablation"] == "mean" and meta["blank_baseline"] == "zeros"
    assert (meta["fit_config"]["distillation"], meta["fit_config"]["swap_weight"]) == ("ce", 0.5)
    assert meta["fit_config"]["blank_weight"] == 0.25
    assert {"val_blank_agreement", "val_swap_follows_mask"} <= set(meta["history"][0])
    assert load_generator(tmp_path, gated).ablation == "mean"
    with pytest.raises(CheckpointError, match="trained under"):
        fit_gencnp(gated, data, config, out_dir=tmp_path, resume=True, progress=False)
    fit_gencnp(mean_gated, data, config, out_dir=tmp_path, resume=True, progress=False)


def test_old_checkpoint_without_the_fields_loads_and_resumes(gated, images, tmp_path) -> None:
    data = TensorDataset(images, torch.zeros(24, dtype=torch.long))
    config = FitConfig(epochs=2, batch_size=8, val_fraction=0.0, generator=SMALL)
    fit_gencnp(gated, data, config, out_dir=tmp_path, progress=False, stop_after=1)
    meta = json.loads((tmp_path / "meta.json").read_text())
    for key in ("ablation", "blank_baseline"):
        del meta[key]
    for key in ("distillation", "swap_weight", "blank_weight"):
        del meta["fit_config"][key]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    loaded = load_generator(tmp_path, gated)
    assert loaded.ablation == "zero"
    assert FitConfig.from_dict(meta["fit_config"]) == config
    resumed = fit_gencnp(gated, data, config, out_dir=tmp_path, resume=True, progress=False)
    assert [h["epoch"] for h in resumed.fit_history] == [1, 2]
