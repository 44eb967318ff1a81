"""Gating engine: find the gated layers of a classifier and run it with pathway masks applied.

A *gate site* is one call of one module whose output a pathway may mask. Most modules are
called once per forward, and their site is named after the module (``"features.1"``). A module
called several times per forward (torchvision ResNet reuses one ``relu`` per block) has one site
per call, named ``"<module>#<call>"`` (``"layer1.0.relu#1"``). The units of a site (what a
channel mask keeps or drops) are the channels of a conv activation ``[C, H, W]``, or the hidden
features of a token-wise MLP, on the last dimension of ``[T, D]`` (ViT) or of channels-last
``[H, W, C]`` (Swin, ConvNeXt): :attr:`GateSite.unit_dim`. The attention *heads* of a vision
transformer are sites too (``unit_types=("heads",)``, see :mod:`neuralpath.heads`): outputs
``[T, H, d]``, a unit is a head (channel) or a head at one token (element), and each element
unit spans the head's ``d`` dimensions (:attr:`GateSite.feature_dims`).

Every change to the model happens inside :meth:`GatedModel.gate` and is undone on exit, also when
the forward raises: hooks are removed, and the ``training`` flag of every module and the
``requires_grad`` flag of every parameter are restored.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from neuralpath.errors import InputError, LayerError, ShapeError
from neuralpath.heads import (
    attention_modules,
    head_style,
    mha_heads,
    mha_output_change,
    num_heads,
    projection,
    split_heads,
)
from neuralpath.interventions import Intervention, ZeroAblation

SiteKind = Literal["conv", "token", "fc", "custom", "head"]
UnitType = Literal["heads", "mlp"]
UNIT_TYPES: tuple[UnitType, ...] = ("heads", "mlp")
"""Unit types :func:`discover_sites` can select by name: attention heads (the output of each
head before the output projection) and MLP neurons (the hidden activation after a token-wise
linear layer of each block's MLP)."""
LayerKind = Literal["conv", "token", "fc"]

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Mish,
    nn.Softplus,
)
"""Module types (subclasses included, with or without children) whose outputs are gated by
default when they follow a conv or token-wise linear layer (or, optionally, an FC layer)."""

LayerSelection = Sequence[str] | tuple[type[nn.Module], ...] | None
"""``None`` (default rule), module names (``"features.1"`` or ``"layer1.0.relu#1"``), or types."""


@dataclass(frozen=True)
class GateSite:
    """One gateable call of one module.

    ``shape`` is the per-sample output shape: ``(C, H, W)`` after a conv, ``(C,)`` after an FC
    layer, ``(T, D)`` for the tokens of a transformer, ``(H, W, C)`` for channels-last blocks
    (Swin, ConvNeXt), ``(T, H, d)`` for attention heads. ``unit_dim`` is the index in ``shape``
    of the units a channel mask ``[B, units]`` selects: 0 (channels first), the last dimension
    after a token-wise linear, the heads (``H``) of an attention. ``feature_dims``: trailing
    dimensions of ``shape`` one element unit spans (a head's ``d``: 1; else 0), so element masks
    are ``[B, *element_shape]``.
    """

    name: str
    module_name: str
    call_index: int
    shape: tuple[int, ...]
    kind: SiteKind
    unit_dim: int = 0
    feature_dims: int = 0

    @property
    def units(self) -> int:
        """Number of units of channel granularity (channels, hidden features of tokens, heads)."""
        return self.shape[self.unit_dim]

    @property
    def element_shape(self) -> tuple[int, ...]:
        """Per-sample shape of an element mask: ``shape`` without its ``feature_dims``."""
        return self.shape[: len(self.shape) - self.feature_dims]

    @property
    def numel(self) -> int:
        """Number of units of element granularity per sample (scalars, or heads per token)."""
        return math.prod(self.element_shape)

    @property
    def spatial(self) -> bool:
        """Whether the site outputs channels-first maps ``[C, H, W]`` (not tokens, heads or
        channels-last maps)."""
        return len(self.shape) == 3 and self.unit_dim == 0 and self.feature_dims == 0

    def mask_shape(self, granularity: str) -> tuple[int, ...]:
        """Per-sample mask shape: ``(units,)`` (``"channel"``) or :attr:`element_shape`."""
        return (self.units,) if granularity == "channel" else self.element_shape

    def unit_view(self, values: Tensor) -> Tensor:
        """Channel values ``[B, units]`` viewed as ``[B, *element_shape]`` with size-1 dimensions
        (broadcastable to element values)."""
        view = [1] * (1 + len(self.element_shape))
        view[0], view[1 + self.unit_dim] = values.shape[0], self.units
        return values.reshape(view)

    def to_channels(self, element_values: Tensor) -> Tensor:
        """Element values ``[B, *element_shape]`` summed over every dimension but the units':
        ``[B, units]`` (over H×W of a conv map, over the tokens of a token site)."""
        dims = [1 + d for d in range(len(self.element_shape)) if d != self.unit_dim]
        return element_values.sum(dim=dims) if dims else element_values


