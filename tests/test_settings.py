"""Method-specific settings: ``FinderOptions.settings`` and ``neuralpath find --set KEY=VALUE``."""

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
    assert (dgr_r.config.init, dgr_r.config.init_draw, dgr_r.config.seed) == ("uniform", "shared", 3)
    intgrad = build_finder(
        "cp-intgrad", gated, FinderOptions(settings={"steps": 4, "alpha_schedule": "cumulative"})
    )
    assert intgrad.alphas == [0.0, 0.25, 0.75, 1.5, 2.5]
    assert build_finder("greedy", gated, FinderOptions(settings={"steps": 3})).steps == 3
    assert build_finder("cp-mct", gated, FinderOptions(settings={"selection": "per_layer"})).selection == "per_layer"
    assert build_finder("random", gated, FinderOptions()).sparsity == 0.9


@pytest.mark.parametrize(
    ("method", "settings", "message"),
    [
        ("dgr", {"temperature": 2}, "dgr has no setting temperature; settable: gamma"),
        ("dgr", {"init": "uniform"}, "no setting init"),  # that is what dgr-r is for
        ("dgr", {"sparsity": 0.5}, "no setting sparsity"),  # --sparsity does that
        ("random", {"steps": 2}, "settable: none"),
        ("greedy", {"steps": "many"}, "steps must be a positive integer"),
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
        "--no-progress", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    pathway = Pathway.load(out)
    assert pathway.metadata["settings"] == {"iterations": 2, "gamma": 0.5, "binarize": "positive"}
    assert pathway.metadata["gamma"] == 0.5 and pathway.metadata["iterations"] == 2
    assert pathway.metadata["binarize"] == "positive"
    capsys.readouterr()
