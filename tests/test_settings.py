"""Method-specific settings: ``FinderOptions.settings`` and ``neuralpath find --set KEY=VALUE``
(the typed configs themselves: ``test_method_configs.py``)."""

from __future__ import annotations

import pytest
import torch

from neuralpath.cli import main, parse_settings
from neuralpath.errors import InputError
from neuralpath.gating import GatedModel
from neuralpath.methods import FinderOptions, build_finder
from neuralpath.pathway import Pathway
from neuralpath.train import train_target

from toys import tiny_cnn


@pytest.fixture(scope="module")
def gated() -> GatedModel:
    return GatedModel.discover(tiny_cnn(), torch.zeros(1, 3, 8, 8))


def test_settings_reach_each_method(gated) -> None:
    dgr = build_finder("dgr", gated, FinderOptions(settings={"gamma": 0.01, "iterations": 5}))
    assert (dgr.config.gamma, dgr.config.iterations, dgr.config.binarize) == (0.01, 5, "percentile")
    positive = build_finder("dgr", gated, FinderOptions(settings={"binarize": "positive"}))
    assert positive.config.binarize == "positive"
    dgr_r = build_finder("dgr-r", gated, FinderOptions(seed=3, settings={"init_draw": "shared"}))
    assert (dgr_r.config.init, dgr_r.config.init_draw, dgr_r.config.seed) == (
        "uniform",
        "shared",
        3,
    )
    intgrad = build_finder(
        "cp-intgrad", gated, FinderOptions(settings={"steps": 4, "alpha_schedule": "cumulative"})
    )
    assert intgrad.alphas == [0.0, 0.25, 0.75, 1.5, 2.5]
    greedy = build_finder("greedy", gated, FinderOptions(settings={"steps": 3}))
    assert greedy.config.steps == 3  # type: ignore[attr-defined]
    mct = build_finder("cp-mct", gated, FinderOptions(settings={"selection": "per_layer"}))
    assert mct.config.selection == "per_layer"  # type: ignore[attr-defined]
    assert build_finder("random", gated, FinderOptions()).sparsity == 0.9


def test_finder_sparsity_is_what_it_drops_by_construction(gated) -> None:
    from neuralpath.methods.gencnp import GenCNPFinder
    from neuralpath.methods.gencnp.generator import PathwayGenerator

    options = FinderOptions(sparsity=0.7)
    for method in ("cp-mct", "cp-intgrad", "greedy", "random", "dgr", "dgr-r"):
        assert build_finder(method, gated, options).sparsity == 0.7, method
    positive = FinderOptions(sparsity=0.7, settings={"binarize": "positive"})
    assert build_finder("dgr", gated, positive).sparsity is None  # gates > 0: per sample
    assert build_finder("active", gated, options).sparsity is None
    generator = PathwayGenerator(gated.sites)
    assert GenCNPFinder(gated, generator).sparsity is None  # DAQ masks: per sample
    assert GenCNPFinder(gated, generator, 0.7).sparsity == 0.7  # gencnp-global


@pytest.mark.parametrize(
    ("method", "settings", "message"),
    [
        ("dgr", {"temperature": 2}, "dgr has no setting temperature; settable: gamma"),
        ("dgr", {"init": "uniform"}, "no setting init"),  # that is what dgr-r is for
        ("dgr", {"sparsity": 0.5}, "no setting sparsity"),  # --sparsity does that
        ("random", {"steps": 2}, "settable: none"),
        ("greedy", {"steps": "many"}, "greedy: steps must be an integer, got 'many'"),
        ("greedy", {"steps": 0}, "steps must be a positive integer"),
        ("greedy", {"steps": True}, "steps must be an integer"),
        ("dgr", {"gamma": "big"}, "gamma must be a number"),
        ("dgr", {"binarize": "median"}, "binarize must be one of 'positive', 'percentile'"),
        ("cp-intgrad", {"internal_batch_size": "x"}, "internal_batch_size must be"),
        ("cp-mct", {"chunk_size": 0.5}, "chunk_size must be"),
        ("dgr", {"iterations": 0}, "iterations must be a positive integer"),
    ],
)
def test_bad_settings_are_clear_errors(gated, method, settings, message) -> None:
    with pytest.raises(InputError, match=message):
        build_finder(method, gated, FinderOptions(settings=settings))