@dataclass
class Recording:
    """Site outputs seen during a gated forward: the masked tensors later layers consumed.

    Each tensor is part of the autograd graph, so gradients with respect to it can be taken
    with :meth:`gradients`.
    """

    activations: dict[str, Tensor] = field(default_factory=dict)

    def gradients(self, output: Tensor, *, retain_graph: bool = False) -> dict[str, Tensor]:
        """``d output.sum() / d activation`` for every recorded site."""
        names = list(self.activations)
        grads = torch.autograd.grad(
            output.sum(), [self.activations[n] for n in names], retain_graph=retain_graph
        )
        return dict(zip(names, grads, strict=True))


@dataclass(frozen=True)
class _Call:
    """One traced module call: its ``index`` among the calls of module ``name``, the per-sample
    output ``shape`` (None: not a tensor with the inputs' batch dimension, e.g. Swin V2's
    position-bias MLP run on a coordinate table), ``layer`` (kind of an outermost conv/linear
    layer), whether the module is an outermost activation, and whether the call is an attention's
    (``shape``: its heads ``(T, H, d)``)."""

    name: str
    index: int
    shape: tuple[int, ...] | None
    layer: LayerKind | None
    activation: bool
    heads: bool = False


def _is_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd | nn.Linear)


def _is_typed(module: nn.Module) -> bool:
    return _is_layer(module) or isinstance(module, ACTIVATION_TYPES)


def _outermost(model: nn.Module, wanted: Callable[[nn.Module], bool]) -> dict[str, nn.Module]:
    """Modules matching ``wanted`` that are not inside another matching module (a conv that owns
    a padding child, or a conv wrapping a conv, is one layer: its own output is what counts)."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():  # parents come before their children
        parts = name.split(".") if name else []
        ancestors = [".".join(parts[:i]) for i in range(len(parts))]
        if wanted(module) and not any(a in found for a in ancestors):
            found[name] = module
    return found


def _layer_kind(module: nn.Module, shape: tuple[int, ...] | None) -> LayerKind:
    """``conv``; ``token`` for a linear applied per token or position (output ``[B, ..., D]``,
    i.e. a 1x1 conv of token models); ``fc`` for a linear on flat features ``[B, D]``."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    return "token" if shape is not None and len(shape) >= 2 else "fc"


def _trace_calls(
    model: nn.Module,
    example_input: Tensor,
    selected: set[str],
    attention: Mapping[str, nn.Module] | None = None,
) -> list[_Call]:
    """Run one forward in eval mode and list the calls of the outermost conv/linear layers and
    activation modules (by type, whether or not they have children), of ``selected``, and the
    heads of each call of the ``attention`` modules, in the order they return. A batch of one
    is run twice over, so that outputs that do not depend on the sample (no batch dimension)
    can be told apart."""
    if example_input.shape[0] == 1:
        example_input = torch.cat([example_input, example_input])
    batch = example_input.shape[0]
    typed = _outermost(model, _is_typed)
    traced = {name: module for name, module in model.named_modules() if name in selected}
    traced.update(typed)
    calls: list[_Call] = []
    counts: Counter[str] = Counter()

    def make_hook(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, _inputs: object, output: object) -> None:
            shape = None
            if isinstance(output, Tensor) and output.dim() > 0 and output.shape[0] == batch:
                shape = tuple(output.shape[1:])
            layer = _layer_kind(module, shape) if name in typed and _is_layer(module) else None
            activation = name in typed and isinstance(module, ACTIVATION_TYPES)
            calls.append(_Call(name, counts[name], shape, layer, activation))
            counts[name] += 1

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in traced.items()]

    def record_heads(name: str, heads: Tensor) -> None:
        if heads.shape[0] != batch:
            raise LayerError(
                f"heads of attention {name!r} do not have the inputs' batch dimension first "
                f"(got {list(heads.shape)}): they cannot be gated"
            )
        calls.append(_Call(name, counts[name], tuple(heads.shape[1:]), None, False, heads=True))
        counts[name] += 1

    try:
        for name, module in (attention or {}).items():
            handles.extend(_head_tracer(name, module, record_heads))
        with preserved_state(model), torch.no_grad():
            model.eval()
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _head_tracer(
    name: str, module: nn.Module, record: Callable[[str, Tensor], None]
) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks handing ``record`` the heads ``[B, ..., H, d]`` of each call of attention ``name``."""
    if head_style(module) == "mha":
        assert isinstance(module, nn.MultiheadAttention)
        mha = module

        def mha_hook(
            _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _output: object
        ) -> None:
            record(name, mha_heads(mha, args, kwargs, name).detach())

        return [module.register_forward_hook(mha_hook, with_kwargs=True)]
    seen: list[Tensor] = []

    def proj_hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        if args and isinstance(args[0], Tensor):
            seen.append(args[0])

    def attention_hook(_module: nn.Module, _args: object, _output: object) -> None:
        if len(seen) != 1:
            raise LayerError(
                f"attention {name!r} called its output projection '{name}.proj' {len(seen)} "
                "times as a module (expected once per call): its heads cannot be gated"
            )
        record(name, split_heads(seen.pop(), num_heads(module), name).detach())

    return [
        projection(module).register_forward_pre_hook(proj_hook),
        module.register_forward_hook(attention_hook),
    ]


def _unit_dim(call: _Call, layer: _Call | None) -> int:
    """Units on the last dimension when ``call`` keeps the layout of a token-wise linear
    ``layer`` (its most recent conv/linear call), else on the first."""
    shape = _checked_shape(call)
    if layer is not None and layer.layer == "token" and shape == layer.shape:
        return len(shape) - 1
    return 0


def _checked_shape(call: _Call) -> tuple[int, ...]:
    if call.shape is None or len(call.shape) == 0:
        raise LayerError(
            f"layer {call.name!r} does not output a [B, C, ...] tensor (B: the inputs' batch)"
        )
    return call.shape


_Chosen = tuple[_Call, SiteKind, int]
"""A call chosen as a gate site, with the site's kind and unit dimension."""


