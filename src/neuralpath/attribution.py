"""Pathway Gradient and Grad-CAM on the pathway model (spec §3), and one explain signature for
every saliency method, ours and Captum's.

* :class:`PathwayGradient`: ``PG(x) = ∇_x y_c(H_P(x))`` with the pathway ``P`` found by a finder on
  the same inputs and then held fixed: removed units pass neither signal nor gradient.
* :class:`PathwayGradCAM`: Grad-CAM computed from the gated activations and gradients of ``H_P``,
  on a CNN's conv maps or on the patch tokens of a vision transformer's MLP neurons or heads.
* ``"attention-rollout"`` (:class:`~neuralpath.rollout.AttentionRollout`): the attention-rollout
  baseline of vision transformers.

Both are :class:`captum.attr.GradientAttribution` subclasses: they work inside
``captum.attr.NoiseTunnel`` and take Captum's ``additional_forward_args``.

**Build once, explain many.** Attribution, the perturbation metrics, sanity checks and ROAR use
every method through one signature, an :data:`~neuralpath.metrics.perturbation.Explainer`
``explain(inputs [B, C, H, W], targets [B]) -> maps [B, C|1, H, W]``, built once per model by
:func:`make_explainer` from a method name, a gated model and a finder built once
(:func:`~neuralpath.methods.build_finder`). :func:`explainer_factory` builds the same method for
a changed copy of the model (a sanity check's randomised model): the copy gets its own
:class:`GatedModel` and the finder rebound to it (:func:`rebind_finder`; nothing is rebuilt or
reloaded), and under mean ablation the per-unit means of the copy. :func:`quantus_explain_func`
adapts every method of :data:`METHOD_NAMES` to Quantus' ``explain_func``; :func:`signed_max_abs`
is the display reduction of a map to ``[B, H, W]``; :func:`attribute_dataset`,
:meth:`AttributionRun.save` and :func:`save_overlays` explain a data set
(``neuralpath attribute``).
"""

from __future__ import annotations

import copy
import os
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import (
    GradientAttribution,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    LayerGradCam,
    Saliency,
)
from captum.log import log_usage
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from neuralpath.errors import InputError, LayerError, ZeroMapsWarning
from neuralpath.gating import GatedModel, GateSite, frozen
from neuralpath.heads import block_index, transformer_blocks
from neuralpath.interventions import Intervention, MeanAblation
from neuralpath.io import atomic_path, save_tensors, write_json_atomic
from neuralpath.methods.base import FinderOptions, PathwayFinder, build_finder
from neuralpath.methods.critical import CriticalPathwayFinder
from neuralpath.pathway import Granularity, Pathway, check_sparsity
from neuralpath.reference import reference_statistics
from neuralpath.rollout import AttentionRollout, patch_grid
from neuralpath.targets import TargetType, resolve_target, select_logit

if TYPE_CHECKING:
    from neuralpath.metrics.perturbation import Explainer, ExplainerFactory

AttributionMethod = Callable[[GatedModel, Tensor, TargetType], Tensor]
"""``(gated, inputs [B, C, H, W], target) -> maps``: the by-name adapter of
:func:`make_attribution_method` for callers that hold no state between calls (Quantus)."""

_NO_GRADIENT = (
    "no gradient path from the inputs to the output: the model's forward is not differentiable "
    "(argmax, round, detach or no_grad inside it?)"
)


def _as_target(target: object) -> TargetType:
    """Accept Captum's target forms: None, int, a tensor, or a list of ints."""
    if isinstance(target, list | tuple):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in target):
            raise InputError("a target list must hold one integer class per sample")
        return torch.tensor(list(target), dtype=torch.long)
    return target  # type: ignore[return-value]


def _check_tensor_inputs(gated: GatedModel, inputs: object) -> Tensor:
    if isinstance(inputs, tuple):
        if len(inputs) != 1:
            raise InputError("neuralpath attributions take one input tensor, not a tuple")
        inputs = inputs[0]
    gated.check_inputs(inputs)  # type: ignore[arg-type]
    return inputs  # type: ignore[return-value]


@contextmanager
def forward_args(model: nn.Module, additional_forward_args: object = None) -> Iterator[None]:
    """Inside the block every call ``model(x)`` runs as ``model(x, *additional_forward_args)``
    (Captum's convention: one extra argument, or a tuple of them; None adds nothing), so finders,
    target resolution and the pathway model's forward all see them."""
    if additional_forward_args is None:
        yield
        return
    extra = (
        additional_forward_args
        if isinstance(additional_forward_args, tuple)
        else (additional_forward_args,)
    )
    handle = model.register_forward_pre_hook(lambda _module, args: (*args, *extra))
    try:
        yield
    finally:
        handle.remove()


class _PathwayForward(NamedTuple):
    """One forward of the pathway model: the input leaf, the summed target logit, the pathway
    and the recording (site outputs, when asked for); ``repair``: the finder found the pathway
    and left its connecting repair to the maps (:attr:`_PathwayAttribution.tests_connection`)."""

    inputs: Tensor
    objective: Tensor
    pathway: Pathway
    recording: Any
    target: Tensor
    additional_forward_args: object
    repair: bool