def test_parse_settings() -> None:
    parsed = parse_settings(["gamma=0.01", "iterations=100", "binarize=positive", "flag=true"])
    assert parsed == {"gamma": 0.01, "iterations": 100, "binarize": "positive", "flag": True}
    assert parse_settings(["text=a=b"]) == {"text": "a=b"}
    assert parse_settings([]) == {}
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_settings(["gamma"])
    with pytest.raises(InputError, match="twice"):
        parse_settings(["gamma=1", "gamma=2"])


def test_find_cli_applies_and_records_settings(tmp_path, capsys) -> None:
    train_target(
        "vgg11", "synthetic", epochs=1, width=0.125, limit=32, out_dir=tmp_path / "ckpt",
        progress=False, device="cpu",
    )  # fmt: skip
    out = tmp_path / "pathways.safetensors"
    code = main([
        "find", "--checkpoint", str(tmp_path / "ckpt"), "--method", "dgr", "--data", "synthetic",
        "--limit", "6", "--set", "iterations=2", "--set", "gamma=0.5", "--set", "binarize=positive",
        "--reference-size", "32", "--no-progress", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    pathway = Pathway.load(out)
    assert pathway.metadata["settings"] == {"iterations": 2, "gamma": 0.5, "binarize": "positive"}
    assert pathway.metadata["gamma"] == 0.5 and pathway.metadata["iterations"] == 2
    assert pathway.metadata["binarize"] == "positive"
    assert pathway.metadata["sparsity"] is None  # gates > 0 drop a per-sample fraction
    capsys.readouterr()


def test_attribution_methods_take_finder_settings(gated) -> None:
    from neuralpath.attribution import PathwayGradient, make_attribution_method, zero_maps

    inputs = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    method = make_attribution_method(
        "pathway-gradient", finder="dgr", granularity="channel", sparsity=0.5,
        settings={"iterations": 3, "gamma": 0.5},
    )  # fmt: skip
    finder = build_finder(
        "dgr", gated, FinderOptions(0.5, "channel", settings={"iterations": 3, "gamma": 0.5})
    )
    expected = PathwayGradient(gated, finder).attribute(inputs)
    assert not zero_maps(expected).any()
    torch.testing.assert_close(method(gated, inputs), expected)
    other = make_attribution_method(
        "pathway-gradient", finder="dgr", granularity="channel", sparsity=0.5,
        settings={"iterations": 3, "gamma": 0.01},
    )  # fmt: skip
    assert not torch.allclose(other(gated, inputs), expected)  # the settings did change something
    with pytest.raises(InputError, match="no setting temperature"):
        make_attribution_method("pathway-gradient", finder="dgr", settings={"temperature": 2})(
            gated, inputs
        )
    with pytest.raises(InputError, match="no pathway finder"):
        make_attribution_method("gradient", settings={"gamma": 0.1})


def test_evaluation_passes_settings_to_its_finder_only(gated) -> None:
    from neuralpath.attribution import make_explainer, pathway_options
    from neuralpath.data import ImageDataset
    from neuralpath.evaluation import EvaluationConfig, evaluate_attribution
    from neuralpath.metrics.perturbation import LeRF

    generator = torch.Generator().manual_seed(0)
    data = ImageDataset(
        torch.randn(4, 3, 8, 8, generator=generator), torch.tensor([0, 1, 2, 0]), "toy", "test",
        ["a", "b", "c"], (0.0,) * 3, (1.0,) * 3,
    )  # fmt: skip
    model = tiny_cnn()

    def lerf(settings: dict) -> list[float]:
        config = EvaluationConfig(
            metrics=("lerf",), percentages=(20.0, 60.0), batch_size=4, granularity="channel",
            sparsity=0.5, progress=False, finder_settings=settings,
        )  # fmt: skip
        payload = evaluate_attribution(model, data, ["pathway-gradient:dgr", "gradient"], config)
        assert payload["config"]["finder_settings"] == settings
        results = payload["results"]
        assert results["pathway-gradient:dgr"]["finder_sparsity"] == 0.5
        assert results["pathway-gradient:dgr"]["zero_maps"] == 0
        assert "finder_sparsity" not in results["gradient"]
        return payload["results"]["pathway-gradient:dgr"]["lerf"]["curve"]

    settings = {"iterations": 3, "gamma": 0.5}  # 2 iterations: a layer emptied, all maps zero
    plain = GatedModel.discover(model, data.images[:1])
    options = pathway_options(granularity="channel", sparsity=0.5, settings=settings)
    explain = make_explainer("pathway-gradient", plain, build_finder("dgr", plain, options))
    direct = LeRF((20.0, 60.0), batch_size=4)(model, data.images, None, explain)
    assert lerf({"dgr": settings}) == pytest.approx(direct.summary()["curve"], abs=1e-6)
    with pytest.raises(InputError, match="no method uses: greedy"):
        lerf({"greedy": {"steps": 2}})
    with pytest.raises(InputError, match="no setting lr_decay"):
        lerf({"dgr": {"lr_decay": 0.5}})


def test_attribute_and_evaluate_cli_take_settings(tmp_path, capsys) -> None:
    import json

    from neuralpath.io import read_json

    train_target(
        "vgg11", "synthetic", epochs=1, width=0.125, limit=32, out_dir=tmp_path / "ckpt",
        progress=False, device="cpu",
    )  # fmt: skip
    common = [
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--data",
        "synthetic",
        "--limit",
        "3",
        "--no-progress",
    ]
    code = main([
        "attribute", *common, "--method", "pathway-gradient", "--finder", "greedy", "--set", "steps=2",
        "--no-png", "--out", str(tmp_path / "maps"),
    ])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["finder_settings"] == {"steps": 2}
    meta = read_json(tmp_path / "maps" / "meta.json")
    assert (meta["finder_settings"], meta["sparsity"]) == ({"steps": 2}, 0.9)
    code = main([
        "attribute", *common, "--method", "pathway-gradient", "--finder", "active", "--no-png",
        "--out", str(tmp_path / "active"),
    ])  # fmt: skip
    assert code == 0 and read_json(tmp_path / "active" / "meta.json")["sparsity"] is None
    capsys.readouterr()

    bad = main([
        "attribute", *common, "--method", "pathway-gradient", "--finder", "greedy", "--set", "bogus=1",
        "--no-png", "--out", str(tmp_path / "bad"),
    ])  # fmt: skip
    assert bad == 2 and "greedy has no setting bogus" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()

    code = main([
        "evaluate-attribution", *common, "--methods", "pathway-gradient:greedy", "--metrics", "lerf",
        "--granularity", "channel", "--sparsity", "0.5", "--set", "greedy.steps=2",
        "--out", str(tmp_path / "eval"),
    ])  # fmt: skip
    assert code == 0
    payload = read_json(tmp_path / "eval" / "results.json")
    assert payload["config"]["finder_settings"] == {"greedy": {"steps": 2}}
    assert payload["results"]["pathway-gradient:greedy"]["zero_maps"] == 0  # 0.9 empties a layer
    capsys.readouterr()
    bad = main([
        "evaluate-attribution", *common, "--methods", "gradient", "--metrics", "lerf",
        "--set", "steps=2", "--out", str(tmp_path / "eval2"),
    ])  # fmt: skip
    assert bad == 2 and "METHOD.KEY=VALUE" in capsys.readouterr().err