def _default_sites(calls: Sequence[_Call], include_fc: bool) -> list[_Chosen]:
    """Activations after a conv or token-wise linear (or FC, with ``include_fc``); else every
    conv output (models with functional activations)."""
    chosen: list[_Chosen] = []
    layer: _Call | None = None
    for call in (call for call in calls if call.shape is not None):
        kind = layer.layer if layer is not None else None
        if call.layer is not None:
            layer = call
        elif call.activation and kind is not None and (kind != "fc" or include_fc):
            chosen.append((call, kind, _unit_dim(call, layer)))
    if not chosen:
        chosen = [(c, "conv", 0) for c in calls if c.layer == "conv" and c.shape is not None]
    if not chosen:
        raise LayerError(_no_sites_message(calls))
    return chosen


def _no_sites_message(calls: Sequence[_Call]) -> str:
    after_fc, layer = 0, None
    for call in (call for call in calls if call.shape is not None):
        layer = call.layer or layer
        after_fc += call.activation and layer == "fc"
    hint = (
        f"; pass include_fc=True to gate the {after_fc} activation call(s) after "
        "fully connected layers"
        if after_fc
        else ""
    )
    return (
        "the model has no gateable layers: no activation module after a conv or token-wise "
        f"linear layer and no conv layer was found{hint}; or name the layers to gate (layers=...)"
    )


def _selected_sites(calls: Sequence[_Call], picked: Callable[[_Call], bool]) -> list[_Chosen]:
    """The calls ``picked`` by the user's layer selection, as ``custom`` sites."""
    chosen: list[_Chosen] = []
    layer: _Call | None = None
    for call in calls:
        if call.layer is not None and call.shape is not None:
            layer = call
        if picked(call):
            chosen.append((call, "custom", _unit_dim(call, layer)))
    return chosen


def _unit_type_sites(
    model: nn.Module, example_input: Tensor, unit_types: Sequence[str], include_fc: bool
) -> tuple[list[_Chosen], list[_Call]]:
    """The sites of the requested :data:`UNIT_TYPES`, in forward order, and the traced calls."""
    if isinstance(unit_types, str) or not isinstance(unit_types, Sequence) or not unit_types:
        raise InputError(f"unit_types must be a non-empty list of {UNIT_TYPES}, got {unit_types!r}")
    unknown = [u for u in unit_types if u not in UNIT_TYPES]
    if unknown:
        raise InputError(f"unknown unit type(s) {unknown}; expected some of {UNIT_TYPES}")
    attention = attention_modules(model) if "heads" in unit_types else {}
    if "heads" in unit_types and not attention:
        raise LayerError(
            "unit type 'heads': the model has no attention heads (no nn.MultiheadAttention and "
            "no module with an integer num_heads and an nn.Linear 'proj')"
        )
    calls = _trace_calls(model, example_input, set(), attention)
    if attention and not any(call.heads for call in calls):
        raise LayerError(
            f"unit type 'heads': attention module(s) {sorted(attention)[:3]} were never called as "
            "modules in the forward (a fused path such as nn.TransformerEncoderLayer's bypasses "
            "them): their heads cannot be gated"
        )
    mlp: dict[tuple[str, int], int] = {}
    if "mlp" in unit_types:
        try:
            default = _default_sites(calls, include_fc)
        except LayerError:
            default = []
        mlp = {(c.name, c.index): dim for c, kind, dim in default if kind == "token"}
        if not mlp:
            raise LayerError(
                "unit type 'mlp': the model has no MLP neurons (no activation module after a "
                "token-wise linear layer, i.e. on [B, T, D] tokens)"
            )
    chosen: list[_Chosen] = []
    for call in calls:
        if call.heads:
            chosen.append((call, "head", len(_checked_shape(call)) - 2))
        elif (call.name, call.index) in mlp:
            chosen.append((call, "token", mlp[call.name, call.index]))
    return chosen, calls