class _PathwayAttribution(GradientAttribution):  # type: ignore[misc]  # captum is untyped
    """Shared machinery: resolve the target and the fixed pathway for a batch, run ``H_P``;
    subclasses turn that forward into maps (:meth:`_maps`)."""

    records = False
    """Whether the maps need the site outputs of the forward."""
    tests_connection = False
    """Whether :meth:`_maps` runs the connecting repair of a critical-pathway finder itself (its
    input gradient is the repair's connectivity test), so the finder skips it."""

    def __init__(self, gated: GatedModel, finder: PathwayFinder | None = None):
        if not isinstance(gated, GatedModel):
            raise InputError(f"gated must be a GatedModel, got {type(gated).__name__}")
        if finder is not None and finder.gated is not gated:
            raise InputError("the finder was built for a different GatedModel")
        GradientAttribution.__init__(self, gated.model)
        self.gated = gated
        self.finder = finder

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def pathway_and_target(
        self, inputs: Tensor, target: TargetType = None, pathway: Pathway | None = None
    ) -> tuple[Pathway, Tensor]:
        """The fixed pathway for ``inputs`` (``pathway`` if given, else the finder's) and the
        resolved target ``[B]``."""
        inputs = inputs.detach()
        target = _as_target(target)
        if pathway is None:
            if self.finder is None:
                raise InputError("needs a finder (at construction) or a pathway (in attribute())")
            if isinstance(self.finder, CriticalPathwayFinder):
                connect = False if self.tests_connection else None
                return self.finder.find_with_target(inputs, target, connect=connect)
            with torch.no_grad():
                cls = resolve_target(self.gated.forward(inputs), target)
            return self.finder.find(inputs, cls), cls
        if not isinstance(pathway, Pathway):
            raise InputError(f"pathway must be a Pathway, got {type(pathway).__name__}")
        if pathway.batch_size not in (1, inputs.shape[0]):
            raise InputError(
                f"pathway has {pathway.batch_size} samples for a batch of {inputs.shape[0]}"
            )
        with torch.no_grad():
            cls = resolve_target(self.gated.forward(inputs), target)
        return pathway.detach(), cls

    @log_usage()  # type: ignore[untyped-decorator]  # captum is untyped
    @torch.enable_grad()
    def attribute(
        self,
        inputs: Tensor,
        target: TargetType = None,
        additional_forward_args: object = None,
        *,
        pathway: Pathway | None = None,
    ) -> Tensor:
        """Maps of ``inputs`` ``[B, *input_shape]`` (their shape: see the class).

        ``target``: None (the model's prediction), an int, or ``[B]`` classes.
        ``additional_forward_args``: passed after the inputs to every forward of the model
        (Captum's convention). ``pathway``: use this fixed pathway (``[B]`` or one sample
        broadcast) instead of running the finder.
        """
        return self._maps(self._forward(inputs, target, additional_forward_args, pathway))

    def _maps(self, run: _PathwayForward) -> Tensor:
        """The maps of one forward of ``H_P`` (:meth:`_forward`)."""
        raise NotImplementedError

    def _forward(
        self,
        inputs: object,
        target: TargetType,
        additional_forward_args: object,
        pathway: Pathway | None,
    ) -> _PathwayForward:
        """Find (or take) the pathway, then one differentiable forward of ``H_P`` (site outputs
        recorded where the maps need them)."""
        checked = _check_tensor_inputs(self.gated, inputs)
        finder = self.finder
        repair = (
            pathway is None
            and self.tests_connection
            and isinstance(finder, CriticalPathwayFinder)
            and finder.config.connect
        )
        with forward_args(self.gated.model, additional_forward_args):
            pathway, cls = self.pathway_and_target(checked, target, pathway)
            x = checked.detach().requires_grad_(True)
            with self.gated.gate(pathway, record=self.records) as recording:
                logits = self.gated.model(x)
        if not logits.requires_grad:
            raise InputError(_NO_GRADIENT)
        objective = select_logit(logits, cls).sum()
        return _PathwayForward(
            x, objective, pathway, recording, cls, additional_forward_args, repair
        )


