"""Baseline pathways: greedy Taylor pruning, random, active-only."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from neuralpath.errors import InputError
from neuralpath.gating import GatedModel
from neuralpath.methods import FinderOptions, build_finder, finder_names
from neuralpath.methods.baselines import ActivePathway, GreedyTaylor, RandomPathway
from neuralpath.methods.critical import NeuronMCT
from neuralpath.pathway import Pathway

from contract import (
    check_batch_equals_loop,
    check_cleans_up_after_raise,
    check_leaves_model_unchanged,
    hook_count,
)
from toys import tiny_cnn

torch.set_num_threads(1)


def _setup(
    seed: int = 0, batch: int = 3, double: bool = True
) -> tuple[nn.Module, GatedModel, Tensor]:
    model = tiny_cnn(seed)
    inputs = torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed + 1))
    if double:
        model, inputs = model.double(), inputs.double()
    return model, GatedModel.discover(model, inputs, include_fc=True), inputs


def _literal_scores(
    model: nn.Module, gated: GatedModel, x: Tensor, cls: int, kept: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Element Taylor scores |a · ∂y/∂(m a)| of one sample in the network masked by ``kept``."""
    modules = dict(model.named_modules())
    raw, used, handles = {}, {}, []
    for site in gated.sites:

        def hook(_m: nn.Module, _i: object, out: Tensor, name: str = site.name) -> Tensor:
            raw[name] = out.detach()
            masked = out * kept[name].to(out.dtype)
            masked.retain_grad()
            used[name] = masked
            return masked

        handles.append(modules[site.module_name].register_forward_hook(hook))
    try:
        model(x.clone().requires_grad_(True))[0, cls].backward()
    finally:
        for handle in handles:
            handle.remove()
    return {n: (raw[n] * used[n].grad).abs()[0] for n in raw}


def _literal_greedy(
    model: nn.Module, gated: GatedModel, inputs: Tensor, sparsity: float, steps: int
) -> dict[str, Tensor]:
    """One sample at a time, one unit list at a time: prune the lowest-scoring alive units."""
    out: dict[str, list[Tensor]] = {s.name: [] for s in gated.sites}
    for i in range(inputs.shape[0]):
        x = inputs[i : i + 1]
        with torch.no_grad():
            cls = int(model(x)[0].argmax())
        kept = {s.name: torch.ones(s.shape, dtype=torch.bool) for s in gated.sites}
        total = sum(s.numel for s in gated.sites)
        for t in range(1, steps + 1):
            target_dropped = round(total * (1 - (1 - sparsity) ** (t / steps)))
            dropped = sum(int((~k).sum()) for k in kept.values())
            if target_dropped <= dropped:
                continue
            scores = _literal_scores(model, gated, x, cls, kept)
            alive = sorted(float(v) for n in kept for v in scores[n][kept[n]])
            threshold = alive[target_dropped - dropped - 1]
            kept = {n: kept[n] & (scores[n] > threshold) for n in kept}
        for name, mask in kept.items():
            out[name].append(mask[None])
    return {n: torch.cat(m) for n, m in out.items()}


@pytest.mark.parametrize("steps", [1, 3])
def test_greedy_equals_literal_loop(steps: int) -> None:
    model, gated, inputs = _setup(seed=2)
    pathway = GreedyTaylor(gated, sparsity=0.8, steps=steps).find(inputs)
    expected = _literal_greedy(model, gated, inputs, 0.8, steps)
    for name, mask in expected.items():
        assert torch.equal(pathway[name], mask), name
    assert pathway.metadata["method"] == "greedy"
    assert bool((pathway.kept_fraction() <= 0.2 + 1e-9).all())


def test_greedy_one_step_is_neuron_mct_and_more_steps_differ() -> None:
    _, gated, inputs = _setup(seed=4)
    one = GreedyTaylor(gated, sparsity=0.7, steps=1).find(inputs)
    mct = NeuronMCT(gated, sparsity=0.7).find(inputs)
    for name in mct:
        assert torch.equal(one[name], mct[name])
    many = GreedyTaylor(gated, sparsity=0.7, steps=5).find(inputs)
    assert not all(torch.equal(many[n], mct[n]) for n in mct)  # re-scoring changes the choice


def test_greedy_drop_schedule_removes_constant_fraction() -> None:
    _, gated, _ = _setup()
    counts = GreedyTaylor(gated, sparsity=0.9, steps=4).drop_counts(10_000)
    assert counts[-1] == 9000
    remaining = [10_000 - c for c in counts]
    ratios = [b / a for a, b in zip([10_000, *remaining[:-1]], remaining, strict=True)]
    assert max(ratios) - min(ratios) < 1e-3  # (1 - 0.9) ** (1 / 4) each step
    assert GreedyTaylor(gated, sparsity=0.9, steps=4).forward_equivalents() == 12.0