def discover_sites(
    model: nn.Module,
    example_input: Tensor,
    *,
    layers: LayerSelection = None,
    include_fc: bool = False,
    unit_types: Sequence[UnitType] | None = None,
) -> list[GateSite]:
    """List the gate sites of ``model`` in forward order.

    Conv and linear layers and activation modules are recognised by type (subclasses too, with
    or without children; a module inside another recognised module is part of it). Default
    rule: every call of an activation module (:data:`ACTIVATION_TYPES`) whose most recent
    preceding conv/linear call was a conv, a *token-wise* linear (applied per token or
    position, output ``[B, ..., D]``: the hidden MLP activations of ViT, Swin, ConvNeXt; units
    on the last dimension), or, with ``include_fc``, a linear on flat features ``[B, D]``. A
    model without such activations (``F.relu`` inside ``forward``) is gated at its conv
    outputs instead; ``layers`` names the modules (or types) to gate instead of the rule (a
    module's output includes any functional activation applied inside it). ``unit_types``
    (instead of ``layers``) selects transformer units by type: ``"heads"`` (every call of every
    attention module, see :mod:`neuralpath.heads`) and/or ``"mlp"`` (the default rule's sites
    after token-wise linears); a type the model lacks is a :class:`LayerError`.

    ``example_input``: ``[B, C, H, W]``, any batch size; one forward is run in eval mode.
    """
    return _discover(model, example_input, layers, include_fc, unit_types)[0]


def _discover(
    model: nn.Module,
    example_input: Tensor,
    layers: LayerSelection,
    include_fc: bool,
    unit_types: Sequence[str] | None = None,
) -> tuple[list[GateSite], dict[str, int]]:
    """The sites of :func:`discover_sites` and how many times one forward calls each gated
    module."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if unit_types is not None:
        if layers is not None:
            raise InputError("pass either layers or unit_types, not both")
        chosen, calls = _unit_type_sites(model, example_input, unit_types, include_fc)
        counts = Counter(call.name for call in calls)
        sites = _assign_names(chosen, counts)
        return sites, {site.module_name: counts[site.module_name] for site in sites}
    requested, types = _parse_layers(model, layers)
    if types is not None:
        selected = set(_outermost(model, lambda module: isinstance(module, types)))
    else:
        selected = set(requested or ())
    calls = _trace_calls(model, example_input, selected)
    counts = Counter(call.name for call in calls)
    if requested is not None:
        _check_requested(requested, counts)
        chosen = _selected_sites(
            calls, lambda c: c.name in requested and requested[c.name] in (None, c.index)
        )
    elif types is not None:
        chosen = _selected_sites(calls, lambda c: c.name in selected)
    else:
        chosen = _default_sites(calls, include_fc)
    if not chosen:
        raise LayerError("no layer was selected: the selection matches no module call")
    sites = _assign_names(chosen, counts)
    return sites, {site.module_name: counts[site.module_name] for site in sites}


def _parse_layers(
    model: nn.Module, layers: LayerSelection
) -> tuple[dict[str, int | None] | None, tuple[type[nn.Module], ...] | None]:
    """Split a selection into requested module names (-> call index or None for all) or types."""
    if layers is None:
        return None, None
    if not isinstance(layers, tuple | list):
        raise InputError("layers must be None, a list of module names, or a tuple of module types")
    if all(isinstance(item, type) and issubclass(item, nn.Module) for item in layers) and layers:
        return None, tuple(layers)
    if not all(isinstance(item, str) for item in layers):
        raise InputError("layers must be all module names (str) or all nn.Module subclasses")
    named = dict(model.named_modules())
    requested: dict[str, int | None] = {}
    for item in layers:
        module_name, _, call = str(item).partition("#")
        if module_name not in named or module_name == "":
            close = difflib.get_close_matches(module_name, list(named), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise LayerError(f"unknown layer {item!r}{hint}")
        if call and not call.isdigit():
            raise LayerError(f"bad call index in layer {item!r}: expected '<name>#<int>'")
        requested[module_name] = int(call) if call else None
    return requested, None


def _check_requested(requested: Mapping[str, int | None], counts: Counter[str]) -> None:
    for module_name, call in requested.items():
        if counts[module_name] == 0:
            raise LayerError(f"layer {module_name!r} is never called in the forward pass")
        if call is not None and call >= counts[module_name]:
            raise LayerError(
                f"layer {module_name!r} is called {counts[module_name]} time(s); no call #{call}"
            )


def _assign_names(chosen: Sequence[_Chosen], counts: Counter[str]) -> list[GateSite]:
    return [
        GateSite(
            name=call.name if counts[call.name] == 1 else f"{call.name}#{call.index}",
            module_name=call.name,
            call_index=call.index,
            shape=_checked_shape(call),
            kind=kind,
            unit_dim=unit_dim,
            feature_dims=1 if kind == "head" else 0,
        )
        for call, kind, unit_dim in chosen
    ]


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[nn.Module]:
    """Restore every module's ``training`` flag and every parameter's ``requires_grad`` on exit."""
    modes = [(module, module.training) for module in model.modules()]
    grads = [(param, param.requires_grad) for param in model.parameters()]
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode
        for param, flag in grads:
            param.requires_grad_(flag)


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no parameter gradients inside; the original state is restored on exit."""
    with preserved_state(model):
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        yield model