class PathwayGradient(_PathwayAttribution):
    """``∇_x y_c(H_P(x))`` with ``P`` found by ``finder`` on the same inputs, then fixed.

    >>> pg = PathwayGradient(gated, NeuronMCT(gated, sparsity=0.9))
    >>> maps = pg.attribute(images)                # [B, C, H, W], target = prediction
    >>> smooth = NoiseTunnel(pg).attribute(images, nt_type="smoothgrad", stdevs=0.1)
    """

    tests_connection = True

    def _maps(self, run: _PathwayForward) -> Tensor:
        """Pathway Gradient: same shape and dtype as the inputs. With a critical-pathway finder
        whose ``connect`` is on, samples whose gradient is zero everywhere (exactly the test of the
        connecting repair, :mod:`neuralpath.methods.connect`) get their pathway repaired and their maps
        recomputed: connected samples cost nothing more."""
        (grad,) = torch.autograd.grad(run.objective, run.inputs, allow_unused=True)
        if grad is None:
            raise InputError(_NO_GRADIENT)
        if run.repair and zero_maps(grad).any():
            grad = self._repaired_maps(run, grad)
        _warn_about_zero_maps(
            grad,
            run.pathway,
            "Pathway Gradient",
            "no gradient reaches the input through their pathways",
        )
        return grad

    def _repaired_maps(self, run: _PathwayForward, grad: Tensor) -> Tensor:
        """``grad`` with the zero maps of disconnected samples recomputed on their repaired
        pathways."""
        assert isinstance(self.finder, CriticalPathwayFinder)
        inputs = run.inputs.detach()
        with forward_args(self.gated.model, run.additional_forward_args):
            pathway = self.finder.connect(inputs, run.pathway, run.target, ~zero_maps(grad).cpu())
            rows = torch.tensor(pathway.metadata["connect_floor"]).gt(0).nonzero().squeeze(1)
            if rows.numel() == 0:
                return grad
            index = rows.to(inputs.device)
            x = inputs[index].requires_grad_(True)
            with torch.enable_grad(), self.gated.gate(pathway.select(rows)):
                logits = self.gated.model(x)
            (again,) = torch.autograd.grad(select_logit(logits, run.target[index]).sum(), x)
        grad = grad.clone()
        grad[index] = again
        return grad


def zero_maps(attributions: Tensor) -> Tensor:
    """``[B]`` bool: which maps of ``attributions`` ``[B, ...]`` are zero everywhere."""
    return attributions.flatten(1).abs().amax(dim=1) == 0


def _warn_about_zero_maps(maps: Tensor, pathway: Pathway, method: str, otherwise: str) -> None:
    """Warn when some of ``method``'s ``maps`` are all zero, naming the layers their pathways
    empty (a global threshold over layers of very different score scales can drop whole layers);
    ``otherwise``: the cause given when no layer is emptied."""
    zero = zero_maps(maps)
    if not zero.any():
        return
    emptied = [
        name
        for name, kept in pathway.kept_fraction_per_layer().items()
        if (kept.expand(zero.shape[0]).to(zero.device)[zero] == 0).any()
    ]
    if emptied:
        more = f" (+{len(emptied) - 3} more)" if len(emptied) > 3 else ""
        cause = (
            f": their pathways keep no unit of {', '.join(emptied[:3])}{more}, so nothing passes;"
            " lower the sparsity, use element units or a per-layer selection"
        )
    else:
        cause = f" ({otherwise})"
    warnings.warn(  # stacklevel: past _maps(), attribute() and its two decorators
        f"{int(zero.sum())} of {zero.shape[0]} {method} maps are all zero{cause}",
        ZeroMapsWarning,
        stacklevel=6,
    )


def token_grid(gated: GatedModel, site: GateSite) -> tuple[int, int] | None:
    """The patch grid ``(h, w)`` behind the tokens of a transformer site ``site`` (MLP neurons
    ``(T, D)`` or heads ``(T, H, d)``) of ``gated``'s images (:func:`~neuralpath.rollout.patch_grid`),
    or None when ``site`` has no tokens or they are not a class token followed by patches."""
    tokens = (site.kind == "token" and len(site.shape) == 2) or (
        site.kind == "head" and len(site.shape) == 3 and site.feature_dims == 1
    )
    if not tokens or site.unit_dim == 0 or len(gated.input_shape) != 3:
        return None
    try:
        return patch_grid(site.shape[0], *gated.input_shape[-2:])
    except LayerError:
        return None


def default_cam_layer(gated: GatedModel) -> str:
    """Grad-CAM's layer: the last gate site with a spatial ``(C, H, W)`` output (a CNN); else,
    in a vision transformer, the last token site with patch tokens (MLP neurons or heads) outside
    the last block **[ours]**: the last block reads only its class token on to the classifier,
    so the gradient at its patch tokens is zero and its CAM would be blank."""
    spatial = [site.name for site in gated.sites if site.spatial]
    if spatial:
        return spatial[-1]
    blocks = transformer_blocks(gated.model)
    tokens = [site for site in gated.sites if token_grid(gated, site) is not None]
    if blocks:
        last = len(blocks) - 1
        tokens = [s for s in tokens if block_index(s.module_name, blocks) not in (last, None)]
    if not tokens:
        raise LayerError(
            "Grad-CAM needs a gate site with a spatial [C, H, W] output (a CNN) or a vision "
            "transformer's MLP-neuron or head site with patch tokens before its last block; "
            "gate more blocks (--units heads,mlp) or pass the layer"
        )
    return tokens[-1].name


