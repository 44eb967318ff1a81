"""The one interface every pathway finder implements, its typed settings, and the registry.

A finder is configured once, then called like a Captum attribution method:
``finder.find(inputs, target=None) -> Pathway``. ``target`` is an int, a ``[B]`` tensor, or None
for the model's own prediction (see :mod:`neuralpath.targets`).

Each finder owns a frozen :class:`FinderConfig` dataclass whose defaults are the method's, stated
once: ``NeuronMCT(gated)``, ``build_finder("cp-mct", gated)`` and ``neuralpath find --method
cp-mct`` give the same pathways. The command line builds a config with
:func:`config_from_settings` from its common flags (:data:`COMMON_KEYS`) and ``--set KEY=VALUE``
pairs, and lists the settings with :func:`settings_help`; both are generated from the dataclasses.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from torch import Tensor

from neuralpath.errors import InputError
from neuralpath.gating import GatedModel
from neuralpath.pathway import Granularity, Pathway
from neuralpath.targets import TargetType


class PathwayFinder(ABC):
    """Finds a pathway per input sample. Never changes the model (all gating is scoped)."""

    name: ClassVar[str]
    sparsity: float | None = None
    """Fraction of units every pathway drops by construction; None when it varies per sample.
    Nominal where a config's ``min_per_layer`` may keep up to that many units more per layer."""

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
    pathways of a VGG-16 at 224×224. No built-in finder lets a sample's pathway depend on the
    other samples of its batch, so chunks give the same pathways *up to floating-point
    rounding*: a convolution over a chunk may round differently from one over the whole batch
    (the kernels block the batch differently), so scores differ in their last bits, and a unit
    whose score lies within that rounding of its sample's threshold can swap with a neighbour
    (VGG-16 at 224×224: at most 6 of 13.5 million element units per image; see the section
    "Element pathways in bounded memory" of ``docs/results.md``). Where a sample's two largest
    logits lie within rounding of each other, ``target=None`` may even resolve differently.
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


# Typed settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FinderConfig:
    """Base of every finder's settings: a frozen dataclass checked when it is made.

    Each field's value must match its annotation (``bool``, ``int``, ``float`` (an int is
    converted), ``str``, a ``Literal``, or a union of these with None), else :class:`InputError`
    names the field; subclasses add range checks in :meth:`check`.
    """

    def __post_init__(self) -> None:
        for name, hint in field_types(type(self)).items():
            value = getattr(self, name)
            if not _accepts(hint, value):
                raise InputError(f"{name} must be {describe_type(hint)}, got {value!r}")
            if float in _members(hint) and type(value) is int:
                object.__setattr__(self, name, float(value))
        self.check()

    def check(self) -> None:
        """Checks beyond each field's type (ranges); raise :class:`InputError`."""


C = TypeVar("C", bound=FinderConfig)


def require(ok: bool, message: str) -> None:
    """Raise :class:`InputError` with ``message`` unless ``ok``."""
    if not ok:
        raise InputError(message)


def make_config(cls: type[C], config: C | None, changes: Mapping[str, Any]) -> C:
    """``config`` (default ``cls()``) with the keyword ``changes``; raise unless it is a ``cls``."""
    if config is None:
        return cls(**changes)
    if type(config) is not cls:
        raise InputError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    return dataclasses.replace(config, **changes) if changes else config


_PLAIN = (bool, int, float, str, type(None))


_FIELD_TYPES: dict[type[FinderConfig], dict[str, Any]] = {}


def field_types(cls: type[FinderConfig]) -> dict[str, Any]:
    """``{field name: resolved annotation}`` of a config class, in field order (cached);
    TypeError for an annotation a setting cannot have (see :class:`FinderConfig`)."""
    if cls not in _FIELD_TYPES:
        hints = typing.get_type_hints(cls)
        found = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
        for name, hint in found.items():
            if any(m not in _PLAIN and typing.get_origin(m) is not Literal for m in _members(hint)):
                raise TypeError(f"{cls.__name__}.{name}: a setting cannot have the type {hint}")
        _FIELD_TYPES[cls] = found
    return _FIELD_TYPES[cls]