def _broadcast_mask(mask: Tensor, output: Tensor, site: GateSite) -> Tensor:
    """Shape a mask ``[B|1, units]`` (channel) or ``[B|1, *site.element_shape]`` (element) to
    ``output``.

    A channel mask is broadcast over every dimension but the site's ``unit_dim``: over H×W of
    ``[B, C, H, W]``, over the tokens of ``[B, T, D]``, over H×W of channels-last ``[B, H, W, C]``,
    over the tokens and head dimensions of heads ``[B, T, H, d]``; an element mask of heads
    ``[B, T, H]`` over the head dimensions.
    """
    batch = output.shape[0]
    if mask.shape[0] not in (1, batch):
        raise ShapeError(
            f"mask for layer {site.name!r} has batch size {mask.shape[0]}, inputs have {batch}"
        )
    per_sample = tuple(mask.shape[1:])
    unit_axis = 1 + site.unit_dim
    units = output.shape[unit_axis] if unit_axis < output.dim() else None
    elements = tuple(output.shape[1 : output.dim() - site.feature_dims])
    if per_sample == elements:
        shaped = mask.reshape(*mask.shape, *[1] * site.feature_dims)
    elif units is not None and per_sample == (units,):
        view = [1] * output.dim()
        view[0], view[unit_axis] = mask.shape[0], units
        shaped = mask.reshape(view)
    else:
        raise ShapeError(
            f"mask for layer {site.name!r} has shape {list(mask.shape)}; expected "
            f"[B, {units}] (channel) or [B, {', '.join(map(str, elements))}] (element)"
        )
    return shaped.to(device=output.device, dtype=output.dtype)


def _calls_per_forward(
    sites: Sequence[GateSite], given: Mapping[str, int] | None
) -> dict[str, int | None]:
    """Calls per forward of each gated module: ``given`` (checked against the sites), else 1
    for a module whose site carries its plain name and None (several, unknown) for others."""
    if given is None:
        plain = {site.module_name for site in sites if site.name == site.module_name}
        return {site.module_name: 1 if site.module_name in plain else None for site in sites}
    calls: dict[str, int | None] = {}
    for site in sites:
        count = given.get(site.module_name)
        if count is None or site.call_index >= count:
            raise LayerError(
                f"calls_per_forward has {count} call(s) of layer {site.module_name!r}; "
                f"its site {site.name!r} is call #{site.call_index}"
            )
        calls[site.module_name] = int(count)
    return calls


