"""Gate discovery on every classification architecture of torchvision (random weights).

For each architecture of ``torchvision.models.list_models(module=torchvision.models)``, built
with random weights (a linear layer initialised to zero, ViT's head, drawn at random instead)
and 10 classes at its smallest valid input (:data:`INPUT_SIZE`, batch 2):
discovery finds at least one site, an all-ones channel pathway reproduces the logits exactly,
an all-zeros one changes them, and the model comes back unchanged. The giants are marked
``slow`` (run by ``benchmarks/torchvision_sweep.py``, which writes the count of supported
architectures to docs/results.md); an architecture that cannot be supported yet is an
``xfail`` naming why (:data:`UNSUPPORTED`, strict: it must really fail).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from neuralpath.gating import GatedModel

from contract import assert_unchanged, snapshot

ARCHITECTURES: list[str] = torchvision.models.list_models(module=torchvision.models)

INPUT_SIZE: dict[str, int] = {
    "alexnet": 64,  # five 2x poolings/strides of a 11x11 stride-4 stem: 63 is the least
    "inception_v3": 75,  # the least its stem accepts
    "squeezenet1_0": 24,
    "squeezenet1_1": 24,
    "maxvit_t": 224,  # every stage side (input / 4 ... / 32) a multiple of the partition, 7
    **{name: 32 for name in ARCHITECTURES if name.startswith(("convnext", "densenet", "vgg"))},
    # ViT: one patch (plus the class token)
    **{name: int(name.rsplit("_", 1)[1]) for name in ARCHITECTURES if name.startswith("vit_")},
}
"""Smallest input side each architecture runs at; 16 for the others."""

BUILD_KWARGS: dict[str, dict[str, Any]] = {
    "maxvit_t": {"input_size": (224, 224)},
    # PyTorch's default initialisation (still random), not the slower truncated-normal one
    "googlenet": {"init_weights": False},
    "inception_v3": {"init_weights": False},
    **{name: {"init_weights": False} for name in ARCHITECTURES if name.startswith("vgg")},
    **{name: {"image_size": INPUT_SIZE[name]} for name in ARCHITECTURES if name.startswith("vit_")},
}

SLOW: dict[str, str] = {
    "regnet_y_128gf": "637 M parameters: instantiation alone takes 5 s",
    "vit_h_14": "630 M parameters: instantiation alone takes 5 s",
    "vit_l_16": "303 M parameters: instantiation alone takes 2.3 s",
    "vit_l_32": "305 M parameters: instantiation alone takes 2.8 s",
    "convnext_large": "196 M parameters: instantiation alone takes 2 s",
}
"""Giants left to the benchmark (times: one thread, idle machine); each family keeps smaller
members in the fast suite."""

UNSUPPORTED: dict[str, str] = {}
"""Architectures that cannot be supported yet, with the reason (strict xfail)."""


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """``name`` with random weights and 10 classes in eval mode, and a batch of 2 inputs."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(
        name, weights=None, num_classes=10, **BUILD_KWARGS.get(name, {})
    )
    for module in model.modules():  # ViT's head starts at zero: its logits would ignore x
        if isinstance(module, nn.Linear) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.02)
    side = INPUT_SIZE.get(name, 16)
    return model.eval(), torch.randn(2, 3, side, side)


def check_architecture(name: str) -> Counter[str]:
    """Run the four checks on ``name``; return how many sites it has of each kind (``conv``,
    ``token``; ``conv output`` where the model's activations are functional)."""
    model, x = build(name)
    before = snapshot(model)
    with torch.no_grad():
        plain = model(x)
        gated = GatedModel.discover(model, x[:1])
        assert gated.sites, f"{name}: no gate site"
        ones = {s.name: torch.ones(2, s.units) for s in gated.sites}
        zeros = {s.name: torch.zeros(2, s.units) for s in gated.sites}
        kept = gated.forward(x, ones)
        dropped = gated.forward(x, zeros)
    assert torch.equal(kept, plain), f"{name}: an all-ones pathway changed the logits"
    assert not torch.equal(dropped, plain), f"{name}: an all-zeros pathway changed nothing"
    assert_unchanged(model, before)
    modules = dict(model.named_modules())
    return Counter(
        f"{s.kind} output"
        if isinstance(modules[s.module_name], nn.modules.conv._ConvNd)
        else s.kind
        for s in gated.sites
    )


def _case(name: str) -> Any:
    marks = [pytest.mark.slow(reason=SLOW[name])] if name in SLOW else []
    if name in UNSUPPORTED:
        marks.append(pytest.mark.xfail(reason=UNSUPPORTED[name], strict=True))
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_case(name) for name in ARCHITECTURES])
def test_gate_discovery_on_torchvision_architecture(
    name: str, record_property: Callable[[str, object], None]
) -> None:
    kinds = check_architecture(name)
    record_property("sites", sum(kinds.values()))
    record_property("kinds", ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())))
