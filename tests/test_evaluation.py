"""``evaluate_attribution``: the library orchestration behind ``neuralpath evaluate-attribution``."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from neuralpath.attribution import make_explainer
from neuralpath.data import ImageDataset
from neuralpath.errors import DataError, InputError, ZeroMapsWarning
from neuralpath.evaluation import EvaluationConfig, evaluate_attribution, markdown_table
from neuralpath.gating import GatedModel
from neuralpath.interventions import MeanAblation
from neuralpath.metrics.perturbation import Deletion, LeRF
from neuralpath.reference import reference_statistics

from toys import tiny_cnn


@pytest.fixture(scope="module")
def dataset() -> ImageDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 3, (6,), generator=generator)
    return ImageDataset(images, labels, "toy", "test", ["a", "b", "c"], (0.0,) * 3, (1.0,) * 3)


def test_payload_equals_the_metrics_called_directly(dataset) -> None:
    model = tiny_cnn()
    config = EvaluationConfig(
        metrics=("lerf", "deletion", "sanity"), percentages=(10.0, 50.0), steps=4,
        batch_size=4, sanity_limit=2, progress=False,
    )  # fmt: skip
    methods = ["gradient", "pathway-gradient:cp-mct"]
    payload = evaluate_attribution(model, dataset, methods, config)

    assert payload["methods"] == methods and payload["samples"] == 6
    gradient = make_explainer("gradient", GatedModel.discover(model, dataset.images[:1]))
    lerf = LeRF((10.0, 50.0), batch_size=4)(model, dataset.images, None, gradient).summary()
    deletion = Deletion(4, batch_size=4)(model, dataset.images, None, gradient).summary()
    row = payload["results"]["gradient"]
    assert row["lerf"]["fractions"] == lerf["fractions"]
    assert row["lerf"]["curve"] == pytest.approx(lerf["curve"], abs=1e-6)
    assert row["deletion"]["area"] == pytest.approx(deletion["area"], abs=1e-6)
    assert len(row["sanity"]["similarity"]["ssim"]) == len(row["sanity"]["layers"])
    assert payload["results"]["pathway-gradient:cp-mct"]["lerf"]["samples"] == 6
    assert row["zero_maps"] == 0

    # channels at 99 % with the paper's rule (no unit kept per layer, no connecting repair): the
    # global threshold empties whole layers, so every map is zero
    cut = replace(
        config, metrics=("lerf",), sparsity=0.99, granularity="channel",
        finder_settings={"cp-mct": {"min_per_layer": 0, "connect": False}},
    )  # fmt: skip
    with pytest.warns(ZeroMapsWarning) as caught:  # one warning for the run, not one per batch
        zero = evaluate_attribution(model, dataset, ["pathway-gradient:cp-mct"], cut)
    assert zero["results"]["pathway-gradient:cp-mct"]["zero_maps"] == 6
    assert [str(w.message) for w in caught] == [
        "all-zero maps, whose pixel rankings are ties only: pathway-gradient:cp-mct (6 of 6)"
    ]

    table = markdown_table(payload).splitlines()
    assert table[0].startswith("| method | LERF 10% ↓") and "deletion AUC ↓" in table[0]
    assert [line.split(" | ")[0] for line in table[2:]] == [f"| {m}" for m in methods]


def test_bad_requests_are_clear_errors(dataset) -> None:
    model = tiny_cnn()
    with pytest.raises(InputError, match="vibes"):
        evaluate_attribution(model, dataset, ["gradient"], EvaluationConfig(metrics=("vibes",)))
    with pytest.raises(InputError, match="at least one"):
        evaluate_attribution(model, dataset, [], EvaluationConfig(metrics=("lerf",)))
    with pytest.raises(InputError, match="lime"):
        evaluate_attribution(model, dataset, ["lime"], EvaluationConfig(metrics=("lerf",)))
    with pytest.raises(DataError, match="masks"):
        evaluate_attribution(
            model, dataset, ["gradient"], EvaluationConfig(metrics=("localisation",))
        )
    with pytest.raises(InputError, match="ROAR"):
        evaluate_attribution(model, dataset, ["gradient"], EvaluationConfig(metrics=("roar",)))


def test_methods_are_built_once_per_run(dataset, monkeypatch) -> None:
    """One finder per method spec and one gate discovery for the whole run: not per batch, not
    per sanity step (the randomised copies reuse the sites and a rebound finder)."""
    import neuralpath.methods as methods

    built, discovered = [], []
    real_build, real_discover = methods.build_finder, GatedModel.discover.__func__
    monkeypatch.setattr(methods, "build_finder", lambda *a: built.append(a[0]) or real_build(*a))
    monkeypatch.setattr(
        GatedModel,
        "discover",
        classmethod(lambda cls, *a, **k: discovered.append(1) or real_discover(cls, *a, **k)),
    )
    config = EvaluationConfig(
        metrics=("lerf", "sanity"), percentages=(50.0,), batch_size=2, sanity_limit=4,
        progress=False,
    )  # fmt: skip
    specs = ["pathway-gradient:cp-mct", "pathway-grad-cam:random", "gradient"]
    payload = evaluate_attribution(tiny_cnn(), dataset, specs, config)
    assert built == ["cp-mct", "random"] and discovered == [1]
    assert all(len(payload["results"][s]["sanity"]["layers"]) == 4 for s in specs)


def test_mean_ablation_reaches_the_pathway_model_and_the_sanity_check(dataset) -> None:
    model = tiny_cnn()
    gated = GatedModel.discover(model, dataset.images[:1])
    images = torch.randn(10, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    under = gated.with_intervention(
        MeanAblation(reference_statistics(gated, images, progress=False))
    )
    config = EvaluationConfig(
        metrics=("lerf", "sanity"), percentages=(30.0, 60.0), batch_size=4, sanity_limit=2,
        progress=False,
    )  # fmt: skip
    specs = ["pathway-gradient:cp-mct", "gradient"]
    mean = evaluate_attribution(under, dataset, specs, config, reference_images=images)
    zero = evaluate_attribution(model, dataset, specs, config)
    assert (mean["ablation"], zero["ablation"]) == ("mean", "zero")
    assert mean["config"]["intervention"]["reference"]["count"] == 10
    assert mean["config"]["sanity_intervention"] == (
        "per-unit means recomputed for each randomised model over the same 10 reference images"
    )
    pathway, plain = mean["results"][specs[0]], mean["results"]["gradient"]
    assert plain["lerf"] == zero["results"]["gradient"]["lerf"]  # Captum's: no pathway model
    assert pathway["lerf"]["curve"] != zero["results"][specs[0]]["lerf"]["curve"]
    assert len(pathway["sanity"]["similarity"]["ssim"]) == 4
    with pytest.raises(InputError, match="reference images"):
        evaluate_attribution(under, dataset, specs, config)  # before any work
    lerf_only = replace(config, metrics=("lerf",))  # no sanity check: no images needed
    assert evaluate_attribution(under, dataset, specs, lerf_only)["ablation"] == "mean"


def test_cli_records_the_ablation(tmp_path) -> None:
    import json

    from neuralpath.checkpoint import TargetMeta, save_target
    from neuralpath.cli import main
    from neuralpath.data import SYNTHETIC_CLASSES, SYNTHETIC_MEAN, SYNTHETIC_STD
    from neuralpath.models import build_model

    args = {"num_classes": 4, "in_channels": 3, "input_size": 16, "width": 0.125}
    meta = TargetMeta(
        "vgg11", args, "synthetic", (3, 16, 16), 4, list(SYNTHETIC_CLASSES), SYNTHETIC_MEAN,
        SYNTHETIC_STD,
    )  # fmt: skip
    save_target(tmp_path / "ckpt", build_model("vgg11", **args), meta)
    common = [
        "evaluate-attribution", "--checkpoint", str(tmp_path / "ckpt"), "--methods",
        "pathway-gradient,gradient", "--metrics", "lerf,sanity", "--limit", "4", "--percentages",
        "50", "--sanity-limit", "2", "--no-progress", "--device", "cpu", "--reference-size", "8",
    ]  # fmt: skip
    for ablation in ("mean", "resample"):
        out = tmp_path / ablation
        assert main([*common, "--ablation", ablation, "--out", str(out)]) == 0
        payload = json.loads((out / "results.json").read_text())
        assert payload["ablation"] == ablation
        assert payload["config"]["intervention"]["ablation"] == ablation
    assert (tmp_path / "ckpt" / "reference").is_dir()  # the stored statistics, reused
    assert main([*common, "--ablation", "median", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
