"""Pathway Gradient and Grad-CAM on the pathway model (spec §3), Captum- and Quantus-compatible.

* :class:`PathwayGradient`: ``PG(x) = ∇_x y_c(H_P(x))`` with the pathway ``P`` found by a finder on
  the same inputs and then held fixed: removed units pass neither signal nor gradient.
* :class:`PathwayGradCAM`: Grad-CAM computed from the gated activations and gradients of ``H_P``.

Both are :class:`captum.attr.GradientAttribution` subclasses, so they work inside
``captum.attr.NoiseTunnel``; :func:`quantus_explain_func` exposes every method of
:data:`ATTRIBUTION_METHODS` with Quantus' ``explain_func`` signature. :func:`signed_max_abs` is
the display reduction of a map to ``[B, H, W]``. :func:`attribute_dataset`,
:meth:`AttributionRun.save` and :func:`save_overlays` explain a data set (``neuralpath attribute``).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from neuralpath.gating import GatedModel, frozen
from neuralpath.io import atomic_path, save_tensors, write_json_atomic
from neuralpath.methods.base import FinderOptions, PathwayFinder, build_finder
from neuralpath.methods.critical import CriticalPathwayFinder
from neuralpath.pathway import Granularity, Pathway, check_sparsity
from neuralpath.targets import TargetType, resolve_target, select_logit

AttributionMethod = Callable[[GatedModel, Tensor, TargetType], Tensor]
"""``(gated, inputs [B, C, H, W], target) -> map``: ``[B, C, H, W]``, or ``[B, 1, H, W]`` (CAMs)."""

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


class _PathwayAttribution(GradientAttribution):
    """Shared machinery: resolve the target and the fixed pathway for a batch."""

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
                return self.finder.find_with_target(inputs, target)
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


class PathwayGradient(_PathwayAttribution):
    """``∇_x y_c(H_P(x))`` with ``P`` found by ``finder`` on the same inputs, then fixed.

    >>> pg = PathwayGradient(gated, NeuronMCT(gated, sparsity=0.9))
    >>> maps = pg.attribute(images)                # [B, C, H, W], target = prediction
    >>> smooth = NoiseTunnel(pg).attribute(images, nt_type="smoothgrad", stdevs=0.1)
    """

    @log_usage()
    @torch.enable_grad()
    def attribute(  # type: ignore[override]
        self, inputs: Tensor, target: TargetType = None, pathway: Pathway | None = None
    ) -> Tensor:
        """Pathway Gradient of ``inputs`` ``[B, *input_shape]``: same shape and dtype.

        ``target``: None (the model's prediction), an int, or ``[B]`` classes. ``pathway``: use
        this fixed pathway (``[B]`` or one sample broadcast) instead of running the finder.
        """
        inputs = _check_tensor_inputs(self.gated, inputs)
        pathway, cls = self.pathway_and_target(inputs, target, pathway)
        x = inputs.detach().requires_grad_(True)
        with self.gated.gate(pathway):
            logits = self.gated.model(x)
        if not logits.requires_grad:
            raise InputError(_NO_GRADIENT)
        (grad,) = torch.autograd.grad(select_logit(logits, cls).sum(), x, allow_unused=True)
        if grad is None:
            raise InputError(_NO_GRADIENT)
        _warn_about_zero_maps(
            grad,
            pathway,
            "Pathway Gradient",
            "no gradient reaches the input through their pathways",
        )
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
    warnings.warn(  # stacklevel: past attribute() and its two decorators, to the caller
        f"{int(zero.sum())} of {zero.shape[0]} {method} maps are all zero{cause}",
        ZeroMapsWarning,
        stacklevel=5,
    )


def default_cam_layer(gated: GatedModel) -> str:
    """The last gate site with a spatial ``(C, H, W)`` output (Grad-CAM's usual layer)."""
    spatial = [site.name for site in gated.sites if len(site.shape) == 3]
    if not spatial:
        raise LayerError("Grad-CAM needs a gate site with a spatial [C, H, W] output")
    return spatial[-1]


class PathwayGradCAM(_PathwayAttribution):
    """Grad-CAM of the pathway model: ``relu(Σ_k mean_hw(∂y_c/∂ã_k) · ã_k)``, upsampled.

    ``ã`` is the gated (masked) output of gate site ``layer`` (default: the last spatial site)
    in ``H_P``; the map is bilinearly upsampled to the input's H×W. All-zero maps raise a
    :class:`~neuralpath.errors.ZeroMapsWarning` naming the layers their pathways empty.
    """

    def __init__(
        self, gated: GatedModel, finder: PathwayFinder | None = None, layer: str | None = None
    ):
        super().__init__(gated, finder)
        self.layer = default_cam_layer(gated) if layer is None else layer
        if len(gated.site(self.layer).shape) != 3:
            raise LayerError(f"Grad-CAM layer {self.layer!r} has no spatial [C, H, W] output")

    @log_usage()
    @torch.enable_grad()
    def attribute(  # type: ignore[override]
        self, inputs: Tensor, target: TargetType = None, pathway: Pathway | None = None
    ) -> Tensor:
        """Grad-CAM of ``H_P`` for ``inputs`` ``[B, C, H, W]``: ``[B, 1, H, W]``, >= 0."""
        inputs = _check_tensor_inputs(self.gated, inputs)
        pathway, cls = self.pathway_and_target(inputs, target, pathway)
        x = inputs.detach().requires_grad_(True)  # puts the site outputs in the graph
        with self.gated.gate(pathway, record=True) as recording:
            logits = self.gated.model(x)
        activation = recording.activations[self.layer]
        if not logits.requires_grad:
            raise InputError(_NO_GRADIENT)
        (grad,) = torch.autograd.grad(
            select_logit(logits, cls).sum(), activation, allow_unused=True
        )
        if grad is None:
            raise InputError(f"no gradient reaches layer {self.layer!r} from the output")
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = (weights * activation.detach()).sum(dim=1, keepdim=True).clamp_min(0)
        cam = F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
        _warn_about_zero_maps(
            cam, pathway, "Pathway Grad-CAM", f"Grad-CAM at {self.layer} is nowhere positive"
        )
        return cam


def signed_max_abs(attributions: Tensor) -> Tensor:
    """Display map ``[B, H, W]`` from ``[B, C, H, W]``: per pixel the channel value of largest
    magnitude (sign kept), divided by the sample's max ``|value|`` (all-zero maps stay zero)."""
    if attributions.dim() != 4:
        raise InputError(f"attributions must be [B, C, H, W], got {list(attributions.shape)}")
    index = attributions.abs().argmax(dim=1, keepdim=True)
    picked = attributions.gather(1, index).squeeze(1)
    scale = picked.abs().flatten(1).amax(dim=1).clamp_min(torch.finfo(picked.dtype).tiny)
    return picked / scale.view(-1, 1, 1)


# Registry of attribution methods ------------------------------------------------------------

PATHWAY_METHODS = ("pathway-gradient", "pathway-grad-cam")
CAPTUM_METHODS = (
    "gradient",
    "input-x-gradient",
    "integrated-gradients",
    "guided-backprop",
    "grad-cam",
)
METHOD_NAMES: tuple[str, ...] = PATHWAY_METHODS + CAPTUM_METHODS


def _target_tensor(gated: GatedModel, inputs: Tensor, target: TargetType) -> Tensor:
    with torch.no_grad():
        return resolve_target(gated.forward(inputs), _as_target(target))


def _captum_method(name: str, layer: str | None) -> AttributionMethod:
    def run(gated: GatedModel, inputs: Tensor, target: TargetType = None) -> Tensor:
        gated.check_inputs(inputs)
        cls = _target_tensor(gated, inputs, target)
        x = inputs.detach().clone().requires_grad_(True)
        model = gated.model
        with frozen(model):
            if name == "gradient":
                return Saliency(model).attribute(x, target=cls, abs=False)
            if name == "input-x-gradient":
                return InputXGradient(model).attribute(x, target=cls)
            if name == "integrated-gradients":
                ig = IntegratedGradients(model)
                return ig.attribute(x, target=cls, n_steps=50, internal_batch_size=x.shape[0])
            if name == "guided-backprop":
                with warnings.catch_warnings():  # Captum announces its temporary ReLU hooks
                    warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
                    return GuidedBackprop(model).attribute(x, target=cls)
            return _captum_grad_cam(gated, x, cls, layer)

    run.__doc__ = f"Captum's {name} for ``(gated, inputs, target)``."
    run.__name__ = name
    return run


def _captum_grad_cam(
    gated: GatedModel, inputs: Tensor, target: Tensor, layer: str | None
) -> Tensor:
    site = gated.site(default_cam_layer(gated) if layer is None else layer)
    if site.name != site.module_name:
        # Captum hooks a module, not one call of a reused module (ResNet's relu): the same
        # Grad-CAM through our per-call gates, with every unit kept.
        keep_all = Pathway({site.name: torch.ones(1, site.units, dtype=torch.bool)}, "channel")
        return PathwayGradCAM(gated, layer=site.name).attribute(inputs, target, pathway=keep_all)
    module = gated.model.get_submodule(site.module_name)
    cam = LayerGradCam(gated.model, module).attribute(inputs, target=target, relu_attributions=True)
    return F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)


def make_attribution_method(
    name: str,
    *,
    finder: str = "cp-mct",
    sparsity: float = 0.9,
    granularity: Granularity = "element",
    seed: int = 0,
    layer: str | None = None,
    generator: str | None = None,
    settings: Mapping[str, Any] | None = None,
    verify_weights: bool = True,
) -> AttributionMethod:
    """An :data:`AttributionMethod` by name (see :data:`METHOD_NAMES`).

    ``finder``/``sparsity``/``granularity``/``seed``/``generator``/``settings``/``verify_weights``
    configure the pathway methods (any registered finder, see :class:`FinderOptions`; ``settings``
    as in ``neuralpath find --set``);
    ``layer`` is the Grad-CAM gate site (default: the last spatial site). Integrated Gradients
    uses 50 steps from an all-zero baseline, in passes of ``B`` rows.
    """
    if name not in METHOD_NAMES:
        raise InputError(
            f"unknown attribution method {name!r}; available: {', '.join(METHOD_NAMES)}"
        )
    if name in CAPTUM_METHODS:
        if settings or generator:
            raise InputError(f"{name!r} has no pathway finder to take settings or a generator")
        return _captum_method(name, layer)
    check_sparsity(sparsity)
    options = FinderOptions(
        sparsity, granularity, generator, seed, dict(settings or {}), verify_weights
    )

    def run(gated: GatedModel, inputs: Tensor, target: TargetType = None) -> Tensor:
        path_finder = build_finder(finder, gated, options)
        if name == "pathway-gradient":
            return PathwayGradient(gated, path_finder).attribute(inputs, target)
        return PathwayGradCAM(gated, path_finder, layer).attribute(inputs, target)

    run.__doc__ = f"{name} with the {finder!r} finder at sparsity {sparsity} ({granularity})."
    run.__name__ = name
    return run


ATTRIBUTION_METHODS: dict[str, AttributionMethod] = {
    n: make_attribution_method(n) for n in METHOD_NAMES
}
"""Every method with its defaults (pathway methods: ``cp-mct``, element units, sparsity 0.9)."""


def quantus_explain_func(
    model: nn.Module,
    inputs: np.ndarray | Tensor,
    targets: np.ndarray | Tensor | int | None,
    *,
    method: str = "pathway-gradient",
    finder: str = "cp-mct",
    sparsity: float = 0.9,
    granularity: Granularity = "element",
    layers: Sequence[str] | None = None,
    seed: int = 0,
    generator: str | None = None,
    settings: Mapping[str, Any] | None = None,
    verify_weights: bool = True,
    device: str | torch.device | None = None,
    **unused: Any,
) -> np.ndarray:
    """Quantus ``explain_func``: maps of ``inputs`` ``[B, C, H, W]`` as a float32 numpy array.

    Gate sites are discovered on ``model`` (``layers`` as in :meth:`GatedModel.discover`); the
    other keywords select the method (:func:`make_attribution_method`; Quantus' randomisation
    tests with ``finder="gencnp"`` need ``verify_weights=False``). Output ``[B, C, H, W]``
    (``[B, 1, H, W]`` for Grad-CAM). Unknown keywords raise :class:`InputError`.
    """
    if unused:
        raise InputError(f"quantus_explain_func got unexpected keywords: {sorted(unused)}")
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
    explain = make_attribution_method(
        method,
        finder=finder,
        sparsity=sparsity,
        granularity=granularity,
        seed=seed,
        generator=generator,
        settings=settings,
        verify_weights=verify_weights,
    )
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
    method: str | AttributionMethod,
    dataset: Dataset,
    *,
    batch_size: int = 32,
    limit: int | None = None,
    explain: str = "prediction",
    progress: bool = True,
) -> AttributionRun:
    """Explain the first ``limit`` items ``(image, label)`` of ``dataset`` in batches.

    ``method``: a name of :data:`ATTRIBUTION_METHODS` or an :data:`AttributionMethod`;
    ``explain``: the class to explain, the model's ``"prediction"`` or the true ``"label"``.
    Timing covers the attribution calls only.
    """
    if explain not in EXPLAIN_CLASSES:
        raise InputError(f"explain must be one of {EXPLAIN_CLASSES}, got {explain!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    name = method if isinstance(method, str) else getattr(method, "__name__", "custom")
    run = make_attribution_method(method) if isinstance(method, str) else method
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
        result = run(gated, images, cls).detach()
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
    return (1.0 - alpha) * grey + alpha * colour


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
