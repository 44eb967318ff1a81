"""The shared contract over every registered finder and every saliency method, generated from
the registries: a new registration is covered without editing a test module.

Each finder, under each intervention: hooks removed and model unchanged, batch = loop (also with
per-sample targets), chunked = whole, deterministic from its seed; and the same pathways through
a ``torch.nn.DataParallel`` wrapper. Each saliency method: model unchanged and batch = loop.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from neuralpath.attribution import METHOD_NAMES, PATHWAY_METHODS, make_explainer
from neuralpath.gating import GatedModel
from neuralpath.interventions import MeanAblation, ResampleAblation, ZeroAblation
from neuralpath.methods import FinderOptions, build_finder, find_in_chunks, finder_names
from neuralpath.methods.gencnp import FitConfig, GeneratorConfig, fit_gencnp
from neuralpath.reference import reference_statistics

from contract import check_batch_equals_loop, check_leaves_model_unchanged
from toys import tiny_cnn

FINDERS = finder_names()
QUICK = {"dgr": {"iterations": 3}, "dgr-r": {"iterations": 3}, "cp-intgrad": {"steps": 2}}
QUICK["greedy"] = {"steps": 2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    model = tiny_cnn(seed=2)
    gated = GatedModel.discover(model, torch.zeros(1, 3, 8, 8))
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(4, 3, 8, 8, generator=g)
    reference = torch.randn(6, 3, 8, 8, generator=g)
    train = torch.utils.data.TensorDataset(torch.randn(32, 3, 8, 8, generator=g), torch.zeros(32))
    small = GeneratorConfig(width=16, rfe_width=8, heads=2, resolution=2)
    out = tmp_path_factory.mktemp("generator")
    config = FitConfig(epochs=1, batch_size=16, generator=small)
    fit_gencnp(gated, train, config, out_dir=out, progress=False)
    stats = reference_statistics(gated, reference, progress=False)
    interventions = {
        "zero": ZeroAblation(),
        "mean": MeanAblation(stats),
        "resample": ResampleAblation(reference),
    }
    return {"model": model, "gated": gated, "inputs": inputs, "generator": str(out),
            "interventions": interventions}  # fmt: skip


def options(name: str, generator: str) -> FinderOptions:
    return FinderOptions(
        sparsity=None if name in ("active", "gencnp") else 0.6,
        seed=0,
        generator=generator if name.startswith("gencnp") else None,
        settings=QUICK.get(name, {}),
    )


def as_tensors(pathway: object) -> list[Tensor]:
    return [pathway[name] for name in pathway]  # type: ignore[index]


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
@pytest.mark.parametrize("name", FINDERS)
def test_every_finder_keeps_the_contract(setup: dict, name: str, ablation: str) -> None:
    gated = setup["gated"].with_intervention(setup["interventions"][ablation])
    model, inputs = setup["model"], setup["inputs"]
    finder = build_finder(name, gated, options(name, setup["generator"]))
    check_leaves_model_unchanged(model, finder.find, inputs)
    check_batch_equals_loop(finder.find, inputs)
    check_batch_equals_loop(finder.find, inputs, torch.tensor([2, 0, 1, 1]))
    whole = finder.find(inputs)
    chunked = find_in_chunks(finder, inputs, None, internal_batch_size=2)
    again = build_finder(name, gated, options(name, setup["generator"])).find(inputs)
    for a, b, c in zip(as_tensors(whole), as_tensors(chunked), as_tensors(again), strict=True):
        assert torch.equal(a, b), f"{name}: chunked != whole"
        assert torch.equal(a, c), f"{name}: not deterministic from its seed"


@pytest.mark.parametrize("name", FINDERS)
def test_every_finder_through_data_parallel(setup: dict, name: str) -> None:
    model, inputs = setup["model"], setup["inputs"]
    wrapped = nn.DataParallel(model)
    through = GatedModel.discover(wrapped, inputs[:1])
    assert [s.name for s in through.sites] == [f"module.{s.name}" for s in setup["gated"].sites]
    direct = build_finder(name, setup["gated"], options(name, setup["generator"]))
    if name.startswith("gencnp"):  # the generator is checked against the layer names it saw
        with pytest.raises(Exception, match="layer|site|generator"):
            build_finder(name, through, options(name, setup["generator"]))
        return
    via = build_finder(name, through, options(name, setup["generator"]))
    for a, b in zip(as_tensors(direct.find(inputs)), as_tensors(via.find(inputs)), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_saliency_method_keeps_the_contract(setup: dict, method: str) -> None:
    gated, model, inputs = setup["gated"], setup["model"], setup["inputs"]
    finder = (
        build_finder("cp-mct", gated, options("cp-mct", "")) if method in PATHWAY_METHODS else None
    )
    explain = make_explainer(method, gated, finder)
    targets = torch.tensor([0, 1, 2, 0])
    check_leaves_model_unchanged(model, lambda x, _t: explain(x, targets[: x.shape[0]]), inputs)
    check_batch_equals_loop(lambda x, t: explain(x, t), inputs, targets)