class GatedModel:
    """A classifier together with its gate sites.

    >>> gm = GatedModel.discover(model, torch.zeros(1, 1, 32, 32))
    >>> with gm.gate(pathway):          # masks applied to every forward inside
    ...     logits = model(x)
    """

    def __init__(
        self,
        model: nn.Module,
        sites: Sequence[GateSite],
        input_shape: Sequence[int],
        intervention: Intervention | None = None,
        *,
        calls_per_forward: Mapping[str, int] | None = None,
    ):
        """``calls_per_forward``: how many times one forward of ``model`` calls each gated module
        (:meth:`discover` traces it). Without it, a module whose site carries its plain name is
        called once; others an unknown number of times (see :meth:`gate`)."""
        if not sites:
            raise LayerError("a GatedModel needs at least one gate site")
        names = [site.name for site in sites]
        if len(set(names)) != len(names):
            raise LayerError(f"duplicate gate sites: {names}")
        heads = {site.module_name for site in sites if site.kind == "head"}
        mixed = sorted(heads & {site.module_name for site in sites if site.kind != "head"})
        if mixed:
            raise LayerError(f"module(s) {mixed} have head sites and other sites: gate one of them")
        self.model = model
        self.sites: tuple[GateSite, ...] = tuple(sites)
        self.input_shape: tuple[int, ...] = tuple(input_shape)
        self.intervention: Intervention = intervention or ZeroAblation()
        self.intervention.check(self.sites, self.input_shape)
        self._by_name = {site.name: site for site in self.sites}
        self.calls_per_forward: dict[str, int | None] = _calls_per_forward(
            self.sites, calls_per_forward
        )
        self._runs_channels_last: bool | None = None

    def with_intervention(self, intervention: Intervention) -> GatedModel:
        """The same model and sites with dropped units replaced by ``intervention`` (a new
        object; this one keeps its own). See :mod:`neuralpath.interventions`."""
        gated = GatedModel(self.model, self.sites, self.input_shape, intervention)
        gated.calls_per_forward = dict(self.calls_per_forward)
        gated._runs_channels_last = self._runs_channels_last
        return gated

    @classmethod
    def discover(
        cls,
        model: nn.Module,
        example_input: Tensor,
        *,
        layers: LayerSelection = None,
        include_fc: bool = False,
        unit_types: Sequence[UnitType] | None = None,
    ) -> GatedModel:
        """Discover sites with :func:`discover_sites`; ``example_input`` fixes the input shape."""
        check_inputs(example_input)
        sites, calls = _discover(model, example_input, layers, include_fc, unit_types)
        return cls(model, sites, example_input.shape[1:], calls_per_forward=calls)

    @property
    def site_names(self) -> list[str]:
        return [site.name for site in self.sites]

    def site(self, name: str) -> GateSite:
        try:
            return self._by_name[name]
        except KeyError:
            raise LayerError(f"unknown gate site {name!r}; sites are {self.site_names}") from None

    @property
    def device(self) -> torch.device:
        first = next(self.model.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def runs_channels_last(self) -> bool:
        """Whether the model accepts channels-last inputs ``[B, C, H, W]``.

        Probed once with a zero batch of 2 and remembered: models that ``view`` activations
        (``x.view(B, -1)`` after the convs) or check contiguity raise on channels-last tensors;
        any error in the probe means no (a model that fails on every input fails again, with
        its own error, in the caller's forward). Inputs that are not 4-D mean no.
        """
        if self._runs_channels_last is None:
            ok = len(self.input_shape) == 3
            if ok:
                dtype = next((p.dtype for p in self.model.parameters()), torch.float32)
                probe = torch.zeros(2, *self.input_shape, dtype=dtype, device=self.device)
                try:
                    with torch.no_grad(), self.gate():
                        self.model(channels_last(probe))
                except Exception:  # any failure means: keep the model's layout
                    ok = False
            self._runs_channels_last = ok
        return self._runs_channels_last

    def fast_layout(self, inputs: Tensor) -> Tensor:
        """``inputs`` copied channels-last when they are 4-D and the model accepts that
        (:meth:`runs_channels_last`), else unchanged: on CPU, channels-last convolutions and
        pooling run faster (PyTorch's NCHW max-pool kernel is slow), same values to float
        rounding."""
        if inputs.dim() == 4 and self.runs_channels_last():
            return channels_last(inputs)
        return inputs

    def check_inputs(self, inputs: Tensor) -> None:
        """Raise :class:`InputError` unless ``inputs`` is a finite float ``[B, *input_shape]`` on
        the model's device."""
        check_inputs(inputs, self.input_shape)
        if inputs.device != self.device:
            raise InputError(f"inputs are on {inputs.device} but the model is on {self.device}")

    @contextmanager
    def gate(
        self, masks: Mapping[str, Tensor] | None = None, *, record: bool = False
    ) -> Iterator[Recording]:
        """Apply ``masks`` (site name -> mask) to every forward of the model inside the block.

        Masks are ``[B, units]`` (channel: broadcast over H×W or tokens, see
        :attr:`GateSite.unit_dim`) or ``[B, *site.element_shape]`` (element: ``site.shape``, less
        a head's dimensions), or with a batch dimension of 1 to share one mask across the batch;
        binary or continuous, differentiable with respect to the masks. A masked site outputs
        ``m ⊙ a + (1 − m) ⊙ r`` with ``r`` from :attr:`intervention` (0 by default). Sites
        without a mask pass through unchanged. Inside the block the model is in eval mode with
        parameter gradients off; everything is restored on exit. With ``record``, the yielded
        :class:`Recording` holds each site's (masked) output of the most recent forward; with
        gradients enabled, each is part of the autograd graph (a leaf when nothing upstream
        requires gradients).

        Calls are matched to sites by counting them within each whole-model forward. A part of
        the model run on its own (``model.features(x)``) is gated too where that is unambiguous:
        a module called once per forward gets its site's mask on every call. A masked or
        recorded module called several times per forward, called outside a whole forward or
        more times than :attr:`calls_per_forward` says, raises :class:`LayerError`.
        """
        masks = dict(masks or {})
        for name in masks:
            self.site(name)
        hooks = _GateHooks(self, masks, record)
        modules = dict(self.model.named_modules())
        handles = []
        with frozen(self.model):
            try:
                handles.append(self.model.register_forward_pre_hook(hooks.before_forward))
                handles.append(
                    self.model.register_forward_hook(hooks.after_forward, always_call=True)
                )
                for module_name, call_sites in hooks.by_module.items():
                    if module_name not in modules:
                        raise LayerError(f"module {module_name!r} is not in the model")
                    handles.append(hooks.register(modules[module_name], module_name, call_sites))
                yield hooks.recording
            finally:
                for handle in handles:
                    handle.remove()

    def forward(self, inputs: Tensor, masks: Mapping[str, Tensor] | None = None) -> Tensor:
        """Logits ``[B, K]`` of the pathway model (the full model when ``masks`` is None)."""
        self.check_inputs(inputs)
        with self.gate(masks):
            logits: Tensor = self.model(inputs)
            return logits

    def record(
        self, inputs: Tensor, masks: Mapping[str, Tensor] | None = None
    ) -> tuple[Tensor, Recording]:
        """One forward returning ``(logits [B, K], recording)``; activations stay in the graph."""
        self.check_inputs(inputs)
        with self.gate(masks, record=True) as recording:
            logits = self.model(inputs)
        return logits, recording


class _GateHooks:
    """The state and hooks of one :meth:`GatedModel.gate` block.

    The root's forward pre-hook starts a whole forward: it resets the per-module call counters
    and, for an intervention with donors, runs one ungated forward on the donors of these inputs
    (recomputed only when the inputs change) whose site outputs become the replacements. The
    root's forward hook (also run when the forward raises) ends it; ``depth`` counts the whole
    forwards in progress (the donor forward runs inside one).
    """

    def __init__(self, gated: GatedModel, masks: dict[str, Tensor], record: bool):
        self.gated = gated
        self.masks = masks
        self.record = record
        self.recording = Recording()
        self.by_module: dict[str, dict[int, GateSite]] = {}
        for site in gated.sites:
            self.by_module.setdefault(site.module_name, {})[site.call_index] = site
        self.calls: Counter[str] = Counter()
        self.depth = 0
        self.in_donor_forward = False
        self.donor_inputs: tuple[Tensor, int] | None = None
        self.donor_activations: dict[str, Tensor] = {}

    def before_forward(self, _module: nn.Module, args: tuple[object, ...]) -> None:
        self.depth += 1
        self.calls.clear()
        if self.in_donor_forward or not self.masks or not self.gated.intervention.needs_donors:
            return
        inputs = args[0] if args else None
        if not isinstance(inputs, Tensor):
            raise InputError("resample ablation needs the model's input tensor as first argument")
        if (
            self.donor_inputs is not None
            and self.donor_inputs[0] is inputs
            and self.donor_inputs[1] == inputs._version
        ):
            return
        self.donor_activations = {}
        self.in_donor_forward = True
        try:
            with torch.no_grad():
                self.gated.model(self.gated.intervention.donors(inputs.detach()))
        finally:
            self.in_donor_forward = False
            self.calls.clear()
        self.donor_inputs = (inputs, inputs._version)

    def after_forward(self, _module: nn.Module, _args: object, _output: object) -> None:
        # max: a pre-hook registered before ours may have raised before ours ran
        self.depth = max(self.depth - 1, 0)

    def _site_of_call(self, module_name: str, call_sites: dict[int, GateSite]) -> GateSite | None:
        """The site of this call of ``module_name`` (None: not gated); raises when a masked or
        recorded module's call cannot be matched to its site."""
        index = self.calls[module_name]
        self.calls[module_name] += 1
        traced = self.gated.calls_per_forward.get(module_name)
        if self.depth == 0 and traced == 1:
            return call_sites.get(0)
        if self.depth > 0 and (traced is None or index < traced):
            return call_sites.get(index)
        if not self.record and not any(site.name in self.masks for site in call_sites.values()):
            return None
        if self.depth == 0:
            raise LayerError(
                f"layer {module_name!r} is called {traced or 'several'} times per forward of the "
                "whole model, so a call of a part of the model cannot be matched to its gate "
                "sites: run the whole model inside gate()"
            )
        raise LayerError(
            f"layer {module_name!r} was called {index + 1} times in one forward; discovery "
            f"traced {traced}: the gate sites no longer match the model (discover them again)"
        )

    def _replacement(self, site: GateSite, output: Tensor) -> Tensor | None:
        intervention = self.gated.intervention
        if not intervention.needs_donors:
            return intervention.replacement(site, output)
        donor = self.donor_activations.get(site.name)
        if self.depth == 0 or donor is None or donor.shape[0] != output.shape[0]:
            raise LayerError(
                f"{intervention.name} ablation has no donor activation of layer {site.name!r} "
                "for this batch: run the whole model inside gate(), not a part of it"
            )
        return donor

    def _apply(self, site: GateSite, output: Tensor) -> Tensor:
        mask = self.masks.get(site.name)
        if mask is None:
            return output
        shaped = _broadcast_mask(mask, output, site)
        replacement = self._replacement(site, output)
        if replacement is None:
            return output * shaped
        # lerp is one fused kernel, exact at m = 1 (a) and m = 0 (r)
        return torch.lerp(replacement.expand_as(output), output, shaped)

    def _gated(self, site: GateSite, output: Tensor) -> Tensor | None:
        """The site's output with its mask applied (recorded when recording), or None in the
        donor forward (the output is kept as the donor activation)."""
        if self.in_donor_forward:
            self.donor_activations[site.name] = output.detach()
            return None
        gated = self._apply(site, output)
        if self.record:
            if torch.is_grad_enabled() and not gated.requires_grad:
                # Nothing upstream needs gradients: make the site a leaf so that
                # gradients with respect to it can still be taken.
                gated = gated.detach().requires_grad_()
            self.recording.activations[site.name] = gated
        return gated

    def _touches(self, site: GateSite) -> bool:
        """Whether this forward reads ``site``'s output (masked, recorded or donor)."""
        return site.name in self.masks or self.record or self.in_donor_forward

    def register(
        self, module: nn.Module, module_name: str, call_sites: dict[int, GateSite]
    ) -> torch.utils.hooks.RemovableHandle:
        """The hook serving ``call_sites`` of ``module`` (see :mod:`neuralpath.heads` for heads)."""
        if not any(site.kind == "head" for site in call_sites.values()):
            return module.register_forward_hook(self.site_hook(module_name, call_sites))
        style = head_style(module)
        if style == "mha":
            assert isinstance(module, nn.MultiheadAttention)
            return module.register_forward_hook(
                self.mha_hook(module, module_name, call_sites), with_kwargs=True
            )
        if style == "projection":
            return projection(module).register_forward_pre_hook(
                self.projection_hook(module, module_name, call_sites)
            )
        raise LayerError(f"module {module_name!r} has head sites but is not an attention module")

    def site_hook(
        self, module_name: str, call_sites: dict[int, GateSite]
    ) -> Callable[[nn.Module, object, object], Tensor | None]:
        def hook(_module: nn.Module, _inputs: object, output: object) -> Tensor | None:
            site = self._site_of_call(module_name, call_sites)
            if site is None:
                return None
            if not isinstance(output, Tensor):
                raise LayerError(f"layer {site.name!r} did not return a tensor")
            return self._gated(site, output)

        return hook

    def mha_hook(
        self, mha: nn.MultiheadAttention, module_name: str, call_sites: dict[int, GateSite]
    ) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any], object], object]:
        """Heads of ``nn.MultiheadAttention``: recomputed, the output corrected by
        ``W_o (h' − h)`` (exactly 0 where every head is kept; see :mod:`neuralpath.heads`)."""

        def hook(
            _module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: object
        ) -> object:
            site = self._site_of_call(module_name, call_sites)
            if site is None or not self._touches(site):
                return None
            heads = mha_heads(mha, args, kwargs, site.name)
            # a distinct node, so that d output / d gated is W_o even where nothing is masked
            gated = self._gated(site, heads.view_as(heads))
            if gated is None:
                return None
            if not isinstance(output, tuple) or not isinstance(output[0], Tensor):
                raise LayerError(f"attention {site.name!r} did not return (output, weights)")
            return (output[0] + mha_output_change(mha, gated - heads), *output[1:])

        return hook

    def projection_hook(
        self, attention: nn.Module, module_name: str, call_sites: dict[int, GateSite]
    ) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...] | None]:
        """Heads read as the input of the attention's ``proj`` and replaced by the gated heads."""
        heads = num_heads(attention)

        def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            site = self._site_of_call(module_name, call_sites)
            if site is None or not self._touches(site):
                return None
            if not args or not isinstance(args[0], Tensor):
                raise LayerError(f"the output projection of {site.name!r} got no tensor input")
            gated = self._gated(site, split_heads(args[0], heads, site.name))
            return None if gated is None else (gated.flatten(-2), *args[1:])

        return hook