@pytest.mark.parametrize("granularity", ["element", "channel"])
def test_random_is_seeded_per_sample_and_matches_sparsity_per_layer(granularity: str) -> None:
    _, gated, inputs = _setup(batch=5)
    options = FinderOptions(sparsity=0.7, granularity=granularity, seed=3)  # type: ignore[arg-type]
    first = build_finder("random", gated, options)
    a, b = first.find(inputs), first.find(inputs)
    a2 = build_finder("random", gated, options).find(inputs)
    other = build_finder(
        "random", gated, FinderOptions(sparsity=0.7, granularity=granularity, seed=4)
    )
    c = other.find(inputs)
    for name in a:
        assert torch.equal(a[name], a2[name]) and torch.equal(a[name], b[name])  # reproducible
    assert not all(torch.equal(a[n], c[n]) for n in a)  # another seed, another pathway
    assert not all(torch.equal(a[n][0], a[n][1]) for n in a)  # samples are independent draws
    for name, frac in a.kept_fraction_per_layer().items():
        units = a.units[name]
        expected = max(1, round(0.3 * units)) / units
        torch.testing.assert_close(frac, torch.full((5,), expected))
    assert first.forward_equivalents() == 0.0


def test_random_draws_do_not_depend_on_the_batch_split() -> None:
    """Each sample's draw comes from the seed and the sample: batches do not share one draw."""
    _, gated, inputs = _setup(batch=6)
    finder = RandomPathway(gated, sparsity=0.6, seed=2)
    whole = finder.find(inputs)
    halves = Pathway.cat([finder.find(inputs[:3]), finder.find(inputs[3:])])
    for name in whole:
        assert torch.equal(whole[name], halves[name])
    shifted = finder.find(torch.cat([inputs[3:], inputs[:3]]))
    for name in whole:
        assert torch.equal(shifted[name][:3], whole[name][3:])
    check_batch_equals_loop(finder.find, inputs)


def test_random_runs_no_forward_and_leaves_model_unchanged() -> None:
    """No forward pass: the model is never touched, so a raising forward cannot affect it."""
    model, gated, inputs = _setup(double=False)
    finder = RandomPathway(gated, sparsity=0.6, seed=1)
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        finder.find(inputs)
    finally:
        handle.remove()
    assert calls == []
    check_leaves_model_unchanged(model, finder.find, inputs)


def _raw_activations(model: nn.Module, gated: GatedModel, inputs: Tensor) -> dict[str, Tensor]:
    modules = dict(model.named_modules())
    raw, handles = {}, []
    for site in gated.sites:
        handles.append(
            modules[site.module_name].register_forward_hook(
                lambda _m, _i, out, name=site.name: raw.__setitem__(name, out.detach().clone())
            )
        )
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return raw


def test_active_keeps_exactly_positive_units() -> None:
    model, gated, inputs = _setup(seed=6)
    raw = _raw_activations(model, gated, inputs)
    element = ActivePathway(gated, granularity="element").find(inputs)
    channel = build_finder("active", gated, FinderOptions(granularity="channel")).find(inputs)
    for name, a in raw.items():
        assert torch.equal(element[name], a > 0)
        expected = (a > 0).flatten(2).any(dim=2) if a.dim() == 4 else a > 0
        assert torch.equal(channel[name], expected)
    # keeping the active units only changes nothing: the pathway model equals the full model
    torch.testing.assert_close(gated.forward(inputs, element), gated.forward(inputs))
    assert 0 < float(element.kept_fraction().mean()) < 1
    with pytest.raises(InputError, match="out of range"):
        ActivePathway(gated).find(inputs, target=7)


@pytest.mark.parametrize("method", ["greedy", "active"])
@pytest.mark.parametrize("granularity", ["element", "channel"])
def test_contract(method: str, granularity: str) -> None:
    model = tiny_cnn(1, inplace=True)
    inputs = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    gated = GatedModel.discover(model, inputs)
    finder = build_finder(method, gated, FinderOptions(sparsity=0.7, granularity=granularity))  # type: ignore[arg-type]
    hooks = hook_count(model)
    check_leaves_model_unchanged(model, finder.find, inputs)
    check_cleans_up_after_raise(model, model.features[2], finder.find, inputs)
    check_batch_equals_loop(finder.find, inputs)
    check_batch_equals_loop(finder.find, inputs, torch.tensor([2, 0, 1, 1]))
    assert hook_count(model) == hooks


def test_registry_and_bad_inputs() -> None:
    assert {"greedy", "random", "active"} <= set(finder_names())
    _, gated, inputs = _setup(double=False)
    for sparsity in (-0.5, 1.0):
        with pytest.raises(InputError, match="sparsity"):
            GreedyTaylor(gated, sparsity=sparsity)
        with pytest.raises(InputError, match="sparsity"):
            RandomPathway(gated, sparsity=sparsity)
    with pytest.raises(InputError, match="steps"):
        GreedyTaylor(gated, steps=0)
    with pytest.raises(InputError, match="granularity"):
        ActivePathway(gated, granularity="pixel")  # type: ignore[arg-type]
    for finder in (GreedyTaylor(gated, steps=2), RandomPathway(gated), ActivePathway(gated)):
        with pytest.raises(InputError, match="empty batch"):
            finder.find(inputs[:0])
    with pytest.raises(InputError, match="out of range"):
        GreedyTaylor(gated, steps=2).find(inputs, target=-1)
    full = GreedyTaylor(gated, sparsity=0.0).find(inputs)
    assert all(bool(m.all()) for m in full.values())