def check_cam_layer(gated: GatedModel, layer: str) -> None:
    """A clear :class:`LayerError` unless gate site ``layer`` has a spatial ``[C, H, W]`` output
    or patch tokens (:func:`token_grid`)."""
    site = gated.site(layer)
    if not site.spatial and token_grid(gated, site) is None:
        raise LayerError(
            f"Grad-CAM layer {layer!r} (output {list(site.shape)}) has neither a spatial "
            "[C, H, W] output nor a class token followed by a grid of patch tokens"
        )


def grad_cam_map(
    activation: Tensor, grad: Tensor, grid: tuple[int, int] | None, size: Sequence[int]
) -> Tensor:
    """Grad-CAM ``relu(Σ_k mean(∂y/∂a_k) · a_k)`` upsampled to ``size`` (H, W): ``[B, 1, H, W]``.

    ``grid`` None: ``activation`` and ``grad`` are ``[B, C, H, W]``, means over H×W. Else they are
    tokens ``[B, T, ...]`` (features flattened to ``K`` units): the leading (class) tokens are
    dropped, the weights are means over the ``h·w`` patch tokens and the map is laid out on the
    patch grid ``(h, w)``.
    """
    if grid is None:
        weights = grad.mean(dim=(2, 3), keepdim=True)
        raw = (weights * activation).sum(dim=1, keepdim=True)
    else:
        patches = grid[0] * grid[1]
        tokens = activation.flatten(2)[:, -patches:]
        weights = grad.flatten(2)[:, -patches:].mean(dim=1, keepdim=True)
        raw = (weights * tokens).sum(dim=2).view(-1, 1, *grid)
    return F.interpolate(raw.clamp_min(0), size=tuple(size), mode="bilinear", align_corners=False)


class PathwayGradCAM(_PathwayAttribution):
    """Grad-CAM of the pathway model: ``relu(Σ_k mean(∂y_c/∂ã_k) · ã_k)``, upsampled.

    ``ã`` is the gated (masked) output of gate site ``layer`` in ``H_P`` (default:
    :func:`default_cam_layer`). On a CNN's ``[C, H, W]`` site the means run over H×W; on a vision
    transformer's MLP-neuron ``[T, D]`` or head ``[T, H, d]`` site (dispatched by the site's
    shape), the units are the features of a token, the means run over the patch tokens (class
    token dropped) and the map lies on the patch grid (:func:`grad_cam_map`). The map is bilinearly
    upsampled to the input's H×W. All-zero maps raise a
    :class:`~neuralpath.errors.ZeroMapsWarning` naming the layers their pathways empty.
    """

    records = True

    def __init__(
        self, gated: GatedModel, finder: PathwayFinder | None = None, layer: str | None = None
    ):
        super().__init__(gated, finder)
        self.layer = default_cam_layer(gated) if layer is None else layer
        check_cam_layer(gated, self.layer)
        self.grid = token_grid(gated, gated.site(self.layer))

    def _maps(self, run: _PathwayForward) -> Tensor:
        """Grad-CAM of ``H_P``: ``[B, 1, H, W]``, >= 0."""
        activation = run.recording.activations[self.layer]
        (grad,) = torch.autograd.grad(run.objective, activation, allow_unused=True)
        if grad is None:
            raise InputError(f"no gradient reaches layer {self.layer!r} from the output")
        maps = grad_cam_map(activation.detach(), grad, self.grid, run.inputs.shape[-2:])
        _warn_about_zero_maps(
            maps, run.pathway, "Pathway Grad-CAM", f"Grad-CAM at {self.layer} is nowhere positive"
        )
        return maps


def signed_max_abs(attributions: Tensor) -> Tensor:
    """Display map ``[B, H, W]`` from ``[B, C, H, W]``: per pixel the channel value of largest
    magnitude (sign kept), divided by the sample's max ``|value|`` (all-zero maps stay zero)."""
    if attributions.dim() != 4:
        raise InputError(f"attributions must be [B, C, H, W], got {list(attributions.shape)}")
    index = attributions.abs().argmax(dim=1, keepdim=True)
    picked = attributions.gather(1, index).squeeze(1)
    scale = picked.abs().flatten(1).amax(dim=1).clamp_min(torch.finfo(picked.dtype).tiny)
    return picked / scale.view(-1, 1, 1)


# One explain signature: explainers built once per model ------------------------------------

PATHWAY_METHODS = ("pathway-gradient", "pathway-grad-cam")
CAPTUM_METHODS = (
    "gradient",
    "input-x-gradient",
    "integrated-gradients",
    "guided-backprop",
    "grad-cam",
)
ATTENTION_METHODS = ("attention-rollout",)
"""Methods that need a vision transformer (attention modules, see :mod:`neuralpath.rollout`)."""
METHOD_NAMES: tuple[str, ...] = PATHWAY_METHODS + CAPTUM_METHODS + ATTENTION_METHODS


def check_method(name: str) -> str:
    """``name`` if it is one of :data:`METHOD_NAMES`, else a clear :class:`InputError`."""
    if name not in METHOD_NAMES:
        raise InputError(
            f"unknown attribution method {name!r}; available: {', '.join(METHOD_NAMES)}"
        )
    return name