def channels_last(inputs: Tensor) -> Tensor:
    """A copy of ``inputs`` ``[B, C, H, W]`` stored channels-last (NHWC).

    Unlike ``inputs.contiguous(memory_format=torch.channels_last)``, this also works for one
    channel, where that call returns the tensor unchanged (its layout is ambiguous) and the
    convolutions that follow keep NCHW. On CPU, channels-last convolutions and pooling avoid the
    slow NCHW max-pool kernel.
    """
    if inputs.dim() != 4:
        raise ShapeError(f"channels-last needs [B, C, H, W] inputs, got shape {list(inputs.shape)}")
    return torch.empty_like(inputs, memory_format=torch.channels_last).copy_(inputs)


def check_inputs(inputs: object, input_shape: Sequence[int] | None = None) -> None:
    """Raise :class:`InputError` unless ``inputs`` is a finite floating ``[B, C, H, W]`` tensor."""
    if not isinstance(inputs, Tensor):
        raise InputError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if not inputs.is_floating_point():
        raise InputError(f"inputs must be a floating-point tensor, got dtype {inputs.dtype}")
    if inputs.dim() < 2:
        raise InputError(f"inputs must have a batch dimension, got shape {list(inputs.shape)}")
    if inputs.shape[0] == 0:
        raise InputError("inputs are an empty batch")
    if inputs.device.type == "meta":
        raise InputError("inputs are on the meta device: they hold no values")
    if input_shape is not None and tuple(inputs.shape[1:]) != tuple(input_shape):
        raise InputError(
            f"inputs must have shape [B, {', '.join(map(str, input_shape))}], "
            f"got {list(inputs.shape)}"
        )
    if not torch.isfinite(inputs).all():
        raise InputError("inputs contain NaN or Inf values")
