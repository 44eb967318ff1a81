"""Gating engine: find the gated layers of a classifier and run it with pathway masks applied.

A *gate site* is one call of one module whose output a pathway may mask. Most modules are
called once per forward, and their site is named after the module (``"features.1"``). A module
called several times per forward (torchvision ResNet reuses one ``relu`` per block) has one site
per call, named ``"<module>#<call>"`` (``"layer1.0.relu#1"``).

Every change to the model happens inside :meth:`GatedModel.gate` and is undone on exit, also when
the forward raises: hooks are removed, and the ``training`` flag of every module and the
``requires_grad`` flag of every parameter are restored.
"""

from __future__ import annotations

import difflib
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from neuralpath.errors import InputError, LayerError, ShapeError
from neuralpath.interventions import Intervention, ZeroAblation

SiteKind = Literal["conv", "fc", "custom"]

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
"""Module types whose outputs are gated by default (when they follow a conv or, optionally, FC)."""

LayerSelection = Sequence[str] | tuple[type[nn.Module], ...] | None
"""``None`` (default rule), module names (``"features.1"`` or ``"layer1.0.relu#1"``), or types."""


@dataclass(frozen=True)
class GateSite:
    """One gateable call of one module.

    ``shape`` is the per-sample output shape, ``(C, H, W)`` for conv layers or ``(C,)`` for FC.
    """

    name: str
    module_name: str
    call_index: int
    shape: tuple[int, ...]
    kind: SiteKind

    @property
    def units(self) -> int:
        """Number of channels (the units of channel granularity)."""
        return self.shape[0]

    @property
    def numel(self) -> int:
        """Number of scalars per sample (the units of element granularity)."""
        return math.prod(self.shape)


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


def _leaf_kind(module: nn.Module) -> SiteKind | None:
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "fc"
    return None