def _target_tensor(gated: GatedModel, inputs: Tensor, target: TargetType) -> Tensor:
    with torch.no_grad():
        return resolve_target(gated.forward(inputs), _as_target(target))


Attribute = Callable[[Tensor, Tensor], Tensor]
"""``attribute(x [B, C, H, W] requiring grad, classes [B]) -> maps``: one Captum method's call."""


def _captum_attribute(name: str, gated: GatedModel, layer: str | None) -> Attribute:
    """The Captum object of method ``name``, built once, as an :data:`Attribute`. Integrated
    Gradients: 50 steps from an all-zero baseline, in passes of ``B`` rows."""
    model = gated.model
    if name == "gradient":
        saliency = Saliency(model)
        return lambda x, cls: saliency.attribute(x, target=cls, abs=False)
    if name == "input-x-gradient":
        input_x_gradient = InputXGradient(model)
        return lambda x, cls: input_x_gradient.attribute(x, target=cls)
    if name == "integrated-gradients":
        ig = IntegratedGradients(model)
        return lambda x, cls: ig.attribute(
            x, target=cls, n_steps=50, internal_batch_size=x.shape[0]
        )
    if name == "guided-backprop":
        guided = GuidedBackprop(model)

        def guided_backprop(x: Tensor, cls: Tensor) -> Tensor:
            with warnings.catch_warnings():  # Captum announces its temporary ReLU hooks
                warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
                maps: Tensor = guided.attribute(x, target=cls)
                return maps

        return guided_backprop
    return _grad_cam(gated, layer)


def _grad_cam(gated: GatedModel, layer: str | None) -> Attribute:
    """Captum's Grad-CAM at gate site ``layer`` (default: :func:`default_cam_layer`),
    upsampled; on a vision transformer's token site, :class:`PathwayGradCAM` with every unit
    kept (the plain model's token Grad-CAM)."""
    site = gated.site(default_cam_layer(gated) if layer is None else layer)
    check_cam_layer(gated, site.name)
    if site.name != site.module_name or not site.spatial:
        # Captum hooks a module, not one call of a reused module (ResNet's relu), and pools
        # over H×W only: the same Grad-CAM through our per-call gates, with every unit kept
        # (also a vision transformer's token sites, see PathwayGradCAM).
        keep_all = Pathway({site.name: torch.ones(1, site.units, dtype=torch.bool)}, "channel")
        cam = PathwayGradCAM(gated, layer=site.name)
        return lambda x, cls: cam.attribute(x, cls, pathway=keep_all)
    module = gated.model.get_submodule(site.module_name)
    layer_cam = LayerGradCam(gated.model, module)

    def grad_cam(x: Tensor, cls: Tensor) -> Tensor:
        maps = layer_cam.attribute(x, target=cls, relu_attributions=True)
        return F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)

    return grad_cam


def make_explainer(
    name: str,
    gated: GatedModel,
    finder: PathwayFinder | None = None,
    *,
    layer: str | None = None,
) -> Explainer:
    """The :data:`~neuralpath.metrics.perturbation.Explainer` of method ``name`` for ``gated``,
    built once: ``explain(inputs [B, C, H, W], targets) -> maps`` (detached; ``[B, C, H, W]``,
    ``[B, 1, H, W]`` for the CAMs). ``targets``: ``[B]`` classes (None or an int work too).

    Pathway methods need ``finder`` (built once on ``gated``, whose intervention their pathway
    model runs under); Captum's and attention rollout take none and ignore the intervention
    (rollout: ``[B, 1, H, W]``, class-agnostic, a :class:`LayerError` on a model without
    attention). ``layer``: the Grad-CAM gate site (default: :func:`default_cam_layer`).
    """
    check_method(name)
    if name in ATTENTION_METHODS:
        if finder is not None:
            raise InputError(f"{name!r} takes no pathway finder")
        rollout = AttentionRollout(gated.model)

        def explain_rollout(inputs: Tensor, targets: TargetType) -> Tensor:
            gated.check_inputs(inputs)
            return rollout.attribute(inputs, targets).detach()

        return explain_rollout
    if name in CAPTUM_METHODS:
        if finder is not None:
            raise InputError(f"{name!r} takes no pathway finder")
        attribute = _captum_attribute(name, gated, layer)

        def explain_captum(inputs: Tensor, targets: TargetType) -> Tensor:
            gated.check_inputs(inputs)
            cls = _target_tensor(gated, inputs, targets)
            with frozen(gated.model):
                return attribute(inputs.detach().clone().requires_grad_(True), cls).detach()

        return explain_captum
    if finder is None:
        raise InputError(f"{name!r} needs a pathway finder (build one with build_finder)")
    method = (
        PathwayGradient(gated, finder)
        if name == "pathway-gradient"
        else PathwayGradCAM(gated, finder, layer)
    )

    def explain_pathway(inputs: Tensor, targets: TargetType) -> Tensor:
        maps: Tensor = method.attribute(inputs, targets).detach()
        return maps

    return explain_pathway


