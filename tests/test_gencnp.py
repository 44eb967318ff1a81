"""GEN-CNP: generator, training, checkpoints, finder contract, class pathways, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from neuralpath.cli import main
from neuralpath.errors import CheckpointError, DataError, InputError
from neuralpath.gating import GatedModel
from neuralpath.methods import FinderOptions, build_finder
from neuralpath.methods.gencnp import (
    FitConfig,
    GenCNPFinder,
    GeneratorConfig,
    PathwayGenerator,
    fit_gencnp,
    load_generator,
)
from neuralpath.pathway import ClassPathways
from neuralpath.train import train_target
from neuralpath.transfer import build_class_pathways, evaluate_transfer

from contract import (
    check_batch_equals_loop,
    check_cleans_up_after_raise,
    check_leaves_model_unchanged,
)
from toys import FunctionalCNN, tiny_cnn

torch.set_num_threads(1)
SMALL = GeneratorConfig(width=16, rfe_width=8, heads=2, resolution=2, init_logit=2.0)


def colour_images(n: int, seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images whose class (0, 1, 2) is the colour channel of a bright random patch."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = 0.3 * torch.randn(n, 3, size, size, generator=g)
    corners = torch.randint(0, size // 2 + 1, (n, 2), generator=g)
    for i in range(n):
        r, c = corners[i].tolist()
        images[i, labels[i], r : r + size // 2, c : c + size // 2] += 1.5
    return images, labels


@pytest.fixture(scope="module")
def data():
    """Colour-patch images at 8×8 (3 classes): 240 training and 60 test images."""
    return (TensorDataset(*colour_images(240, seed=0)), TensorDataset(*colour_images(60, seed=1)))


@pytest.fixture(scope="module")
def target(data) -> nn.Module:
    """A TinyCNN trained on the colour patches (so its predictions mean something)."""
    images, labels = data[0].tensors
    model = tiny_cnn(seed=0).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = torch.randint(0, len(labels), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test_images, test_labels = data[1].tensors
    assert (model(test_images).argmax(1) == test_labels).float().mean() > 0.9
    return model


@pytest.fixture(scope="module")
def gated(target) -> GatedModel:
    return GatedModel.discover(target, torch.zeros(1, 3, 8, 8))


@pytest.fixture(scope="module")
def trained(gated, data, tmp_path_factory):
    """A generator fitted for 4 epochs, checkpointed into a directory."""
    out = tmp_path_factory.mktemp("gen")
    config = FitConfig(epochs=4, batch_size=32, lr=3e-3, alpha=2.0, generator=SMALL)
    generator = fit_gencnp(gated, data[0], config, out_dir=out, progress=False)
    return generator, out


def test_generator_shapes_for_any_target() -> None:
    x = torch.randn(5, 3, 8, 8)
    cases = [
        (tiny_cnn(seed=1), x, {"include_fc": True}),
        (tiny_cnn(seed=1, inplace=True), x, {}),
        (FunctionalCNN().eval(), torch.randn(5, 1, 8, 8), {}),
        (FunctionalCNN().eval(), torch.randn(5, 1, 12, 5), {}),  # non-square maps
    ]
    for model, inputs, kwargs in cases:
        gm = GatedModel.discover(model, inputs[:1], **kwargs)
        for rfe in ("conv", "mlp"):
            for pdn in ("shared", "per-layer"):
                cfg = GeneratorConfig(width=16, rfe_width=8, heads=2, rfe=rfe, pdn=pdn)
                generator = PathwayGenerator(gm.sites, cfg)
                _, rec = gm.record(inputs)
                out = generator(rec.activations)
                assert list(out.masks) == gm.site_names
                for site in gm.sites:
                    s, m = out.scores[site.name], out.masks[site.name]
                    assert s.shape == m.shape == (5, site.units)
                    assert ((s >= 0) & (s <= 1)).all()
                    assert torch.equal(m, torch.round(s.detach()))
    fc_sites = [
        s for s in GatedModel.discover(tiny_cnn(), x[:1], include_fc=True).sites if s.kind == "fc"
    ]
    assert fc_sites, "the FC site case must be exercised"


def test_bad_generator_config() -> None:
    with pytest.raises(InputError, match="rfe"):
        GeneratorConfig(rfe="lstm")
    with pytest.raises(InputError, match="divisible"):
        GeneratorConfig(width=10, heads=4)


def test_shared_pdn_lets_deep_layers_shape_shallow_scores(gated) -> None:
    """Changing only the deepest layer's features moves the first layer's scores iff shared."""
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    _, rec = gated.record(x)
    features = {n: a.detach() for n, a in rec.activations.items()}
    first, last = gated.site_names[0], gated.site_names[-1]
    changed = dict(features)
    changed[last] = features[last] * 3.0 + 1.0
    for pdn, moves in (("shared", True), ("per-layer", False)):
        torch.manual_seed(0)
        cfg = GeneratorConfig(width=16, rfe_width=8, heads=2, pdn=pdn, init_logit=0.0)
        generator = PathwayGenerator(gated.sites, cfg).eval()
        with torch.no_grad():
            delta = (
                (generator(features).scores[first] - generator(changed).scores[first]).abs().max()
            )
        assert (delta > 1e-6) == moves, (pdn, float(delta))


def test_fit_trains_end_to_end(trained, gated, data) -> None:
    generator, _ = trained
    history = generator.fit_history
    assert len(history) == 4
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    # sparser than the all-ones start, still mostly faithful
    assert history[-1]["val_kept_fraction"] < 0.95
    assert history[-1]["val_agreement"] >= 0.75
    pathway = GenCNPFinder(gated, generator).find(data[1].tensors[0])
    kept = pathway.kept_fraction()
    assert pathway.is_binary and (kept < 1).any()


def test_fit_leaves_target_unchanged(target, data) -> None:
    def run(inputs, _target):
        gm = GatedModel.discover(target, inputs[:1])
        return fit_gencnp(
            gm, data[0], FitConfig(epochs=1, batch_size=64, generator=SMALL), progress=False
        )

    check_leaves_model_unchanged(target, run, data[1].tensors[0][:4])


def test_finder_contract(trained, target, gated, data) -> None:
    generator, _ = trained
    finder = GenCNPFinder(gated, generator)
    inputs = data[1].tensors[0][:6]

    def run(x, t):
        return finder.find(x, t)

    check_leaves_model_unchanged(target, run, inputs)
    check_cleans_up_after_raise(target, target.features[3], run, inputs)
    check_batch_equals_loop(run, inputs)
    check_batch_equals_loop(run, inputs, torch.tensor([0, 1, 2, 0, 1, 2]))
    with pytest.raises(InputError):
        finder.find(inputs, 7)
    assert 1.0 < finder.forward_equivalents() < 50.0


def test_global_sparsity_variant(trained, gated, data) -> None:
    generator, _ = trained
    finder = GenCNPFinder(gated, generator, sparsity=0.5)
    kept = finder.find(data[1].tensors[0][:8]).kept_fraction()
    assert torch.allclose(kept, torch.full_like(kept, 0.5), atol=0.1)
    assert kept.std() < 1e-6  # one sparsity for every instance


def test_checkpoint_roundtrip_and_factory(trained, gated, data) -> None:
    generator, out = trained
    assert {p.name for p in out.iterdir()} >= {
        "generator.safetensors",
        "train_state.safetensors",
        "meta.json",
    }
    meta = json.loads((out / "meta.json").read_text())
    assert meta["epochs_done"] == 4 and meta["target"]["sites"][0]["name"] == gated.site_names[0]
    loaded = load_generator(out, gated)
    finder = build_finder("gencnp", gated, FinderOptions(generator=str(out)))
    x = data[1].tensors[0][:8]
    expected = GenCNPFinder(gated, generator).find(x)
    for name in gated.site_names:
        assert torch.equal(finder.find(x)[name], expected[name])
    assert loaded.meta["fit_config"]["alpha"] == 2.0
    # gencnp-global: its config's defaults are the class's (sparsity 0.9, min_per_layer 1)
    from neuralpath.methods.gencnp import GenCNPGlobalConfig

    fixed = build_finder("gencnp-global", gated, GenCNPGlobalConfig(generator=str(out)))
    same = GenCNPFinder(gated, generator, GenCNPGlobalConfig.sparsity).find(x)
    assert fixed.sparsity == 0.9 and all(torch.equal(fixed.find(x)[n], same[n]) for n in same)
    assert all((m.sum(dim=1) >= 1).all() for m in same.values())  # no layer emptied


def test_checkpoint_for_another_target_is_refused(trained) -> None:
    _, out = trained
    wider = GatedModel.discover(FunctionalCNN().eval(), torch.zeros(1, 1, 8, 8))
    with pytest.raises(CheckpointError, match="gated layers"):
        load_generator(out, wider)
    other_widths = tiny_cnn(seed=0)
    other_widths.features[2] = nn.Conv2d(4, 7, 3, padding=1)
    other_widths.features[3] = nn.BatchNorm2d(7)
    other_widths.classifier[1] = nn.Linear(28, 5)
    gm = GatedModel.discover(other_widths.eval(), torch.zeros(1, 3, 8, 8))
    with pytest.raises(CheckpointError, match=r"features\.4.*units 6 vs 7"):
        load_generator(out, gm)
    retrained = GatedModel.discover(tiny_cnn(seed=5), torch.zeros(1, 3, 8, 8))
    with pytest.raises(CheckpointError, match="different weights.*verify_weights=False"):
        build_finder("gencnp", retrained, FinderOptions(generator=str(out)))
    # a deliberately changed copy (sanity checks): only the layers are checked
    relaxed = FinderOptions(generator=str(out), verify_weights=False)
    assert build_finder("gencnp", retrained, relaxed).find(torch.randn(2, 3, 8, 8)).batch_size == 2
    with pytest.raises(CheckpointError, match=r"features\.4.*units 6 vs 7"):
        build_finder("gencnp", gm, relaxed)


def test_saliency_evaluation_with_generator(trained, target, data, monkeypatch) -> None:
    """evaluate-attribution's default metrics (sanity included) on GEN-CNP pathway maps; the
    generator's weights are hashed once, not per batch or per randomised copy."""
    from neuralpath.attribution import quantus_explain_func
    from neuralpath.data import ImageDataset
    from neuralpath.evaluation import EvaluationConfig, evaluate_attribution
    from neuralpath.methods.gencnp import checkpoint

    hashed = []
    fingerprint = checkpoint.weights_fingerprint
    monkeypatch.setattr(
        checkpoint, "weights_fingerprint", lambda model: hashed.append(1) or fingerprint(model)
    )

    _, out = trained
    images, labels = data[1].tensors
    test_set = ImageDataset(
        images[:6], labels[:6], "colours", "test", ["r", "g", "b"], (0.0,) * 3, (1.0,) * 3
    )
    config = EvaluationConfig(
        percentages=(20.0, 60.0), steps=4, batch_size=3, granularity="channel", sparsity=0.1,
        progress=False, generator=str(out),
    )  # fmt: skip
    specs = ["pathway-gradient:gencnp", "pathway-gradient:gencnp-global"]
    payload = evaluate_attribution(target, test_set, specs, config)
    assert len(hashed) == len(specs)  # once per method, up front; then 2 batches, 4 copies each
    results = payload["results"]
    assert results[specs[0]]["finder_sparsity"] is None
    assert results[specs[1]]["finder_sparsity"] == 0.1  # at 0.3 this toy's maps are zero
    assert results[specs[0]]["zero_maps"] == results[specs[1]]["zero_maps"] == 0
    for spec in specs:
        assert len(results[spec]["sanity"]["similarity"]["ssim"]) == 4  # every layer randomised
        assert results[spec]["lerf"]["curve"][0] >= 0.0
    retrained = tiny_cnn(seed=5)
    with pytest.raises(CheckpointError, match="different weights"):
        evaluate_attribution(retrained, test_set, specs[:1], config)  # checked before any work

    maps = quantus_explain_func(
        target, images[:3].numpy(), labels[:3].numpy(), finder="gencnp", granularity="channel",
        generator=str(out),
    )  # fmt: skip
    assert maps.shape == (3, 3, 8, 8)
    with pytest.raises(CheckpointError, match="different weights"):
        quantus_explain_func(
            retrained, images[:3], None, finder="gencnp", granularity="channel", generator=str(out)
        )
    relaxed = quantus_explain_func(
        retrained, images[:3], None, finder="gencnp", granularity="channel", generator=str(out),
        verify_weights=False,
    )  # fmt: skip
    assert relaxed.shape == (3, 3, 8, 8)