def _trace_calls(
    model: nn.Module, example_input: Tensor, names: set[str] | None
) -> list[tuple[str, nn.Module, tuple[int, ...] | None]]:
    """Run one forward and list ``(module_name, module, per-sample output shape)`` per call.

    Traces leaf modules, plus the modules in ``names`` when given.
    """
    calls: list[tuple[str, nn.Module, tuple[int, ...] | None]] = []
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, _inputs: object, output: object) -> None:
            shape = tuple(output.shape[1:]) if isinstance(output, Tensor) else None
            calls.append((name, module, shape))

        return hook

    for name, module in model.named_modules():
        is_leaf = next(module.children(), None) is None
        if (names is None and is_leaf) or (names is not None and (is_leaf or name in names)):
            handles.append(module.register_forward_hook(make_hook(name)))
    try:
        with preserved_state(model), torch.no_grad():
            model.eval()
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def discover_sites(
    model: nn.Module,
    example_input: Tensor,
    *,
    layers: LayerSelection = None,
    include_fc: bool = False,
) -> list[GateSite]:
    """List the gate sites of ``model`` in forward order.

    Default rule: every call of an activation module (:data:`ACTIVATION_TYPES`) whose most recent
    preceding conv/linear call was a conv (or a linear, with ``include_fc``). A model whose
    activations are functional (``F.relu`` inside ``forward``) has no such modules; it is gated
    at its conv outputs instead, or at the modules named in ``layers`` (a module's output
    includes any functional activation applied inside it).

    ``example_input``: ``[B, C, H, W]``, any batch size; one forward is run in eval mode.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = dict(model.named_modules())
    requested: dict[str, int | None] = {}
    if layers is not None and not isinstance(layers, tuple | list):
        raise InputError("layers must be None, a list of module names, or a tuple of module types")
    by_name = layers is not None and all(isinstance(item, str) for item in layers)
    if by_name:
        for item in layers:  # type: ignore[union-attr]
            module_name, _, call = str(item).partition("#")
            if module_name not in named or module_name == "":
                close = difflib.get_close_matches(module_name, list(named), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise LayerError(f"unknown layer {item!r}{hint}")
            if call and not call.isdigit():
                raise LayerError(f"bad call index in layer {item!r}: expected '<name>#<int>'")
            requested[module_name] = int(call) if call else None
    elif layers is not None and not all(
        isinstance(item, type) and issubclass(item, nn.Module) for item in layers
    ):
        raise InputError("layers must be all module names (str) or all nn.Module subclasses")

    calls = _trace_calls(model, example_input, set(requested) if by_name else None)
    counts: Counter[str] = Counter()
    chosen: list[tuple[str, int, tuple[int, ...], SiteKind]] = []
    last_kind: SiteKind | None = None
    for name, module, shape in calls:
        idx = counts[name]
        counts[name] += 1
        kind = _leaf_kind(module)
        if by_name:
            wanted = name in requested and requested[name] in (None, idx)
            site_kind: SiteKind | None = "custom" if wanted else None
        elif layers is not None:
            site_kind = "custom" if isinstance(module, tuple(layers)) else None  # type: ignore[arg-type]
        elif isinstance(module, ACTIVATION_TYPES) and last_kind is not None:
            site_kind = last_kind if (last_kind == "conv" or include_fc) else None
        else:
            site_kind = None
        if kind is not None:
            last_kind = kind
        if site_kind is not None:
            if shape is None or len(shape) == 0:
                raise LayerError(f"layer {name!r} does not output a [B, C, ...] tensor")
            chosen.append((name, idx, shape, site_kind))

    if layers is None and not chosen:
        chosen = [(n, i, s, "conv") for n, i, s, k in _conv_calls(calls) if s]
    if by_name:
        for module_name, call in requested.items():
            if counts[module_name] == 0:
                raise LayerError(f"layer {module_name!r} is never called in the forward pass")
            if call is not None and call >= counts[module_name]:
                raise LayerError(
                    f"layer {module_name!r} is called {counts[module_name]} time(s); "
                    f"no call #{call}"
                )
    if not chosen:
        raise LayerError(
            "the model has no gateable layers: no activation after a conv layer and no conv layer "
            "was found; name the layers to gate explicitly"
        )
    return _assign_names(chosen, counts)


def _conv_calls(
    calls: Sequence[tuple[str, nn.Module, tuple[int, ...] | None]],
) -> list[tuple[str, int, tuple[int, ...] | None, SiteKind]]:
    """Every conv call, as ``(module_name, call_index, shape, "conv")``: the functional fallback."""
    counts: Counter[str] = Counter()
    out: list[tuple[str, int, tuple[int, ...] | None, SiteKind]] = []
    for name, module, shape in calls:
        idx = counts[name]
        counts[name] += 1
        if _leaf_kind(module) == "conv":
            out.append((name, idx, shape, "conv"))
    return out


def _assign_names(
    chosen: Sequence[tuple[str, int, tuple[int, ...], SiteKind]], counts: Counter[str]
) -> list[GateSite]:
    return [
        GateSite(
            name=name if counts[name] == 1 else f"{name}#{idx}",
            module_name=name,
            call_index=idx,
            shape=tuple(shape),
            kind=kind,
        )
        for name, idx, shape, kind in chosen
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
    """Shape a mask ``[B|1, C]`` (channel) or ``[B|1, *site.shape]`` (element) to ``output``."""
    batch = output.shape[0]
    if mask.shape[0] not in (1, batch):
        raise ShapeError(
            f"mask for layer {site.name!r} has batch size {mask.shape[0]}, inputs have {batch}"
        )
    per_sample = tuple(mask.shape[1:])
    if per_sample == tuple(output.shape[1:]):
        shaped = mask
    elif per_sample == (output.shape[1],):
        shaped = mask.reshape(mask.shape[0], output.shape[1], *([1] * (output.dim() - 2)))
    else:
        raise ShapeError(
            f"mask for layer {site.name!r} has shape {list(mask.shape)}; expected "
            f"[B, {output.shape[1]}] (channel) or [B, {', '.join(map(str, output.shape[1:]))}] "
            "(element)"
        )
    return shaped.to(device=output.device, dtype=output.dtype)


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
    ):
        if not sites:
            raise LayerError("a GatedModel needs at least one gate site")
        names = [site.name for site in sites]
        if len(set(names)) != len(names):
            raise LayerError(f"duplicate gate sites: {names}")
        self.model = model
        self.sites: tuple[GateSite, ...] = tuple(sites)
        self.input_shape: tuple[int, ...] = tuple(input_shape)
        self.intervention: Intervention = intervention or ZeroAblation()
        self.intervention.check(self.sites, self.input_shape)
        self._by_name = {site.name: site for site in self.sites}
        self._runs_channels_last: bool | None = None

    def with_intervention(self, intervention: Intervention) -> GatedModel:
        """The same model and sites with dropped units replaced by ``intervention`` (a new
        object; this one keeps its own). See :mod:`neuralpath.interventions`."""
        gated = GatedModel(self.model, self.sites, self.input_shape, intervention)
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
    ) -> GatedModel:
        """Discover sites with :func:`discover_sites`; ``example_input`` fixes the input shape."""
        check_inputs(example_input)
        sites = discover_sites(model, example_input, layers=layers, include_fc=include_fc)
        return cls(model, sites, example_input.shape[1:])

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

        Masks are ``[B, C]`` (channel: broadcast over H×W) or ``[B, *site.shape]`` (element), or
        with a batch dimension of 1 to share one mask across the batch; binary or continuous,
        differentiable with respect to the masks. A masked site outputs
        ``m ⊙ a + (1 − m) ⊙ r`` with ``r`` from :attr:`intervention` (0 by default). Sites
        without a mask pass through unchanged. Inside the block the model is in eval mode with
        parameter gradients off; everything is restored on exit. With ``record``, the yielded
        :class:`Recording` holds each site's (masked) output of the most recent forward; with
        gradients enabled, each is part of the autograd graph (a leaf when nothing upstream
        requires gradients).
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
                for module_name, call_sites in hooks.by_module.items():
                    if module_name not in modules:
                        raise LayerError(f"module {module_name!r} is not in the model")
                    handles.append(
                        modules[module_name].register_forward_hook(
                            hooks.site_hook(module_name, call_sites)
                        )
                    )
                yield hooks.recording
            finally:
                for handle in handles:
                    handle.remove()

    def forward(self, inputs: Tensor, masks: Mapping[str, Tensor] | None = None) -> Tensor:
        """Logits ``[B, K]`` of the pathway model (the full model when ``masks`` is None)."""
        self.check_inputs(inputs)
        with self.gate(masks):
            return self.model(inputs)

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

    The root's forward pre-hook starts a forward: it resets the per-module call counters and,
    for an intervention with donors, runs one ungated forward on the donors of these inputs
    (recomputed only when the inputs change) whose site outputs become the replacements.
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
        self.in_donor_forward = False
        self.donor_inputs: tuple[Tensor, int] | None = None
        self.donor_activations: dict[str, Tensor] = {}

    def before_forward(self, _module: nn.Module, args: tuple[object, ...]) -> None:
        self.calls.clear()
        if self.in_donor_forward or not self.masks or not self.gated.intervention.needs_donors:
            return
        inputs = args[0] if args else None
        if not isinstance(inputs, Tensor):
            raise InputError("resample ablation needs the model's input tensor as first argument")
        if self.donor_inputs is not None and self.donor_inputs[0] is inputs:
            if self.donor_inputs[1] == inputs._version:
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

    def _replacement(self, site: GateSite, output: Tensor) -> Tensor | None:
        intervention = self.gated.intervention
        if not intervention.needs_donors:
            return intervention.replacement(site, output)
        donor = self.donor_activations.get(site.name)
        if donor is None or donor.shape[0] != output.shape[0]:
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

    def site_hook(self, module_name: str, call_sites: dict[int, GateSite]):
        def hook(_module: nn.Module, _inputs: object, output: object) -> Tensor | None:
            index = self.calls[module_name]
            self.calls[module_name] += 1
            site = call_sites.get(index)
            if site is None:
                return None
            if not isinstance(output, Tensor):
                raise LayerError(f"layer {site.name!r} did not return a tensor")
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