def rebind_finder(finder: PathwayFinder, gated: GatedModel) -> PathwayFinder:
    """``finder``'s configuration on ``gated``, another model with the same gate sites (a
    randomised copy): a shallow copy whose ``gated`` is replaced. Finders keep all their
    model-specific state in ``gated``, so nothing is rebuilt; trained parts (GEN-CNP's
    generator) are shared, not reloaded nor checked against the copy's weights again."""
    mine = [(site.name, site.shape) for site in finder.gated.sites]
    theirs = [(site.name, site.shape) for site in gated.sites]
    if mine != theirs:
        raise InputError(f"the finder was built for layers {mine}; this model has {theirs}")
    rebound = copy.copy(finder)
    rebound.gated = gated
    return rebound


def _same_sites(gated: GatedModel, model: nn.Module) -> GatedModel:
    """A plain :class:`GatedModel` of ``model`` (a copy of ``gated.model``) with ``gated``'s
    sites: nothing is traced again."""
    calls = gated.calls_per_forward
    known = None if any(count is None for count in calls.values()) else calls
    return GatedModel(model, gated.sites, gated.input_shape, calls_per_forward=known)  # type: ignore[arg-type]


def _copy_intervention(
    intervention: Intervention, plain: GatedModel, reference_images: Tensor | None
) -> Intervention:
    """The intervention of ``gated`` for its changed copy ``plain``. Zero ablation needs
    nothing and resample ablation's donors run through the copy itself; mean ablation's per-unit
    means describe the trained weights only, so they are recomputed for the copy over the same
    ``reference_images`` (one pass) [ours]."""
    if not isinstance(intervention, MeanAblation):
        return intervention
    if reference_images is None:
        raise InputError(_MEAN_NEEDS_IMAGES)
    source = {**intervention.statistics.source, "recomputed_for": "changed copy of the target"}
    return MeanAblation(
        reference_statistics(plain, reference_images, progress=False, source=source)
    )


_MEAN_NEEDS_IMAGES = (
    "mean ablation on a changed copy of the model (a sanity check's randomised model) needs the "
    "reference images, to recompute the per-unit means of the copy"
)


def explainer_factory(
    name: str,
    gated: GatedModel,
    finder: PathwayFinder | None = None,
    *,
    layer: str | None = None,
    reference_images: Tensor | None = None,
) -> ExplainerFactory:
    """An :data:`~neuralpath.metrics.perturbation.ExplainerFactory`: ``for_model(model)`` is
    the explainer of ``name`` (see :func:`make_explainer`) for ``model``, either ``gated.model``
    (the explainer built here, once) or a changed copy of it with the same modules (a sanity
    check's randomised model, called once per randomisation step). A copy gets a
    :class:`GatedModel` with ``gated``'s sites, ``finder`` rebound (:func:`rebind_finder`) and
    ``gated``'s intervention, whose per-unit means, under mean ablation, are recomputed for the
    copy over ``reference_images`` ``[N, *input_shape]`` (required then: without them, building
    for a copy raises :class:`InputError`).
    """
    built = make_explainer(name, gated, finder, layer=layer)

    def for_model(model: nn.Module) -> Explainer:
        if model is gated.model:
            return built
        plain = _same_sites(gated, model)
        changed = plain.with_intervention(
            _copy_intervention(gated.intervention, plain, reference_images)
        )
        rebound = None if finder is None else rebind_finder(finder, changed)
        return make_explainer(name, changed, rebound, layer=layer)

    return for_model


def pathway_options(
    *,
    sparsity: float | None = None,
    granularity: Granularity | None = None,
    seed: int | None = None,
    generator: str | None = None,
    settings: Mapping[str, Any] | None = None,
    verify_weights: bool = True,
) -> FinderOptions:
    """The finder options of a pathway method (None: the finder's own default, e.g. ``cp-mct``'s
    0.9 and element units); ``settings`` as in ``neuralpath find --set``."""
    if sparsity is not None:
        check_sparsity(sparsity)
    return FinderOptions(
        sparsity=sparsity,
        granularity=granularity,
        generator=generator,
        seed=seed,
        settings=dict(settings or {}),
        verify_weights=verify_weights,
    )


_OPTION_KEYWORDS = ("sparsity", "granularity", "seed", "generator", "settings", "verify_weights")
"""The keywords of :func:`pathway_options`."""