def _members(hint: Any) -> tuple[Any, ...]:
    """The alternatives of a union (``X | None``), else ``(hint,)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _accepts(hint: Any, value: object) -> bool:
    for member in _members(hint):
        if typing.get_origin(member) is Literal:
            if any(type(value) is type(a) and value == a for a in typing.get_args(member)):
                return True
        elif (member is type(None) and value is None) or (
            member in (int, float) and type(value) is int
        ):
            return True
        elif member is float and type(value) is float:
            return math.isfinite(value)
        elif member in (bool, str) and type(value) is member:
            return True
    return False


def describe_type(hint: Any, compact: bool = False) -> str:
    """``"an integer or None"`` (``compact``: ``"int|null"``, the ``--set`` spelling)."""
    words = {
        int: ("an integer", "int"),
        float: ("a number", "float"),
        bool: ("true or false", "bool"),
        str: ("text", "text"),
        type(None): ("None", "null"),
    }
    parts = []
    for member in _members(hint):
        if typing.get_origin(member) is Literal:
            options = typing.get_args(member)
            parts.append(
                "|".join(map(str, options))
                if compact
                else f"one of {', '.join(map(repr, options))}"
            )
        else:
            parts.append(words[member][compact])
    return ("|" if compact else " or ").join(parts)


# Registry ----------------------------------------------------------------------------------

COMMON_KEYS: tuple[str, ...] = ("sparsity", "granularity", "seed", "generator")
"""Config fields the command line sets by their own flags (``--sparsity`` ...), not by ``--set``."""


@dataclass(frozen=True)
class FinderEntry:
    """A registered method: its config class, ``build(gated, config) -> finder`` (usually the
    finder class) and ``fixed``: config values the method itself sets (not settable by name)."""

    config: type[FinderConfig]
    build: Callable[[GatedModel, Any], PathwayFinder]
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def settable(self) -> dict[str, Any]:
        """``{field: annotation}`` a ``--set KEY=VALUE`` may set."""
        return {
            name: hint
            for name, hint in field_types(self.config).items()
            if name not in COMMON_KEYS and name not in self.fixed
        }


_REGISTRY: dict[str, FinderEntry] = {}
F = TypeVar("F", bound=Callable[..., PathwayFinder])


def register_finder(
    name: str, config: type[FinderConfig], fixed: Mapping[str, Any] | None = None
) -> Callable[[F], F]:
    """Decorator: make a finder class or factory ``(gated, config) -> PathwayFinder`` available
    as ``neuralpath find --method NAME``, configured by ``config`` (``fixed``: see
    :class:`FinderEntry`)."""

    field_types(config)  # fails here, at import, for a type a setting cannot have

    def decorate(build: F) -> F:
        _REGISTRY[name] = FinderEntry(config, build, dict(fixed or {}))
        return build

    return decorate


def finder_names() -> list[str]:
    _load_builtin_finders()
    return sorted(_REGISTRY)


def finder_entry(name: str) -> FinderEntry:
    """The registry entry of method ``name``; :class:`InputError` naming the others if none."""
    _load_builtin_finders()
    if name not in _REGISTRY:
        raise InputError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def config_from_settings(
    name: str, common: Mapping[str, Any], settings: Mapping[str, Any]
) -> FinderConfig:
    """Method ``name``'s config from ``common`` options (``{"sparsity": 0.5, ...}``: applied
    where the method has that field; None means its default) and ``settings`` (``--set``
    pairs: each must be a settable field, else :class:`InputError` lists them with types)."""
    entry = finder_entry(name)
    allowed = entry.settable()
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        settable = ", ".join(f"{k} ({describe_type(h, compact=True)})" for k, h in allowed.items())
        raise InputError(
            f"{name} has no setting {', '.join(unknown)}; settable: {settable or 'none'}"
        )
    names = field_types(entry.config)
    values = {k: v for k, v in common.items() if v is not None and k in names}
    values.update(settings)
    values.update(entry.fixed)
    try:
        return entry.config(**values)
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from exc


def settings_help() -> str:
    """Every method's settings with their defaults, generated from the configs: its common flags
    (:data:`COMMON_KEYS`), the values it fixes, then its ``--set`` keys with their types, e.g.
    ``"cp-mct: --sparsity 0.9, --granularity element, selection=global|per_layer|per_type
    (global), ..."``.
    """
    parts = []
    for name in finder_names():
        entry = _REGISTRY[name]
        defaults = entry.config()
        types_ = field_types(entry.config)
        flags = [
            f"--{key}" if getattr(defaults, key) is None else f"--{key} {getattr(defaults, key)}"
            for key in types_
            if key in COMMON_KEYS
        ]
        fixed = [f"{key}={_show(value)} (fixed)" for key, value in entry.fixed.items()]
        settable = [
            f"{key}={describe_type(hint, compact=True)} ({_show(getattr(defaults, key))})"
            for key, hint in entry.settable().items()
        ]
        parts.append(f"{name}: {', '.join([*flags, *fixed, *settable]) or 'nothing to set'}")
    return "; ".join(parts)


def _show(value: object) -> str:
    """A default as the command line spells it (``null``, ``true``)."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    return str(value)


def build_finder(
    name: str, gated: GatedModel, config: FinderConfig | FinderOptions | None = None
) -> PathwayFinder:
    """The registered finder ``name`` on ``gated``, configured by its own config (None: its
    defaults; the values the method fixes, such as ``dgr-r``'s ``init``, replace the config's)
    or by :class:`FinderOptions` (converted by :func:`config_from_settings`)."""
    entry = finder_entry(name)
    if config is None:
        config = config_from_settings(name, {}, {})
    elif isinstance(config, FinderOptions):
        config = config.config_for(name)
    elif type(config) is not entry.config:
        raise InputError(
            f"{name} is configured by a {entry.config.__name__}, got {type(config).__name__}"
        )
    return entry.build(gated, dataclasses.replace(config, **entry.fixed))


@dataclass(frozen=True)
class FinderOptions:
    """Method-independent options, as the command line has them: converted to the method's own
    config by :meth:`config_for`. In Python, prefer the method's config (e.g. ``DGRConfig``).

    ``sparsity``/``granularity``/``seed``: None means the method's default. ``settings``:
    method-specific settings by name (``--set gamma=0.01``). ``verify_weights``: finders built
    from a trained artefact (``gencnp``) require it to be for these very weights; False only
    checks the layers, for deliberately changed copies (a sanity check's randomised model).
    """

    sparsity: float | None = None
    granularity: Granularity | None = None
    generator: str | None = None
    seed: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    verify_weights: bool = True

    def config_for(self, name: str) -> FinderConfig:
        """Method ``name``'s config with these options (see :func:`config_from_settings`)."""
        common = {
            "sparsity": self.sparsity,
            "granularity": self.granularity,
            "generator": self.generator,
            "seed": self.seed,
            "verify_weights": self.verify_weights,
        }
        return config_from_settings(name, common, self.settings)


def _load_builtin_finders() -> None:
    """Import the modules that register the built-in finders (they register on import)."""
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