def test_factory_needs_generator(gated, trained) -> None:
    with pytest.raises(InputError, match="--generator"):
        build_finder("gencnp", gated, FinderOptions())
    with pytest.raises(InputError, match="channel"):
        build_finder(
            "gencnp", gated, FinderOptions(granularity="element", generator=str(trained[1]))
        )
    with pytest.raises(CheckpointError, match="not found"):
        build_finder("gencnp", gated, FinderOptions(generator="/nonexistent/generator"))


def test_fit_leaves_the_callers_rng_alone(gated, data) -> None:
    """Fitting seeds its own stream (config.seed): the caller's global RNG is where it was, and
    the same seed gives the same generator whatever the caller drew before."""
    config = FitConfig(epochs=1, batch_size=16, generator=SMALL, seed=3)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = fit_gencnp(gated, data[1], config, progress=False)
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(7)  # the caller moves on; the fit does not care
    second = fit_gencnp(gated, data[1], config, progress=False)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name


def test_bad_fit_arguments(gated, data, tmp_path) -> None:
    with pytest.raises(InputError, match="alpha"):
        FitConfig(alpha=-0.1)
    with pytest.raises(InputError, match="fewer than one batch"):
        fit_gencnp(gated, data[1], FitConfig(batch_size=128, generator=SMALL), progress=False)
    fit_gencnp(
        gated,
        data[1],
        FitConfig(epochs=1, batch_size=16, generator=SMALL),
        out_dir=tmp_path,
        progress=False,
    )
    with pytest.raises(CheckpointError, match="resume"):
        fit_gencnp(
            gated,
            data[1],
            FitConfig(epochs=1, batch_size=16, generator=SMALL),
            out_dir=tmp_path,
            progress=False,
        )
    with pytest.raises(CheckpointError, match="lr"):
        fit_gencnp(
            gated,
            data[1],
            FitConfig(epochs=2, batch_size=16, lr=0.5, generator=SMALL),
            out_dir=tmp_path,
            resume=True,
            progress=False,
        )