def make_attribution_method(
    name: str,
    *,
    finder: str = "cp-mct",
    layer: str | None = None,
    **options: Any,
) -> AttributionMethod:
    """An :data:`AttributionMethod` ``(gated, inputs, target) -> maps`` by name, for callers
    that keep no state between calls: the explainer (:func:`make_explainer`) and its finder are
    built on first use with each gated model and reused after. ``options``: the keywords of
    :func:`pathway_options` (pathway methods only); ``finder``: a registered finder name.
    """
    check_method(name)
    unknown = sorted(set(options) - set(_OPTION_KEYWORDS))
    if unknown:
        raise InputError(
            f"unexpected keywords {unknown} for {name!r}; expected some of {_OPTION_KEYWORDS}"
        )
    finder_options = None
    if name in PATHWAY_METHODS:
        finder_options = pathway_options(**options)
    elif options.get("settings") or options.get("generator"):
        raise InputError(f"{name!r} has no pathway finder to take settings or a generator")
    built: weakref.WeakKeyDictionary[GatedModel, Explainer] = weakref.WeakKeyDictionary()

    def run(gated: GatedModel, inputs: Tensor, target: TargetType = None) -> Tensor:
        if gated not in built:
            path_finder = None
            if finder_options is not None:
                path_finder = build_finder(finder, gated, finder_options)
            built[gated] = make_explainer(name, gated, path_finder, layer=layer)
        return built[gated](inputs, target)  # type: ignore[arg-type]

    run.__name__ = name
    return run


def quantus_explain_func(
    model: nn.Module,
    inputs: np.ndarray | Tensor,
    targets: np.ndarray | Tensor | int | None,
    *,
    method: str = "pathway-gradient",
    finder: str = "cp-mct",
    layers: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    **options: Any,
) -> np.ndarray:
    """Quantus ``explain_func``: maps of ``inputs`` ``[B, C, H, W]`` as a float32 numpy array.

    Quantus passes the model on every call (its randomisation tests pass changed copies), so
    gate sites are discovered and the method built per call (``layers`` as in
    :meth:`GatedModel.discover`); ``method``, ``finder`` and ``options`` (``sparsity``,
    ``granularity``, ``seed``, ``generator``, ``settings``, ``verify_weights``: see
    :func:`pathway_options`; Quantus' randomisation tests with ``finder="gencnp"`` need
    ``verify_weights=False``) select the method. Output ``[B, C, H, W]`` (``[B, 1, H, W]`` for
    Grad-CAM). Unknown keywords raise :class:`InputError`.
    """
    explain = make_attribution_method(method, finder=finder, **options)  # checks the keywords
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    first = next(model.parameters(), None)
    where = (
        torch.device(device)
        if device is not None
        else (first.device if first is not None else None)
    )
    x = torch.as_tensor(
        inputs, dtype=first.dtype if first is not None else torch.float32, device=where
    )
    target: TargetType = None
    if targets is not None:
        target = torch.as_tensor(targets, device=where).long().reshape(-1)
    gated = GatedModel.discover(model, x[:1], layers=layers)
    return explain(gated, x, target).detach().cpu().float().numpy()


# Explaining a data set ----------------------------------------------------------------------

EXPLAIN_CLASSES = ("prediction", "label")


@dataclass(frozen=True)
class AttributionRun:
    """Maps of ``N`` images, all on the CPU: ``maps`` ``[N, C|1, H, W]``, the rest ``[N]``."""

    method: str
    maps: Tensor
    targets: Tensor
    labels: Tensor
    predictions: Tensor
    seconds: float

    def display(self) -> Tensor:
        """Display maps ``[N, H, W]`` in [-1, 1] (:func:`signed_max_abs`)."""
        return signed_max_abs(self.maps)

    def zero_map_count(self) -> int:
        """How many maps are zero everywhere (:func:`zero_maps`)."""
        return int(zero_maps(self.maps).sum())

    def save(
        self, directory: str | os.PathLike[str], metadata: dict[str, Any] | None = None
    ) -> Path:
        """Write ``maps.safetensors`` (maps, display, targets, labels, predictions) and
        ``meta.json`` into ``directory``, atomically; returns the directory."""
        path = Path(directory)
        if path.exists() and not path.is_dir():
            raise InputError(f"cannot write maps into {path}: not a directory")
        meta = {
            "format": "neuralpath.attribution",
            "version": 1,
            "method": self.method,
            "n": int(self.labels.numel()),
            "seconds": self.seconds,
            "seconds_per_image": self.seconds / max(1, self.labels.numel()),
            "zero_maps": self.zero_map_count(),
            **(metadata or {}),
        }
        tensors = {
            "maps": self.maps,
            "display": self.display(),
            "targets": self.targets,
            "labels": self.labels,
            "predictions": self.predictions,
        }
        save_tensors(path / "maps.safetensors", tensors, meta)
        write_json_atomic(path / "meta.json", meta)
        return path


