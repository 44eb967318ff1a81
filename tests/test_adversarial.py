"""FGSM/PGD stay in the ε-ball and the valid pixel range; the DGR-gate detector runs end to end."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from neuralpath.adversarial import Attack, detect_adversarial, fgsm, gate_features, pgd
from neuralpath.data import denormalize, load_dataset
from neuralpath.errors import InputError
from neuralpath.gating import GatedModel
from neuralpath.methods.dgr import DGR, DGRConfig
from neuralpath.models import build_model

from contract import check_batch_equals_loop, check_leaves_model_unchanged

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", "test", limit=48, seed=0)


@pytest.fixture(scope="module")
def model(data) -> nn.Module:
    """A small VGG-11 fitted for a few steps on the synthetic shapes, so attacks have a gradient."""
    torch.manual_seed(0)
    net = build_model(
        "vgg11", num_classes=data.num_classes, in_channels=3, input_size=32, width=0.125
    )
    train = load_dataset("synthetic", "train", limit=256, seed=1)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for step in range(40):
        batch = torch.arange(step * 32, step * 32 + 32) % len(train)
        loss = nn.functional.cross_entropy(net(train.images[batch]), train.labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
@pytest.mark.parametrize("eps", [0.0, 0.03, 0.2])
def test_attacks_respect_eps_and_range(model, data, name, eps) -> None:
    x, y = data.images[:16], data.labels[:16]
    adv = Attack(name, eps, data.mean, data.std)(model, x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    clean_px, adv_px = data.denormalize(x), data.denormalize(adv)
    assert (adv_px - clean_px).abs().max() <= eps + 1e-6
    assert adv_px.min() >= -1e-6 and adv_px.max() <= 1 + 1e-6
    if eps == 0.0:
        torch.testing.assert_close(adv, x, atol=1e-6, rtol=0)


def test_range_clamp_in_unnormalised_space(model) -> None:
    # Pixels at 0 and 1: every perturbed pixel must stay in [0, 1] *before* normalisation.
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)).round()
    x = (pixels - torch.tensor(MEAN).view(-1, 1, 1)) / torch.tensor(STD).view(-1, 1, 1)
    y = torch.tensor([0, 1, 2, 3])
    for adv in (
        fgsm(model, x, y, 0.3, mean=MEAN, std=STD),
        pgd(model, x, y, 0.3, mean=MEAN, std=STD, steps=3),
    ):
        adv_px = denormalize(adv, MEAN, STD)
        assert adv_px.min() >= -1e-6 and adv_px.max() <= 1 + 1e-6
        assert (adv_px - pixels).abs().max() <= 0.3 + 1e-6
        assert (adv_px != pixels).any()


def test_attacks_raise_the_loss(model, data) -> None:
    x, y = data.images[:32], data.labels[:32]
    with torch.no_grad():
        clean = nn.functional.cross_entropy(model(x), y)
        after_fgsm = nn.functional.cross_entropy(
            model(fgsm(model, x, y, 0.05, mean=data.mean, std=data.std)), y
        )
        after_pgd = nn.functional.cross_entropy(
            model(pgd(model, x, y, 0.05, mean=data.mean, std=data.std)), y
        )
    assert after_fgsm > clean and after_pgd > after_fgsm


def test_fgsm_batch_equals_loop_and_leaves_model_unchanged(model, data) -> None:
    x, y = data.images[:4], data.labels[:4]

    def run(xb, yb):
        return fgsm(model, xb, yb, 0.05, mean=data.mean, std=data.std)

    check_batch_equals_loop(run, x, y)
    check_leaves_model_unchanged(model, run, x, y)
    check_leaves_model_unchanged(
        model, lambda xb, yb: pgd(model, xb, yb, 0.05, mean=data.mean, std=data.std, steps=2), x, y
    )


def test_pgd_is_reproducible(model, data) -> None:
    x, y = data.images[:4], data.labels[:4]
    a = pgd(model, x, y, 0.05, mean=data.mean, std=data.std, seed=3)
    b = pgd(model, x, y, 0.05, mean=data.mean, std=data.std, seed=3)
    c = pgd(model, x, y, 0.05, mean=data.mean, std=data.std, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eps": -0.1},
        {"eps": float("nan")},
        {"eps": True},
        {"labels": torch.zeros(3, dtype=torch.long)},
        {"labels": torch.zeros(4)},
    ],
)
def test_attack_bad_input(model, data, kwargs) -> None:
    args = {"eps": 0.1, "labels": data.labels[:4], **kwargs}
    with pytest.raises(InputError):
        fgsm(model, data.images[:4], args["labels"], args["eps"], mean=data.mean, std=data.std)
    with pytest.raises(InputError):
        Attack("cw", 0.1, data.mean, data.std)
    with pytest.raises(InputError):
        Attack("pgd", args["eps"], data.mean, data.std)(model, data.images[:4], args["labels"])
    with pytest.raises(InputError):
        pgd(model, data.images[:4], data.labels[:4], 0.1, mean=data.mean, std=data.std, steps=0)


@pytest.mark.parametrize(
    "changes", [{"name": "cw"}, {"eps": -1.0}, {"steps": 0}, {"steps": 2.0}, {"seed": True}]
)
def test_attack_config_is_checked_when_made(data, changes) -> None:
    settings = {"name": "pgd", "eps": 0.1, "mean": data.mean, "std": data.std, **changes}
    with pytest.raises(InputError):
        Attack(**settings)


def test_attack_config_matches_the_functions(model, data) -> None:
    x, y = data.images[:4], data.labels[:4]
    config = Attack("pgd", 0.05, data.mean, data.std, steps=4, seed=2)
    expected = pgd(model, x, y, 0.05, mean=data.mean, std=data.std, steps=4, seed=5)
    assert torch.equal(config(model, x, y, seed_offset=3), expected)
    fast = Attack("fgsm", 0.05, data.mean, data.std)(model, x, y)
    assert torch.equal(fast, fgsm(model, x, y, 0.05, mean=data.mean, std=data.std))


def test_gate_features_are_concatenated_gates(model, data) -> None:
    finder = DGR(GatedModel.discover(model, data.images[:1]), DGRConfig(iterations=3))
    features = gate_features(finder, data.images[:5], batch_size=2)
    direct = finder.optimise(data.images[:5]).gates.flatten()
    assert features.shape == (5, sum(site.units for site in finder.gated.sites))
    torch.testing.assert_close(features, direct, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_detector_pipeline(model, data, name) -> None:
    finder = DGR(GatedModel.discover(model, data.images[:1]), DGRConfig(iterations=10))
    attack = Attack(name, 0.1, data.mean, data.std, steps=3, seed=0)
    result = detect_adversarial(finder, data.images, data.labels, attack, only_successful=False)
    assert 0.0 <= result.roc_auc <= 1.0 and 0.0 <= result.accuracy <= 1.0
    assert 0.0 <= result.attack_success_rate <= 1.0
    assert result.n == 48 and result.n_train + result.n_test == 48
    assert result.features == sum(site.units for site in finder.gated.sites)
    json.dumps(result.to_dict())
    again = detect_adversarial(finder, data.images, data.labels, attack, only_successful=False)
    assert again == result


def test_detector_too_few_pairs(model, data) -> None:
    finder = DGR(GatedModel.discover(model, data.images[:1]), DGRConfig(iterations=1))
    with pytest.raises(InputError, match="pairs"):
        detect_adversarial(
            finder, data.images[:6], data.labels[:6], Attack("fgsm", 0.0, data.mean, data.std)
        )


def test_cli_detect_adversarial(tmp_path, capsys) -> None:
    from neuralpath.cli import main
    from neuralpath.train import train_target

    train_target(
        "vgg11",
        "synthetic",
        epochs=1,
        width=0.125,
        limit=64,
        out_dir=tmp_path / "ckpt",
        progress=False,
        device="cpu",
    )
    out = tmp_path / "detect"
    code = main(
        [
            "detect-adversarial",
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--data",
            "synthetic",
            "--attack",
            "fgsm",
            "--eps",
            "0.1",
            "--limit",
            "24",
            "--iterations",
            "3",
            "--include-failed",
            "--out",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "results.json").read_text())
    assert printed == written
    assert {"roc_auc", "accuracy", "attack_success_rate", "n"} <= set(written)
    assert written["n"] == 24 and 0.0 <= written["roc_auc"] <= 1.0
    assert (
        main(
            [
                "detect-adversarial",
                "--checkpoint",
                str(tmp_path / "ckpt"),
                "--data",
                "synthetic",
                "--attack",
                "pgd",
                "--eps",
                "-1",
                "--limit",
                "8",
                "--out",
                str(out),
            ]
        )
        == 2
    )


def test_fit_detector_separates_separable_features() -> None:
    from neuralpath.adversarial import fit_detector

    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(40, 6, generator=generator)
    roc_auc, accuracy, n_train, n_test = fit_detector(clean, clean + 5.0, seed=1)
    assert (roc_auc, accuracy, n_train, n_test) == (1.0, 1.0, 28, 12)
    same, _, _, _ = fit_detector(clean, torch.randn(40, 6, generator=generator), seed=1)
    assert 0.0 <= same < 0.9
    with pytest.raises(InputError):
        fit_detector(clean, clean[:, :3])
    with pytest.raises(InputError):
        fit_detector(clean[:3], clean[:3])
