"""PathwayGradCAM warns about all-zero maps as PathwayGradient does (issue 15)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor

from neuralpath.attribution import PathwayGradCAM, zero_maps
from neuralpath.errors import ZeroMapsWarning
from neuralpath.gating import GatedModel
from neuralpath.methods.critical import NeuronMCT
from neuralpath.pathway import Pathway

from toys import tiny_cnn


def _setup(seed: int) -> tuple[GatedModel, Tensor]:
    model = tiny_cnn(seed).double()
    inputs = torch.randn(
        4, 3, 8, 8, generator=torch.Generator().manual_seed(seed + 10), dtype=torch.float64
    )
    return GatedModel.discover(model, inputs, include_fc=True), inputs


def _emptied(pathway: Pathway, layer: str, samples: slice = slice(None)) -> Pathway:
    masks = {name: mask.clone() for name, mask in pathway.items()}
    masks[layer][samples] = False
    return Pathway(masks, pathway.granularity)


def test_warns_naming_the_emptied_layers() -> None:
    gated, inputs = _setup(2)
    cam = PathwayGradCAM(gated)  # the default layer, features.4
    pathway, cls = NeuronMCT(gated, sparsity=0.5).find_with_target(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pathway that passes the class evidence: no warning
        assert not zero_maps(cam.attribute(inputs, cls, pathway=pathway)).any()
    pattern = r"^4 of 4 Pathway Grad-CAM maps are all zero: .*keep no unit of features\.4"
    with pytest.warns(ZeroMapsWarning, match=pattern):
        maps = cam.attribute(inputs, cls, pathway=_emptied(pathway, "features.4"))
    assert zero_maps(maps).all()
    # a layer after the CAM layer: no gradient reaches features.4 for the first sample
    with pytest.warns(ZeroMapsWarning, match=r"^1 of 4 .*keep no unit of classifier\.2"):
        maps = cam.attribute(inputs, cls, pathway=_emptied(pathway, "classifier.2", slice(0, 1)))
    assert zero_maps(maps).tolist() == [True, False, False, False]


def test_warns_when_the_class_evidence_is_nowhere_positive() -> None:
    gated, inputs = _setup(1)  # class 0 has negative Grad-CAM evidence everywhere here
    full = Pathway(
        {site.name: torch.ones(1, site.units, dtype=torch.bool) for site in gated.sites}, "channel"
    )
    with pytest.warns(ZeroMapsWarning, match=r"features\.4 is nowhere positive"):
        maps = PathwayGradCAM(gated).attribute(inputs, 0, pathway=full)
    assert zero_maps(maps).all()
