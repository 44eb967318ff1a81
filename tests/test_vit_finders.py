"""Every finder of phase 1 of issue 16 on attention heads and MLP neurons of a toy ViT.

critical pathways (cp-mct, cp-intgrad), the greedy / random / active baselines and DGR / DGR-R,
at channel (a unit shared by the tokens) and element (a unit per token) granularity, on one
pathway holding both unit types: pathway shapes, the shared contract (model unchanged, hooks
removed also when the forward raises, batch = loop), and one global percentile across types.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_vit_units import literal_torchvision, torchvision_vit
from torch import Tensor

from neuralpath.attribution import PathwayGradient
from neuralpath.errors import InputError
from neuralpath.gating import GatedModel
from neuralpath.methods.base import FinderOptions, build_finder
from neuralpath.methods.baselines import ActivePathway
from neuralpath.methods.critical import NeuronMCT
from neuralpath.methods.gencnp.generator import GeneratorConfig, PathwayGenerator
from neuralpath.pathway import Pathway

from contract import (
    check_batch_equals_loop,
    check_cleans_up_after_raise,
    check_leaves_model_unchanged,
)

SETTINGS: dict[str, dict[str, Any]] = {
    "cp-mct": {},
    "cp-intgrad": {"steps": 2},
    "greedy": {"steps": 2},
    "random": {},
    "active": {},
    "dgr": {"iterations": 4},
    "dgr-r": {"iterations": 4},
}


def _vit() -> tuple[torch.nn.Module, GatedModel, Tensor]:
    model = torchvision_vit()
    torch.manual_seed(5)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    return model, GatedModel.discover(model, x[:1], unit_types=["heads", "mlp"]), x


@pytest.mark.parametrize("granularity", ["channel", "element"])
@pytest.mark.parametrize("method", list(SETTINGS))
def test_finder_on_heads_and_mlp_neurons(method: str, granularity: str) -> None:
    model, gm, x = _vit()
    options = FinderOptions(granularity=granularity, settings=SETTINGS[method])  # type: ignore[arg-type]
    finder = build_finder(method, gm, options)

    def run(inputs: Tensor, target: Any) -> Pathway:
        return finder.find(inputs, target)

    pathway = run(x, None)
    assert pathway.is_binary and pathway.granularity == granularity
    assert pathway.layer_shapes == {s.name: s.mask_shape(granularity) for s in gm.sites}
    assert {gm.site(n).kind for n in pathway if pathway[n].any()} == {"head", "token"}
    check_leaves_model_unchanged(model, run, x)
    if method != "random":  # random runs no forward without a target
        check_cleans_up_after_raise(model, model.heads, run, x)
    check_batch_equals_loop(run, x)


@pytest.mark.parametrize("granularity", ["channel", "element"])
def test_critical_pathway_is_one_global_percentile_across_unit_types(granularity: str) -> None:
    _model, gm, x = _vit()
    finder = NeuronMCT(gm, granularity=granularity, sparsity=0.6, min_per_layer=0)
    scores = finder.scores(x)
    flat = torch.cat([scores[s.name].reshape(3, -1) for s in gm.sites], dim=1)
    threshold = flat.kthvalue(round(0.6 * flat.shape[1]), dim=1).values
    pathway = finder.find(x)
    for site in gm.sites:
        expected = scores[site.name] > threshold.view(-1, *[1] * len(site.mask_shape(granularity)))
        assert torch.equal(pathway[site.name], expected), site.name
    kept = {kind: 0 for kind in ("head", "token")}
    for site in gm.sites:
        kept[site.kind] += int(pathway[site.name].sum())
    assert kept["head"] > 0 and kept["token"] > 0
    # channel scores are the element scores summed over the tokens
    if granularity == "channel":
        element = NeuronMCT(gm, granularity="element").scores(x)
        for site in gm.sites:
            torch.testing.assert_close(scores[site.name], element[site.name].sum(dim=1))


def test_active_units_of_heads_and_neurons() -> None:
    _model, gm, x = _vit()
    _, recording = gm.record(x)
    for granularity in ("channel", "element"):
        pathway = ActivePathway(gm, granularity=granularity).find(x)
        for site in gm.sites:
            a = recording.activations[site.name] > 0
            element = a.any(dim=-1) if site.kind == "head" else a  # any dimension of a head
            expected = element if granularity == "element" else element.any(dim=1)
            assert torch.equal(pathway[site.name], expected), (granularity, site.name)


@pytest.mark.parametrize("granularity", ["channel", "element"])
def test_per_type_selection_gives_heads_and_neurons_each_their_share(granularity: str) -> None:
    _model, gm, x = _vit()
    finder = NeuronMCT(
        gm, granularity=granularity, sparsity=0.5, min_per_layer=0, selection="per_type"
    )
    scores, pathway = finder.scores(x), finder.find(x)
    assert pathway.metadata["rule"] == "per_type"
    for kind in ("head", "token"):
        sites = [s for s in gm.sites if s.kind == kind]
        flat = torch.cat([scores[s.name].reshape(3, -1) for s in sites], dim=1)
        threshold = flat.kthvalue(round(0.5 * flat.shape[1]), dim=1).values
        kept = torch.cat([pathway[s.name].reshape(3, -1) for s in sites], dim=1)
        assert torch.equal(kept, flat > threshold[:, None]), kind
        assert torch.equal(kept.sum(dim=1), torch.full((3,), flat.shape[1] // 2)), kind


def test_gencnp_generator_pools_token_and_head_features_over_tokens_per_unit() -> None:
    """Until GEN-CNP gets its token RFE (a later phase), its MLP RFE reads token and head sites
    by their units (pooled over tokens and head dimensions), not as [C, H, W] maps."""
    _model, gm, x = _vit()
    generator = PathwayGenerator(gm.sites, GeneratorConfig(width=8, heads=2)).double().eval()
    assert [rfe.mlp[0].in_features for rfe in generator.rfe] == [s.units for s in gm.sites]
    with torch.no_grad():
        _, recording = gm.record(x)
        features = {n: a.detach() for n, a in recording.activations.items()}
        masks = generator(features).masks
        single = generator({n: a[:1] for n, a in features.items()}).masks
    assert {n: tuple(m.shape) for n, m in masks.items()} == {s.name: (3, s.units) for s in gm.sites}
    for name, mask in masks.items():
        torch.testing.assert_close(mask[:1], single[name])


def test_head_sparsity_sets_the_heads_own_budget() -> None:
    _model, gm, x = _vit()
    finder = NeuronMCT(
        gm, granularity="element", sparsity=0.5, head_sparsity=0.75, min_per_layer=0,
        selection="per_type",
    )  # fmt: skip
    pathway = finder.find(x)
    assert pathway.metadata["type_sparsity"] == {"head": 0.75, "token": 0.5}
    kept = {kind: 0 for kind in ("head", "token")}
    for site in gm.sites:
        kept[site.kind] += int(pathway[site.name].sum())
    assert kept == {"head": 3 * 5, "token": 3 * 30}  # of 3 x 20 head and 3 x 60 neuron units
    with pytest.raises(InputError, match="head_sparsity needs selection='per_type'"):
        NeuronMCT(gm, head_sparsity=0.5)
    with pytest.raises(InputError, match="sparsity must be in"):
        NeuronMCT(gm, head_sparsity=1.0, selection="per_type")


def test_pathway_gradient_through_heads_and_neurons_is_the_literal_input_gradient() -> None:
    model, gm, x = _vit()
    pathway = NeuronMCT(gm, sparsity=0.7).find(x)
    maps = PathwayGradient(gm, NeuronMCT(gm, sparsity=0.7)).attribute(x)

    def site(name: str, a: Tensor) -> Tensor:
        mask = pathway[name].to(a.dtype)
        return a * mask.reshape(*mask.shape, *[1] * (a.dim() - mask.dim()))

    inputs = x.clone().requires_grad_(True)
    logits = literal_torchvision(model, inputs, site)
    target = model(x).argmax(dim=1)
    (expected,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), inputs)
    torch.testing.assert_close(maps, expected, rtol=1e-9, atol=1e-12)