def attribute_dataset(
    gated: GatedModel,
    method: Explainer,
    dataset: Dataset[Any],
    *,
    name: str = "custom",
    batch_size: int = 32,
    limit: int | None = None,
    explain: str = "prediction",
    progress: bool = True,
) -> AttributionRun:
    """Explain the first ``limit`` items ``(image, label)`` of ``dataset`` in batches.

    ``method``: an :data:`~neuralpath.metrics.perturbation.Explainer` built once for ``gated``
    (:func:`make_explainer`), recorded as ``name``; ``explain``: the class to explain, the
    model's ``"prediction"`` or the true ``"label"``. Timing covers the explainer calls only.
    """
    if explain not in EXPLAIN_CLASSES:
        raise InputError(f"explain must be one of {EXPLAIN_CLASSES}, got {explain!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    total = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    if total <= 0:
        raise InputError("no samples to explain (empty data set or limit <= 0)")
    loader = DataLoader(Subset(dataset, range(total)), batch_size=batch_size, shuffle=False)
    device = gated.device
    maps, targets, labels, predictions = [], [], [], []
    seconds = 0.0
    bar = tqdm(total=total, desc=name, unit="img", disable=not progress)
    for images, batch_labels in loader:
        images = images.to(device)
        with torch.no_grad():
            predicted = gated.forward(images).argmax(dim=1)
        cls = predicted if explain == "prediction" else batch_labels.to(device)
        start = time.perf_counter()
        result = method(images, cls).detach()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        maps.append(result.cpu())
        targets.append(cls.cpu())
        labels.append(batch_labels.cpu())
        predictions.append(predicted.cpu())
        bar.update(images.shape[0])
    bar.close()
    return AttributionRun(
        method=name,
        maps=torch.cat(maps),
        targets=torch.cat(targets),
        labels=torch.cat(labels),
        predictions=torch.cat(predictions),
        seconds=seconds,
    )


OVERLAY_PERCENTILE = 99.0
"""Percentile of a map's non-zero ``|values|`` that :func:`save_overlays` shows at full colour."""
_OVERLAY_SIDE = 224
"""Smaller images are drawn enlarged (by a whole factor) to about this many pixels a side."""


def overlay(
    image: np.ndarray, display: np.ndarray, percentile: float = OVERLAY_PERCENTILE
) -> np.ndarray:
    """RGB ``[H, W, 3]`` in [0, 1]: the map ``display`` ``[H, W]`` (signed, any scale) over a grey
    copy of ``image`` ``[H, W, C]`` in [0, 1].

    The map is divided by the ``percentile``-th percentile of its non-zero ``|values|`` and
    clipped to [-1, 1], so a few extreme pixels do not wash out the rest; red (positive) or blue
    (negative) is alpha-blended over the image with opacity ``0.9·|value|``. An all-zero map
    leaves the grey image unchanged.
    """
    magnitude = np.abs(display)
    nonzero = magnitude[magnitude > 0]
    scale = np.percentile(nonzero, percentile) if nonzero.size else 1.0
    value = np.clip(display / scale, -1.0, 1.0)[..., None]
    grey = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2)
    colour = np.where(value >= 0, np.array([0.9, 0.05, 0.05]), np.array([0.05, 0.2, 0.9]))
    alpha = 0.9 * np.abs(value)
    blended: np.ndarray = (1.0 - alpha) * grey + alpha * colour
    return blended


def save_overlays(
    pixels: Tensor,
    display: Tensor,
    directory: str | os.PathLike[str],
    titles: Sequence[str],
    percentile: float = OVERLAY_PERCENTILE,
) -> list[Path]:
    """One PNG per image: the image (``pixels`` ``[N, C, H, W]`` in [0, 1]) beside the map
    ``display`` ``[N, H, W]`` (signed, any scale) drawn over a grey copy of it (:func:`overlay`).

    Small images are enlarged by a whole factor to about 224 pixels a side (nearest
    neighbour); larger ones are drawn at their own size. Tensors that require grad are fine.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if pixels.dim() != 4 or display.shape != (pixels.shape[0], *pixels.shape[2:]):
        raise InputError(
            f"pixels [N, C, H, W] and display [N, H, W] disagree: "
            f"{list(pixels.shape)} vs {list(display.shape)}"
        )
    if len(titles) != pixels.shape[0]:
        raise InputError(f"need one title per image, got {len(titles)} for {pixels.shape[0]}")
    if not 0 < percentile <= 100:
        raise InputError(f"percentile must be in (0, 100], got {percentile!r}")
    images = pixels.detach().cpu().clamp(0, 1).permute(0, 2, 3, 1).double().numpy()
    maps = display.detach().cpu().double().numpy()
    factor = max(1, round(_OVERLAY_SIDE / max(maps.shape[1:])))
    height, width = maps.shape[1] * factor, maps.shape[2] * factor  # panel size in pixels
    dpi, gap = 100, 8
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for i, title in enumerate(titles):
        image = images[i] if images.shape[3] == 3 else images[i].mean(2, keepdims=True)
        pictures = (
            np.broadcast_to(image, (*image.shape[:2], 3)),
            overlay(image, maps[i], percentile),
        )
        figure = plt.figure(figsize=((2 * width + gap) / dpi, height / dpi), dpi=dpi)
        for column, picture in enumerate(pictures):
            left = column * (width + gap) / (2 * width + gap)
            axis = figure.add_axes((left, 0.0, width / (2 * width + gap), 1.0))
            axis.imshow(picture, vmin=0, vmax=1, interpolation="nearest")
            axis.set_axis_off()
        figure.suptitle(title, fontsize=8, y=1.0, va="bottom")
        path = folder / f"{i:05d}.png"
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.05)
        plt.close(figure)
        written.append(path)
    return written
