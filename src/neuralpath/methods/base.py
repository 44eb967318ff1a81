"""The one interface every pathway finder implements, and the registry the CLI builds them from.

A finder is configured once, then called like a Captum attribution method:
``finder.find(inputs, target=None) -> Pathway``. ``target`` is an int, a ``[B]`` tensor, or None
for the model's own prediction (see :mod:`neuralpath.targets`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from neuralpath.errors import InputError
from neuralpath.gating import GatedModel
from neuralpath.pathway import Granularity, Pathway
from neuralpath.targets import TargetType


class PathwayFinder(ABC):
    """Finds a pathway per input sample. Never changes the model (all gating is scoped)."""

    name: ClassVar[str]
    sparsity: float | None = None
    """Fraction of units every pathway drops by construction; None when it varies per sample."""

    def __init__(self, gated: GatedModel):
        self.gated = gated

    @abstractmethod
    def find(self, inputs: Tensor, target: TargetType = None) -> Pathway:
        """Binary pathway ``[B, ...]`` per site for ``inputs`` ``[B, *gated.input_shape]``."""

    def forward_equivalents(self) -> float:
        """Cost of :meth:`find` per batch in forward passes of the target (a backward ≈ 2)."""
        return float("nan")


def find_in_chunks(
    finder: PathwayFinder,
    inputs: Tensor,
    target: TargetType = None,
    internal_batch_size: int | None = None,
) -> Pathway:
    """``finder.find`` on at most ``internal_batch_size`` samples at a time, concatenated.

    Bounds memory (activations, scores, percentile buffers) to one chunk, e.g. for element
    pathways of a VGG-16 at 224×224; equal to one call for every finder whose pathway of a sample
    does not depend on the other samples of the batch (all built-in ones; ``random`` draws
    differently but from the same distribution).
    """
    if internal_batch_size is None or internal_batch_size >= inputs.shape[0]:
        return finder.find(inputs, target)
    if internal_batch_size < 1:
        raise InputError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
    parts = []
    for start in range(0, inputs.shape[0], internal_batch_size):
        rows = slice(start, start + internal_batch_size)
        part_target = target[rows] if isinstance(target, Tensor) and target.dim() > 0 else target
        parts.append(finder.find(inputs[rows], part_target))
    return Pathway.cat(parts)


@dataclass(frozen=True)
class FinderOptions:
    """The options the CLI passes to every finder factory; each finder reads what it needs.

    ``settings``: method-specific settings by name (``neuralpath find --set gamma=0.01``), each
    factory accepting the ones its method has (:meth:`settings_for`). ``verify_weights``: finders
    built from a trained artefact (``gencnp``) require it to be for these very weights; False
    only checks the layers, for deliberately changed copies (a sanity check's randomised model).
    """

    sparsity: float = 0.9
    granularity: Granularity = "channel"
    generator: str | None = None
    seed: int = 0
    settings: Mapping[str, Any] = field(default_factory=dict)
    verify_weights: bool = True

    def settings_for(self, method: str, allowed: Sequence[str]) -> dict[str, Any]:
        """``settings`` as keyword arguments, after checking that ``method`` has them all."""
        unknown = sorted(set(self.settings) - set(allowed))
        if unknown:
            settable = ", ".join(allowed) if allowed else "none"
            raise InputError(f"{method} has no setting {', '.join(unknown)}; settable: {settable}")
        return dict(self.settings)


FinderFactory = Callable[[GatedModel, FinderOptions], PathwayFinder]
_REGISTRY: dict[str, FinderFactory] = {}


def register_finder(name: str) -> Callable[[FinderFactory], FinderFactory]:
    """Decorator: make ``factory`` available as ``neuralpath find --method NAME``."""

    def decorate(factory: FinderFactory) -> FinderFactory:
        _REGISTRY[name] = factory
        return factory

    return decorate


def finder_names() -> list[str]:
    _load_builtin_finders()
    return sorted(_REGISTRY)


def build_finder(name: str, gated: GatedModel, options: FinderOptions) -> PathwayFinder:
    """Instantiate the registered finder ``name``."""
    _load_builtin_finders()
    if name not in _REGISTRY:
        raise InputError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](gated, options)


def _load_builtin_finders() -> None:
    """Import the modules that register the built-in finders (they register on import)."""
    import importlib

    for module in BUILTIN_FINDER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


BUILTIN_FINDER_MODULES: tuple[str, ...] = (
    "neuralpath.methods.critical",
    "neuralpath.methods.baselines",
    "neuralpath.methods.dgr",
    "neuralpath.methods.gencnp",
)