def test_resume_equals_uninterrupted(gated, data, tmp_path) -> None:
    train = data[0]
    full = FitConfig(epochs=3, batch_size=32, lr=3e-3, alpha=2.0, generator=SMALL)
    straight = fit_gencnp(gated, train, full, out_dir=tmp_path / "a", progress=False)
    fit_gencnp(gated, train, full, out_dir=tmp_path / "b", progress=False, stop_after=1)
    assert json.loads((tmp_path / "b" / "meta.json").read_text())["epochs_done"] == 1
    torch.manual_seed(1234)  # a different global RNG state must not matter
    resumed = fit_gencnp(gated, train, full, out_dir=tmp_path / "b", resume=True, progress=False)
    for (name, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert [h["train_loss"] for h in straight.fit_history] == [
        h["train_loss"] for h in resumed.fit_history
    ]
    # the cosine schedule has a fixed horizon: more epochs on resume is refused ...
    longer = FitConfig(epochs=4, batch_size=32, lr=3e-3, alpha=2.0, generator=SMALL)
    with pytest.raises(CheckpointError, match="epochs"):
        fit_gencnp(gated, train, longer, out_dir=tmp_path / "b", resume=True, progress=False)
    # ... a constant schedule can be extended
    const = FitConfig(epochs=1, batch_size=32, alpha=2.0, schedule="constant", generator=SMALL)
    fit_gencnp(gated, train, const, out_dir=tmp_path / "c", progress=False)
    extended = FitConfig(epochs=2, batch_size=32, alpha=2.0, schedule="constant", generator=SMALL)
    again = fit_gencnp(gated, train, extended, out_dir=tmp_path / "c", resume=True, progress=False)
    assert [h["epoch"] for h in again.fit_history] == [1, 2]


def test_class_pathways_and_transfer(trained, gated, data, tmp_path) -> None:
    generator, _ = trained
    finder = GenCNPFinder(gated, generator)
    train, test = data
    classes = build_class_pathways(finder, train, 3, j=5, theta=0.5, progress=False)
    assert classes.counts.tolist() == [5, 5, 5]
    classes.save(tmp_path / "c.safetensors")
    again = ClassPathways.load(tmp_path / "c.safetensors")
    for name in gated.site_names:
        assert torch.equal(again.pathway[name], classes.pathway[name])
    result = evaluate_transfer(finder, classes, test, limit=32, progress=False)
    for key in ("agreement", "accuracy", "mic", "mdc", "aciou", "kept_fraction_mean"):
        assert key in result.instance and key in result.transfer
    assert result.transfer["n"] == result.instance["n"] == 32
    assert 0.0 <= result.instance_class_jaccard <= 100.0
    # a transferred pathway is its class's pathway: identical within a class
    assert result.transfer["aciou"] == pytest.approx(100.0)


def test_class_without_instances_is_an_error(trained, gated, data) -> None:
    generator, _ = trained
    finder = GenCNPFinder(gated, generator)
    with pytest.raises(DataError, match="no correctly predicted instances of class"):
        build_class_pathways(finder, data[0], 5, j=3, max_samples=40, progress=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The colour patches as a 16×16 PNG image folder (class subfolders; every 5th is test)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("colours")
    images, labels = colour_images(150, seed=2, size=16)
    pixels = (images * 0.25 + 0.3).clamp(0, 1).mul(255).byte().permute(0, 2, 3, 1).numpy()
    for i, (array, label) in enumerate(zip(pixels, labels.tolist(), strict=True)):
        (root / f"c{label}").mkdir(exist_ok=True)
        Image.fromarray(array).save(root / f"c{label}" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def target_dir(folder, tmp_path_factory) -> Path:
    """A small VGG-11 checkpoint trained on the colour-patch folder."""
    out = tmp_path_factory.mktemp("target")
    result = train_target(
        "vgg11",
        str(folder),
        epochs=4,
        width=0.0625,
        batch_size=16,
        lr=5e-3,
        image_size=16,
        out_dir=out,
        progress=False,
        device="cpu",
    )
    assert result.test_accuracy > 0.8
    return out


def test_cli_fit_and_class_pathways(target_dir, folder, tmp_path, capsys) -> None:
    gdir = tmp_path / "gen"
    common = ["--checkpoint", str(target_dir), "--data", str(folder), "--device", "cpu"]
    assert (
        main(
            [
                "fit-gencnp",
                *common,
                "--epochs",
                "2",
                "--stop-after",
                "1",
                "--batch-size",
                "16",
                "--width",
                "16",
                "--out",
                str(gdir),
                "--no-progress",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs_done"] == 1 and len(summary["history"]) == 1
    assert (
        main(
            [
                "fit-gencnp",
                *common,
                "--epochs",
                "2",
                "--batch-size",
                "16",
                "--width",
                "16",
                "--out",
                str(gdir),
                "--no-progress",
                "--resume",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["epochs_done"] == 2
    out = tmp_path / "cls"
    code = main(
        [
            "class-pathways",
            *common,
            "--method",
            "gencnp",
            "--generator",
            str(gdir),
            "--build-split",
            "train",
            "--j",
            "2",
            "--theta",
            "0.5",
            "--eval-split",
            "test",
            "--limit",
            "20",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads((out / "results.json").read_text()) == printed
    assert printed["instance"]["n"] == printed["transfer"]["n"] == 20
    assert ClassPathways.load(out / "class_pathways.safetensors").counts.tolist() == [2, 2, 2]

    maps = tmp_path / "maps"
    code = main([
        "attribute", *common, "--method", "pathway-gradient", "--finder", "gencnp",
        "--generator", str(gdir), "--granularity", "channel", "--limit", "4", "--batch-size", "2",
        "--no-png", "--no-progress", "--out", str(maps),
    ])  # fmt: skip
    assert code == 0
    meta = json.loads(capsys.readouterr().out)
    assert (meta["finder"], meta["generator"], meta["sparsity"], meta["n"]) == (
        "gencnp", str(gdir), None, 4
    )  # fmt: skip


def test_cli_fit_under_mean_ablation(target_dir, folder, tmp_path, capsys) -> None:
    gdir = tmp_path / "gen"
    code = main([
        "fit-gencnp", "--checkpoint", str(target_dir), "--data", str(folder), "--device", "cpu",
        "--ablation", "mean", "--reference-size", "40", "--recompute-reference",
        "--distillation", "ce", "--swap-weight", "0.5", "--blank-weight", "0.25",
        "--epochs", "1", "--batch-size", "16", "--width", "16", "--out", str(gdir), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["ablation"], summary["distillation"]) == ("mean", "ce")
    assert (summary["swap_weight"], summary["blank_weight"]) == (0.5, 0.25)
    assert summary["epochs_done"] == 1 and "val_swap_follows_mask" in summary["history"][0]
    meta = json.loads((gdir / "meta.json").read_text())
    assert meta["ablation"]["ablation"] == "mean" and meta["ablation"]["reference"]["count"] == 40
    assert meta["blank_baseline"] == "given"  # the reference's mean image
    assert load_generator(gdir).ablation == "mean"


def test_cli_errors(target_dir, folder, tmp_path, capsys) -> None:
    common = ["--checkpoint", str(target_dir), "--data", str(folder), "--device", "cpu"]
    assert main(["fit-gencnp", *common, "--alpha", "-1", "--out", str(tmp_path / "g")]) == 2
    assert "--alpha must be >= 0" in capsys.readouterr().err
    for flag in ("--swap-weight", "--blank-weight"):
        assert main(["fit-gencnp", *common, flag, "-0.5", "--out", str(tmp_path / "g")]) == 2
        assert f"{flag} must be >= 0" in capsys.readouterr().err
    assert main(["fit-gencnp", *common, "--ablation", "bogus", "--out", str(tmp_path / "g")]) == 2
    assert "unknown ablation 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
    assert (
        main(["class-pathways", *common, "--method", "gencnp", "--out", str(tmp_path / "c")]) == 2
    )
    assert "--generator" in capsys.readouterr().err
    gdir = tmp_path / "gen"
    assert (
        main(
            [
                "fit-gencnp",
                *common,
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--width",
                "16",
                "--out",
                str(gdir),
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "class-pathways",
                *common,
                "--generator",
                str(gdir),
                "--build-limit",
                "2",
                "--out",
                str(tmp_path / "c"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "no correctly predicted instances of class(es)" in capsys.readouterr().err


def test_corrupt_generator_checkpoint(trained, gated, tmp_path) -> None:
    import shutil

    _, out = trained
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    data = (broken / "generator.safetensors").read_bytes()
    (broken / "generator.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_generator(broken, gated)
    (broken / "meta.json").write_text('{"format": "something-else"}')
    with pytest.raises(CheckpointError, match="not a GEN-CNP generator"):
        load_generator(broken, gated)


def test_connect_is_opt_in_and_widens_only_disconnected_pathways(gated, trained, data) -> None:
    """GEN-CNP stays one pass by default; ``connect=True`` widens, by the generator's scores, only
    the pathways that disconnect (here forced: the global variant at 0.99 with no floor)."""
    from neuralpath.metrics.connectivity import input_dependence
    from neuralpath.pathway import CONNECT_FLOOR, repaired_samples

    images = data[1].tensors[0][:8]
    with torch.no_grad():
        classes = gated.forward(images).argmax(1)
    generator = str(trained[1])
    plain = build_finder("gencnp", gated, FinderOptions(generator=generator))
    same = build_finder(
        "gencnp", gated, FinderOptions(generator=generator, settings={"connect": True})
    )
    assert CONNECT_FLOOR not in plain.find(images).metadata
    base, widened = plain.find(images), same.find(images)
    connected = input_dependence(gated, images, base, classes, probe_scales=())  # at the sample
    assert torch.equal(repaired_samples(widened), ~connected)
    for name in base:
        assert torch.equal(widened[name][connected], base[name][connected])
    cut = {"generator": generator, "sparsity": 0.99}
    off = build_finder("gencnp-global", gated, FinderOptions(**cut, settings={"min_per_layer": 0}))
    on = build_finder(
        "gencnp-global", gated,
        FinderOptions(**cut, settings={"min_per_layer": 0, "connect": True}),
    )  # fmt: skip
    assert not input_dependence(gated, images, off.find(images), classes).all()
    assert input_dependence(gated, images, on.find(images), classes).all()
    assert on.forward_equivalents() == pytest.approx(off.forward_equivalents() + 3)
