"""One contract for every method, generated from the registries at collection time: a new
:func:`~neuralpath.methods.register_finder` registration or a new name in
:data:`~neuralpath.attribution.METHOD_NAMES` is covered without editing a test module.

Every registered finder, under every intervention (zero, mean, resample), on ``tests/toys.py``'s
``tiny_cnn``:

* hooks removed and the model unchanged (weights, buffers, ``training``, ``requires_grad``,
  ``.grad``), in train and in eval mode (:func:`contract.check_leaves_model_unchanged`);
* batch = loop (:func:`contract.check_batch_equals_loop`);
* per-sample targets: a ``[B]`` target tensor gives what each sample gives with its own int;
* chunked = whole: :func:`~neuralpath.methods.find_in_chunks` with ``internal_batch_size=2``
  equals one call, up to the rounding its docstring allows (a unit within rounding of its
  sample's threshold may swap with a neighbour);
* deterministic from the seed: two fresh finders with the same config give the same pathways;
* through ``torch.nn.DataParallel`` (one replica on the CPU): sites discovered and gated through
  the wrapper, same pathways as on the unwrapped model, wrapper unchanged.

Every saliency method (Captum's, and ``pathway-gradient``/``pathway-grad-cam`` with every
registered finder, under every intervention): model unchanged, batch = loop, per-sample targets,
deterministic.

No built-in method's result depends on the composition of its batch, so batch = loop is asserted
for all of them; a method that legitimately does must be listed in :data:`BATCH_DEPENDENT` with
its reason, and is then asserted to differ (not skipped).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from neuralpath.attribution import (
    ATTENTION_METHODS,
    METHOD_NAMES,
    PATHWAY_METHODS,
    make_explainer,
)
from neuralpath.errors import CheckpointError, ZeroMapsWarning
from neuralpath.gating import GatedModel
from neuralpath.interventions import (
    ABLATIONS,
    Intervention,
    MeanAblation,
    ResampleAblation,
    ZeroAblation,
)
from neuralpath.methods import (
    FinderOptions,
    PathwayFinder,
    build_finder,
    find_in_chunks,
    finder_entry,
    finder_names,
)
from neuralpath.methods.gencnp import FitConfig, GeneratorConfig, fit_gencnp
from neuralpath.pathway import Pathway
from neuralpath.reference import reference_statistics

from contract import (
    check_batch_equals_loop,
    check_cleans_up_after_raise,
    check_leaves_model_unchanged,
)
from toys import tiny_cnn

FINDERS = finder_names()
# the toy is a CNN: attention methods keep their contract in tests/test_rollout.py
SALIENCY = [
    (m, None) for m in METHOD_NAMES if m not in PATHWAY_METHODS and m not in ATTENTION_METHODS
] + [(m, f) for m in PATHWAY_METHODS for f in FINDERS]

QUICK: dict[str, dict[str, Any]] = {
    "cp-intgrad": {"steps": 2},
    "dgr": {"iterations": 3, "lr": 0.5},
    "dgr-r": {"iterations": 3, "lr": 0.5},
    "greedy": {"steps": 2},
}
"""Few iterations: the contract is about plumbing, not quality (DGR's larger step, so that three
iterations already move the gates off their tied start and the pathways are not all-ones)."""

BATCH_DEPENDENT: dict[str, str] = {}
"""Finder name -> why its pathway of a sample legitimately depends on the rest of its batch."""

ROUNDING_SWAPS = 1
"""Units per sample that :func:`find_in_chunks` may swap (its docstring: a unit within rounding
of its sample's threshold can swap with a neighbour), i.e. at most 2 differing units."""

BATCH = 4
NUM_CLASSES = 3
pytestmark = pytest.mark.filterwarnings(f"ignore::{ZeroMapsWarning.__module__}.ZeroMapsWarning")


def _uses_generator(name: str) -> bool:
    return "generator" in finder_entry(name).config.__dataclass_fields__


def _has_field(name: str, key: str) -> bool:
    return key in finder_entry(name).config.__dataclass_fields__


def _fit_generator(gated: GatedModel, train: TensorDataset, out: Path) -> str:
    # init_logit 0: about half the units start below DAQ's 0.5, so the masks are not all-ones
    small = GeneratorConfig(width=16, rfe_width=8, heads=2, resolution=2, init_logit=0.0)
    fit_gencnp(
        gated, train, FitConfig(epochs=1, batch_size=16, generator=small), out_dir=out,
        progress=False,
    )  # fmt: skip
    return str(out)


def _interventions(gated: GatedModel, reference: Tensor) -> dict[str, Intervention]:
    made = {
        "zero": ZeroAblation(),
        "mean": MeanAblation(reference_statistics(gated, reference[:4], progress=False)),
        "resample": ResampleAblation(reference),
    }
    assert set(made) == set(ABLATIONS), "a new intervention: add it here"
    return made


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny target, plain and wrapped in DataParallel, with inputs, interventions and a
    freshly trained (one short epoch) GEN-CNP generator for each."""
    model = tiny_cnn(seed=2)
    wrapped = nn.DataParallel(model)  # no CUDA here: runs the module itself, one replica
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(BATCH, 3, 8, 8, generator=g)
    reference = torch.randn(6, 3, 8, 8, generator=g)
    train = TensorDataset(torch.randn(32, 3, 8, 8, generator=g), torch.zeros(32, dtype=torch.long))
    gated = GatedModel.discover(model, inputs[:1])
    through = GatedModel.discover(wrapped, inputs[:1])
    out = tmp_path_factory.mktemp("generators")
    needs_generator = any(_uses_generator(n) for n in FINDERS)
    return {
        "model": model,
        "wrapped": wrapped,
        "inputs": inputs,
        "gated": gated,
        "through": through,
        "interventions": _interventions(gated, reference),
        "interventions_through": _interventions(through, reference),
        "generator": _fit_generator(gated, train, out / "plain") if needs_generator else None,
        "generator_through": (
            _fit_generator(through, train, out / "wrapped") if needs_generator else None
        ),
    }


def options(name: str, generator: str | None) -> FinderOptions:
    """Small, fast settings; sparsity 0.6 where the method has one (0.9 over 10 channels can
    empty a layer of the tiny model)."""
    settable = finder_entry(name).settable()
    return FinderOptions(
        sparsity=0.6 if _has_field(name, "sparsity") else None,
        seed=0,
        generator=generator if _uses_generator(name) else None,
        settings={k: v for k, v in QUICK.get(name, {}).items() if k in settable},
    )


def make_finder(
    toy: dict[str, Any], name: str, ablation: str, *, wrapped: bool = False
) -> PathwayFinder:
    suffix = "_through" if wrapped else ""
    gated = toy["through" if wrapped else "gated"]
    gated = gated.with_intervention(toy[f"interventions{suffix}"][ablation])
    return build_finder(name, gated, options(name, toy[f"generator{suffix}"]))


def other_targets(toy: dict[str, Any]) -> Tensor:
    """Per-sample classes that are not all the prediction (so a target is really used)."""
    with torch.no_grad():
        predicted = toy["model"](toy["inputs"]).argmax(1)
    return (predicted + torch.arange(BATCH)) % NUM_CLASSES


def tensors(pathway: Pathway) -> list[Tensor]:
    return [pathway[name] for name in pathway]


def assert_same_pathway(a: Pathway, b: Pathway, what: str, swaps: int = 0) -> None:
    """Same sites, granularity and masks; ``swaps``: units per sample allowed to swap."""
    assert a.granularity == b.granularity, what
    assert len(list(a)) == len(list(b)), what
    differing = torch.zeros(a.batch_size, dtype=torch.long)
    for x, y in zip(tensors(a), tensors(b), strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype, what
        differing += (x != y).flatten(1).sum(1)
    assert int(differing.max()) <= 2 * swaps, f"{what}: {differing.tolist()} units differ"


def check_model_unchanged(
    model: nn.Module, run: Callable[[Tensor, Any], Any], inputs: Tensor, target: Tensor
) -> None:
    """The contract's model checks, plus: ``.grad`` tensors already there keep their values
    (the contract only asserts none appears), and after a forward that raises in the middle of
    the target (its second convolution) the error propagates and nothing is left behind. The
    raise check binds ``target``: ``random`` runs no forward at all with ``target=None``."""
    check_leaves_model_unchanged(model, run, inputs, target)
    check_leaves_model_unchanged(model, run, inputs, None)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    grads = [p.grad.clone() for p in params]  # type: ignore[union-attr]
    try:
        for training in (True, False):
            model.train(training)
            run(inputs, target)
        for p, grad in zip(params, grads, strict=True):
            assert p.grad is not None and torch.equal(p.grad, grad), "an existing .grad changed"
    finally:
        model.eval()
        for p in params:
            p.grad = None
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][1]
    check_cleans_up_after_raise(model, conv, lambda x, _t: run(x, target), inputs)


# Finders ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("name", FINDERS)
def test_finder_leaves_model_unchanged_and_batch_equals_loop(
    toy: dict[str, Any], name: str, ablation: str
) -> None:
    finder = make_finder(toy, name, ablation)
    inputs = toy["inputs"]
    check_model_unchanged(toy["model"], finder.find, inputs, other_targets(toy))
    if name in BATCH_DEPENDENT:
        with pytest.raises(AssertionError, match="batch != loop"):
            check_batch_equals_loop(finder.find, inputs)
        return
    check_batch_equals_loop(finder.find, inputs)
    check_batch_equals_loop(finder.find, inputs, other_targets(toy))


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("name", FINDERS)
def test_finder_per_sample_targets_chunks_and_seed(
    toy: dict[str, Any], name: str, ablation: str
) -> None:
    finder = make_finder(toy, name, ablation)
    inputs, targets = toy["inputs"], other_targets(toy)
    whole = finder.find(inputs, targets)
    if name not in BATCH_DEPENDENT:
        each = Pathway.cat([finder.find(inputs[i : i + 1], int(t)) for i, t in enumerate(targets)])
        assert_same_pathway(whole, each, f"{name}: [B] targets != each sample's int target")
        for target in (targets, 1, None):
            chunked = find_in_chunks(finder, inputs, target, internal_batch_size=2)
            expected = whole if target is targets else finder.find(inputs, target)
            assert_same_pathway(expected, chunked, f"{name}: chunked != whole", ROUNDING_SWAPS)
    again = make_finder(toy, name, ablation).find(inputs, targets)
    assert_same_pathway(whole, again, f"{name}: two finders of one config disagree")


@pytest.mark.parametrize("ablation", ABLATIONS)
@pytest.mark.parametrize("name", FINDERS)
def test_finder_through_data_parallel(toy: dict[str, Any], name: str, ablation: str) -> None:
    through: GatedModel = toy["through"]
    plain: GatedModel = toy["gated"]
    assert [s.name for s in through.sites] == [f"module.{s.name}" for s in plain.sites]
    assert [s.shape for s in through.sites] == [s.shape for s in plain.sites]
    direct = make_finder(toy, name, ablation)
    via = make_finder(toy, name, ablation, wrapped=True)
    inputs, targets = toy["inputs"], other_targets(toy)
    check_model_unchanged(toy["wrapped"], via.find, inputs, targets)
    if _uses_generator(name):
        # a GEN-CNP generator is tied to the gate-site names (and weight fingerprint) it was
        # trained for: the plain model's is refused through the wrapper, so the wrapped model's
        # is trained through the wrapper with the same seed, i.e. the same generator
        with pytest.raises(CheckpointError, match="trained for gated layers"):
            build_finder(name, through, options(name, toy["generator"]))
    assert_same_pathway(
        direct.find(inputs, targets), via.find(inputs, targets), f"{name}: wrapped != plain"
    )


# Saliency methods -------------------------------------------------------------------------


def _saliency_cases() -> list[Any]:
    cases = []
    for method, finder in SALIENCY:
        for ablation in ABLATIONS if finder is not None else ("zero",):
            label = method if finder is None else f"{method}:{finder}"
            cases.append(pytest.param(method, finder, ablation, id=f"{label}-{ablation}"))
    return cases


def make_explain(
    toy: dict[str, Any], method: str, finder: str | None, ablation: str, *, wrapped: bool = False
) -> Callable[[Tensor, Any], Tensor]:
    suffix = "_through" if wrapped else ""
    gated = toy["through" if wrapped else "gated"]
    gated = gated.with_intervention(toy[f"interventions{suffix}"][ablation])
    built: PathwayFinder | None = None
    if finder is not None:
        built = build_finder(finder, gated, options(finder, toy[f"generator{suffix}"]))
    return make_explainer(method, gated, built)


@pytest.mark.parametrize(("method", "finder", "ablation"), _saliency_cases())
def test_saliency_method_keeps_the_contract(
    toy: dict[str, Any], method: str, finder: str | None, ablation: str
) -> None:
    model, inputs, targets = toy["model"], toy["inputs"], other_targets(toy)
    explain = make_explain(toy, method, finder, ablation)
    check_model_unchanged(model, explain, inputs, targets)
    if finder in BATCH_DEPENDENT:
        with pytest.raises(AssertionError, match="batch != loop"):
            check_batch_equals_loop(explain, inputs, targets)
        return
    check_batch_equals_loop(explain, inputs, None)
    batched = explain(inputs, targets)
    each = torch.cat([explain(inputs[i : i + 1], int(t)) for i, t in enumerate(targets)])
    torch.testing.assert_close(batched, each, atol=1e-5, rtol=1e-4, msg="[B] targets != ints")
    again = make_explain(toy, method, finder, ablation)(inputs, targets)
    torch.testing.assert_close(batched, again, atol=0, rtol=0, msg="not deterministic")


@pytest.mark.parametrize(
    ("method", "finder"), SALIENCY, ids=[m if f is None else f"{m}:{f}" for m, f in SALIENCY]
)
def test_saliency_method_through_data_parallel(
    toy: dict[str, Any], method: str, finder: str | None
) -> None:
    inputs, targets = toy["inputs"], other_targets(toy)
    via = make_explain(toy, method, finder, "zero", wrapped=True)
    check_model_unchanged(toy["wrapped"], via, inputs, targets)
    direct = make_explain(toy, method, finder, "zero")(inputs, targets)
    torch.testing.assert_close(via(inputs, targets), direct, atol=1e-6, rtol=1e-5)
