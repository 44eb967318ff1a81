"""Typed finder configs (issues 14, 15): one default per method in every entry point, settings
checked by name and type, generated help, ``min_per_layer``, and chunked = whole up to rounding."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest
import torch
from torch import Tensor

from neuralpath.cli import build_parser, finder_config, main
from neuralpath.errors import InputError
from neuralpath.gating import GatedModel
from neuralpath.methods import (
    FinderConfig,
    FinderOptions,
    build_finder,
    config_from_settings,
    find_in_chunks,
    finder_entry,
    finder_names,
    register_finder,
    settings_help,
)
from neuralpath.methods.base import field_types
from neuralpath.methods.baselines import ActivePathway, GreedyTaylor, RandomPathway
from neuralpath.methods.critical import CriticalConfig, NeuronIntGrad, NeuronMCT
from neuralpath.methods.dgr import DGR, DGRR, DGRConfig
from neuralpath.methods.gencnp import GenCNPFinder, GenCNPGlobalConfig, PathwayGenerator
from neuralpath.models import build_model
from neuralpath.pathway import Pathway, global_percentile, keep_per_layer

from toys import tiny_cnn

CLASSES = {
    "cp-mct": NeuronMCT,
    "cp-intgrad": NeuronIntGrad,
    "greedy": GreedyTaylor,
    "random": RandomPathway,
    "active": ActivePathway,
    "dgr": DGR,
    "dgr-r": DGRR,
}


@pytest.fixture(scope="module")
def gated() -> GatedModel:
    return GatedModel.discover(tiny_cnn(), torch.zeros(1, 3, 8, 8))


@pytest.fixture(scope="module")
def inputs() -> Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def _equal(a: Pathway, b: Pathway) -> bool:
    return a.granularity == b.granularity and all(torch.equal(a[n], b[n]) for n in a)


# ------------------------------------------------------------------ one default per method


def test_every_registered_method_is_covered() -> None:
    assert set(finder_names()) == {*CLASSES, "gencnp", "gencnp-global"}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_class_default_is_the_registry_and_cli_default(name, gated, inputs) -> None:
    """``NeuronMCT(g)``, ``build_finder("cp-mct", g)``, ``FinderOptions()`` and a ``neuralpath
    find`` without --sparsity/--granularity: one config, the same pathways."""
    by_class = CLASSES[name](gated)
    by_registry = build_finder(name, gated)
    by_options = build_finder(name, gated, FinderOptions())
    args = build_parser().parse_args(["find", "--checkpoint", "c", "--method", name, "--out", "o"])
    by_cli = finder_config(args)
    assert by_class.config == by_registry.config == by_options.config == by_cli  # type: ignore[attr-defined]
    assert type(by_class) is type(by_registry)
    assert _equal(by_class.find(inputs), by_registry.find(inputs))


def test_the_issue_example_gives_identical_pathways(gated, inputs) -> None:
    mct = NeuronMCT(gated, sparsity=0.9).find(inputs)
    assert mct.granularity == "element"
    assert _equal(mct, build_finder("cp-mct", gated, FinderOptions(sparsity=0.9)).find(inputs))


def test_documented_defaults() -> None:
    """Critical pathways and baselines: element at 0.9 (Khakzar et al.); DGR and GEN-CNP:
    channel (Wang et al., Lin et al.); every global threshold keeps one unit per layer."""
    defaults = {name: finder_entry(name).config() for name in finder_names()}
    for name in ("cp-mct", "cp-intgrad", "greedy", "random", "active"):
        assert defaults[name].granularity == "element", name  # type: ignore[attr-defined]
    for name in ("dgr", "dgr-r", "gencnp", "gencnp-global"):
        assert defaults[name].granularity == "channel", name  # type: ignore[attr-defined]
    for name, config in defaults.items():
        assert getattr(config, "sparsity", 0.9) == 0.9, name
        assert getattr(config, "min_per_layer", 1) == 1, name
    assert defaults["dgr"].binarize == "percentile"  # type: ignore[attr-defined]
    assert finder_entry("dgr-r").fixed == {"init": "uniform"}


def test_gencnp_class_defaults_are_its_configs() -> None:
    signature = inspect.signature(GenCNPFinder)
    assert signature.parameters["sparsity"].default is None  # gencnp: the generator's own masks
    assert signature.parameters["min_per_layer"].default == GenCNPGlobalConfig().min_per_layer


def test_other_entry_points_default_to_the_method() -> None:
    from neuralpath.cli.compare import _config
    from neuralpath.study import StudyConfig, _shared_default

    parser = build_parser()
    for argv in (
        ["class-pathways", "--checkpoint", "c", "--out", "o"],
        ["compare", "--checkpoint", "c", "--out", "o"],
    ):
        args = parser.parse_args(argv)
        assert (args.sparsity, args.granularity) == (None, None)
    args = parser.parse_args(["compare", "--checkpoint", "c", "--out", "o"])
    assert _config(args).granularity is None
    assert StudyConfig(methods=("cp-mct",)).granularity is None
    assert _shared_default(("gencnp", "cp-mct", "dgr", "active"), "sparsity") == 0.9
    assert _shared_default(("cp-mct", "greedy"), "granularity") == "element"
    assert _shared_default(("gencnp", "cp-mct"), "granularity") is None  # the study: channel


# ------------------------------------------------------------------ typed settings


def test_configs_are_frozen_typed_and_checked() -> None:
    config = DGRConfig(gamma=1)
    assert type(config.gamma) is float  # an int is taken for a float
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gamma = 2.0  # type: ignore[misc]
    for changes, message in [
        ({"gamma": "big"}, "gamma must be a number, got 'big'"),
        ({"iterations": 2.5}, "iterations must be an integer, got 2.5"),
        ({"iterations": True}, "iterations must be an integer"),
        ({"binarize": "median"}, "binarize must be one of 'positive', 'percentile'"),
        ({"gamma": float("nan")}, "gamma must be a number"),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            DGRConfig(**changes)
    with pytest.raises(InputError, match="chunk_size must be an integer or None"):
        CriticalConfig(chunk_size="4")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="min_per_layer must be >= 0"):
        CriticalConfig(min_per_layer=-1)


@dataclasses.dataclass(frozen=True)
class _ListConfig(FinderConfig):
    sizes: tuple[int, ...] = (1, 2)


def test_a_setting_type_the_command_line_cannot_give_is_refused_at_registration() -> None:
    with pytest.raises(TypeError, match="_ListConfig.sizes: a setting cannot have the type"):
        register_finder("list-finder", _ListConfig)
    assert "list-finder" not in finder_names()


def test_a_finder_takes_only_its_own_config(gated) -> None:
    with pytest.raises(InputError, match="config must be a CriticalConfig, got DGRConfig"):
        NeuronMCT(gated, DGRConfig())  # type: ignore[arg-type]
    with pytest.raises(InputError, match="cp-mct is configured by a CriticalConfig"):
        build_finder("cp-mct", gated, DGRConfig())  # type: ignore[arg-type]
    mct = build_finder("cp-mct", gated, CriticalConfig(sparsity=0.5, granularity="channel"))
    assert (mct.sparsity, mct.config.granularity) == (0.5, "channel")  # type: ignore[attr-defined]
    assert NeuronMCT(gated, mct.config, sparsity=0.7).config.sparsity == 0.7  # type: ignore[attr-defined]
    dgr = build_finder("dgr", gated, DGRConfig(init="uniform", iterations=2))
    assert dgr.config.init == "ones" and dgr.config.iterations == 2  # type: ignore[attr-defined]
    # a common option a method does not have is not an error (compare passes one to all)
    assert build_finder("active", gated, FinderOptions(sparsity=0.5)).sparsity is None


def test_unknown_key_names_the_settable_ones_with_types() -> None:
    with pytest.raises(InputError) as info:
        config_from_settings("cp-mct", {}, {"bogus": 1})
    assert str(info.value) == (
        "cp-mct has no setting bogus; settable: selection (global|per_layer|per_type), "
        "min_per_layer (int), chunk_size (int|null), head_sparsity (float|null), "
        "token_budget (int|null), connect (bool)"
    )
    with pytest.raises(InputError, match="dgr-r has no setting init"):  # fixed by the method
        config_from_settings("dgr-r", {}, {"init": "ones"})
    with pytest.raises(InputError, match="unknown method 'cp-nope'; available: active"):
        config_from_settings("cp-nope", {}, {})


def test_cli_set_errors_are_one_line_and_early(tmp_path, capsys) -> None:
    """Checked before the checkpoint is read: a missing checkpoint is not the error shown."""
    out = tmp_path / "p.safetensors"
    base = ["find", "--checkpoint", str(tmp_path / "none"), "--out", str(out), "--no-progress"]
    cases = [
        (["--method", "cp-mct", "--set", "bogus=1"], "cp-mct has no setting bogus; settable: "),
        (["--method", "cp-mct", "--set", "chunk_size=0.5"], "cp-mct: chunk_size must be an int"),
        (["--method", "greedy", "--set", "steps=many"], "greedy: steps must be an integer"),
        (["--method", "dgr", "--sparsity", "1.5"], "dgr: sparsity must be in [0, 1)"),
        (["--method", "gencnp", "--granularity", "element"], "gencnp: granularity must be 'chan"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"neuralpath: error: {message}") and err.count("\n") == 1, err
    assert not out.exists()


def test_help_lists_every_field_of_every_config(capsys) -> None:
    text = settings_help()
    segments = dict(part.split(": ", 1) for part in text.split("; "))
    assert set(segments) == set(finder_names())
    for name, segment in segments.items():
        entry = finder_entry(name)
        for key in field_types(entry.config):
            assert re.search(rf"(--|\b){key}\b", segment), (name, key)
    assert "selection=global|per_layer|per_type (global)" in segments["cp-mct"]
    assert "--granularity element" in segments["cp-mct"]
    assert "--granularity channel" in segments["dgr"]
    assert "init=uniform (fixed)" in segments["dgr-r"]
    for argv in (["find", "--help"], ["compare", "--help"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
        shown = " ".join(capsys.readouterr().out.split())
        assert " ".join(text.split()) in shown.replace("- ", "-")


# ------------------------------------------------------------------ min_per_layer


@pytest.mark.parametrize("granularity", ["channel", "element"])
@pytest.mark.parametrize("min_per_layer", [1, 3])
def test_global_threshold_with_min_per_layer_never_empties_a_layer(granularity, min_per_layer):
    """Random scores, skewed so that whole layers fall below the global threshold."""
    generator = torch.Generator().manual_seed(min_per_layer)
    shapes = [(2,), (5,), (64,), (16,)] if granularity == "channel" else [(2, 3, 3), (8, 4, 4)]
    for trial in range(20):
        scores = {
            f"l{i}": torch.rand(6, *shape, generator=generator) * 10.0 ** (i - trial % 3)
            for i, shape in enumerate(shapes)
        }
        sparsity = (0.5, 0.9, 0.99)[trial % 3]
        plain = global_percentile(scores, sparsity, granularity)
        kept = global_percentile(scores, sparsity, granularity, min_per_layer=min_per_layer)
        for name, score in scores.items():
            mask, rule = kept[name].reshape(6, -1), plain[name].reshape(6, -1)
            flat = score.reshape(6, -1)
            need = min(min_per_layer, flat.shape[1])
            assert (mask.sum(dim=1) >= need).all()
            assert (mask | ~rule).all()  # the global rule's units are all still kept
            short = rule.sum(dim=1) < need
            assert torch.equal(mask[~short], rule[~short])  # other layers untouched
            lowest_kept = flat.masked_fill(~mask, float("inf")).amin(dim=1)
            highest_dropped = flat.masked_fill(mask, float("-inf")).amax(dim=1)
            assert (lowest_kept[short] >= highest_dropped[short]).all()  # the top ones
        assert kept.metadata["min_per_layer"] == min_per_layer


def test_keep_per_layer_checks_its_argument() -> None:
    pathway = Pathway({"a": torch.zeros(1, 3, dtype=torch.bool)})
    for bad in (-1, 1.5, True):
        with pytest.raises(InputError, match="min_per_layer"):
            keep_per_layer(pathway, {"a": torch.rand(1, 3)}, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["cp-mct", "cp-intgrad", "greedy", "dgr"])
def test_channel_pathways_at_high_sparsity_keep_every_layer(name, gated, inputs) -> None:
    """Channels at 0.9 on a 4 + 6 channel toy: the plain global rule keeps one channel in all,
    so it empties a layer for every sample; the default keeps one per layer."""
    fast = {"iterations": 3} if name == "dgr" else {"steps": 2} if name != "cp-mct" else {}
    options = {"sparsity": 0.9, "granularity": "channel", "settings": fast}
    default = build_finder(name, gated, FinderOptions(**options)).find(inputs)  # type: ignore[arg-type]
    paper_rule = {"min_per_layer": 0} | ({} if name == "greedy" else {"connect": False})
    plain = {**options, "settings": {**fast, **paper_rule}}
    paper = build_finder(name, gated, FinderOptions(**plain)).find(inputs)  # type: ignore[arg-type]
    assert all((m.sum(dim=1) >= 1).all() for m in default.values())
    assert any((m.sum(dim=1) == 0).any() for m in paper.values())


def test_gencnp_global_keeps_every_layer(gated, inputs) -> None:
    torch.manual_seed(0)
    finder = GenCNPFinder(gated, PathwayGenerator(gated.sites), sparsity=0.95)
    assert all((m.sum(dim=1) >= 1).all() for m in finder.find(inputs).values())


# ------------------------------------------------------------------ chunked = whole


def test_chunked_equals_whole_up_to_rounding_at_scale() -> None:
    """Width-reduced VGG-11 on 32×32, batch 32, chunks of 1, element pathways at 0.9 (37,888
    units per image): the promise of :func:`find_in_chunks`. Scores agree to float rounding,
    targets agree, and a mask differs only at units whose score lies within rounding of the
    sample's threshold (measured on VGG-16 at 224 px: a handful of 13.5 million)."""
    torch.manual_seed(0)
    model = build_model("vgg11", num_classes=10, in_channels=3, input_size=32, width=0.25).eval()
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    finder = NeuronMCT(GatedModel.discover(model, x[:1]))
    scores, cls = finder.scores_and_target(x)
    parts = [finder.scores_and_target(x[i : i + 1]) for i in range(32)]
    assert torch.equal(cls, torch.cat([target for _, target in parts]))
    flat = torch.cat([s.reshape(32, -1) for s in scores.values()], dim=1)
    chunk_flat = torch.cat(
        [torch.cat([p[0][n].reshape(1, -1) for n in scores], dim=1) for p in parts]
    )
    scale = flat.amax(dim=1, keepdim=True)
    assert ((chunk_flat - flat).abs() <= 1e-5 * scale).all()  # rounding, not a different result
    whole, chunked = finder.find(x), find_in_chunks(finder, x, None, 1)
    differ = whole.flatten() != chunked.flatten()
    threshold = flat.kthvalue(round(0.9 * flat.shape[1]), dim=1).values[:, None]
    near = (flat - threshold).abs() <= 1e-5 * scale
    assert not (differ & ~near).any()
    assert differ.float().mean() <= 1e-4
