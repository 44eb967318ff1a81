"""Model-randomisation sanity check for saliency maps (cascading randomisation, Adebayo et al. 2018).

On a deep copy of the model (the user's model is never touched), the weight layers are
re-initialised one by one from the output towards the input; after each step the maps are
recomputed for the same inputs and targets and compared with the maps of the trained model.
A method that depends on the learned weights loses similarity quickly: **lower is better**.

Maps: the attributions reduced over channels by ``reduction`` (default ``"signed-max-abs"``,
the display map of the spec) and divided by their maximum absolute value, giving 2-D maps in
[-1, 1]. Similarities per sample, per randomisation step:

* ``ssim``: :func:`skimage.metrics.structural_similarity` of the normalised maps (data range 2);
* ``spearman`` / ``spearman_abs``: Spearman rank correlation (average ranks for ties) of the
  maps and of their absolute values, computed batched in torch;
* ``hog``: Pearson correlation of :func:`skimage.feature.hog` features of the absolute maps.

A correlation with a constant map is undefined and reported as NaN (summaries use nan-means).
Layers: by default every ``nn.Conv*``/``nn.Linear`` module, in the order the forward calls them;
re-initialisation uses the module's own ``reset_parameters()`` under a seeded RNG fork (other
parameterised modules, when named explicitly, get Gaussian noise with their parameters' std).

Maps come from an :data:`~neuralpath.metrics.perturbation.ExplainerFactory`: the explainer of
the trained model, then one built for the randomised copy after each step (a pathway method's
copy gets its own gated model and rebound finder, and under mean ablation the per-unit means of
that randomised copy: :func:`neuralpath.attribution.explainer_factory`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from neuralpath.errors import InputError, LayerError
from neuralpath.gating import frozen
from neuralpath.metrics.perturbation import (
    REDUCTIONS,
    Explainer,
    ExplainerFactory,
    check_batch,
    check_map_shape,
    explain_in_batches,
    model_device,
    pixel_relevance,
    resolve_targets,
)

MEASURES: tuple[str, ...] = ("ssim", "spearman", "spearman_abs", "hog")
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def normalised_maps(attributions: Tensor, reduction: str = "signed-max-abs") -> Tensor:
    """2-D maps ``[B, H, W]`` divided by their max ``|value|`` (all-zero maps stay zero)."""
    maps = pixel_relevance(attributions, reduction)
    scale = maps.flatten(1).abs().amax(dim=1).clamp(min=torch.finfo(maps.dtype).tiny)
    return maps / scale.view(-1, 1, 1)


def average_ranks(values: Tensor) -> Tensor:
    """Ranks ``1..N`` of each row of ``values [B, N]``; ties get their average rank (float64)."""
    batch, n = values.shape
    ordered, index = values.sort(dim=1, stable=True)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.long().cumsum(dim=1) - 1
    positions = torch.arange(1, n + 1, device=values.device, dtype=torch.float64).expand(batch, n)
    sums = torch.zeros(batch, n, dtype=torch.float64, device=values.device).scatter_add_(
        1, group, positions
    )
    counts = torch.zeros_like(sums).scatter_add_(1, group, torch.ones_like(positions))
    ranked = (sums / counts.clamp(min=1)).gather(1, group)
    return torch.empty_like(ranked).scatter_(1, index, ranked)


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation of ``a, b [B, N]`` (float64); NaN where a row is constant."""
    a = a.double() - a.double().mean(dim=1, keepdim=True)
    b = b.double() - b.double().mean(dim=1, keepdim=True)
    denom = a.norm(dim=1) * b.norm(dim=1)
    corr = (a * b).sum(dim=1) / denom
    return torch.where(denom > 0, corr.clamp(-1.0, 1.0), torch.full_like(corr, math.nan))


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Spearman rank correlation of ``a, b [B, ...]``: ``[B]``."""
    return pearson(average_ranks(a.flatten(1)), average_ranks(b.flatten(1)))


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """SSIM per sample of normalised maps ``a, b [B, H, W]`` in [-1, 1] (skimage, data range 2)."""
    from skimage.metrics import structural_similarity

    side = min(a.shape[1], a.shape[2])
    window = min(7, side if side % 2 else side - 1)
    if window < 3:
        raise InputError(f"maps of {a.shape[1]}x{a.shape[2]} pixels are too small for SSIM")
    xs, ys = a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()
    values = [
        structural_similarity(x, y, data_range=2.0, win_size=window)
        for x, y in zip(xs, ys, strict=True)
    ]
    return torch.tensor(values, dtype=torch.float64)


def hog_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of HOG features of ``|a|`` and ``|b|`` (``[B, H, W]``): ``[B]``.

    Cells of ``max(2, min(8, side // 4))`` pixels, 2×2 cells a block, 9 orientations.
    """
    from skimage.feature import hog

    side = min(a.shape[1], a.shape[2])
    cell = max(2, min(8, side // 4))
    if side < 2 * cell:
        raise InputError(f"maps of {a.shape[1]}x{a.shape[2]} pixels are too small for HOG")

    def features(maps: Tensor) -> Tensor:
        arrays = maps.detach().abs().double().cpu().numpy()
        rows = [
            hog(
                m,
                orientations=9,
                pixels_per_cell=(cell, cell),
                cells_per_block=(2, 2),
                feature_vector=True,
            )
            for m in arrays
        ]
        return torch.from_numpy(np.stack(rows))

    return pearson(features(a), features(b))


def similarities(
    reference: Tensor, maps: Tensor, measures: Sequence[str] = MEASURES
) -> dict[str, Tensor]:
    """Each similarity measure of normalised maps ``[B, H, W]`` against ``reference``: ``{name: [B]}``."""
    out: dict[str, Tensor] = {}
    for measure in measures:
        if measure == "ssim":
            out[measure] = ssim(reference, maps)
        elif measure == "spearman":
            out[measure] = spearman(reference, maps).cpu()
        elif measure == "spearman_abs":
            out[measure] = spearman(reference.abs(), maps.abs()).cpu()
        elif measure == "hog":
            out[measure] = hog_correlation(reference, maps)
        else:
            raise InputError(
                f"unknown similarity {measure!r}; expected one of {', '.join(MEASURES)}"
            )
    return out


def weight_layers(model: nn.Module, example: Tensor) -> list[str]:
    """Names of the ``nn.Conv*``/``nn.Linear`` modules of ``model`` in the order the forward calls them."""
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, WEIGHT_LAYERS):

            def hook(_m: nn.Module, _i: object, _o: object, name: str = name) -> None:
                if name not in order:
                    order.append(name)

            handles.append(module.register_forward_hook(hook))
    try:
        with frozen(model), torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    if not order:
        raise LayerError("the model has no Conv/Linear layer to randomise")
    return order


def randomise_(module: nn.Module, seed: int) -> None:
    """Re-initialise ``module``'s parameters in place under a seeded fork of the global RNG."""
    params = list(module.parameters())
    if not params:
        raise LayerError(f"module {type(module).__name__} has no parameters to randomise")
    devices = [params[0].device] if params[0].device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()  # type: ignore[operator]
        else:
            for param in params:
                std = param.float().std().item() if param.numel() > 1 else 1.0
                param.normal_(0.0, std if std > 0 else 1.0)


@dataclass
class SanityResult:
    """``layers[i]``: the layer randomised at step ``i`` (output first; the steps accumulate);
    ``scores[measure]``: ``[L, B]`` similarity to the trained model's maps after each step;
    ``zero_maps[i]``: how many maps are zero everywhere after step ``i`` (an all-zero map still
    scores a similarity above 0 against a mostly flat one)."""

    layers: list[str]
    scores: dict[str, Tensor]
    zero_maps: list[int]
    higher_is_better: bool = False

    def mean(self) -> dict[str, list[float]]:
        """Nan-mean over samples per step: ``{measure: [L]}``."""
        return {k: v.nanmean(dim=1).tolist() for k, v in self.scores.items()}

    def summary(self) -> dict[str, Any]:
        return {
            "metric": "sanity",
            "higher_is_better": self.higher_is_better,
            "layers": list(self.layers),
            "similarity": self.mean(),
            "zero_maps": list(self.zero_maps),
            "samples": int(next(iter(self.scores.values())).shape[1]) if self.scores else 0,
        }


class CascadingRandomisation:
    """Cascading model-parameter randomisation test; similarities per step (lower is better).

    ``layers``: the modules to randomise, output first (default: every conv/linear layer);
    ``seed``: step ``i`` re-initialises under seed ``seed + i``; ``measures``: of :data:`MEASURES`;
    ``reduction``: channels to a 2-D map; ``batch_size``: explainer calls on at most this many
    samples (None: the whole batch at once).
    """

    name = "sanity"
    higher_is_better = False
    direction = "lower"

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        *,
        seed: int = 0,
        measures: Sequence[str] = MEASURES,
        reduction: str = "signed-max-abs",
        batch_size: int | None = None,
    ):
        unknown = [m for m in measures if m not in MEASURES]
        if unknown or not measures:
            raise InputError(
                f"unknown similarity measures {unknown}; expected some of {', '.join(MEASURES)}"
            )
        if reduction not in REDUCTIONS:
            raise InputError(
                f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}"
            )
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise InputError(f"batch_size must be None or a positive integer, got {batch_size!r}")
        self.layers = None if layers is None else list(layers)
        self.seed = seed
        self.batch_size = batch_size
        self.measures = tuple(measures)
        self.reduction = reduction

    def cascade(self, model: nn.Module, example: Tensor) -> list[str]:
        """The layers in randomisation order (output first)."""
        if self.layers is None:
            return list(reversed(weight_layers(model, example)))
        modules = dict(model.named_modules())
        missing = [name for name in self.layers if name not in modules]
        if missing:
            raise LayerError(f"unknown layers {missing}")
        return list(self.layers)

    def __call__(
        self, model: nn.Module, inputs: Tensor, targets: Any, explanation: ExplainerFactory
    ) -> SanityResult:
        """Similarities ``[L, B]`` per measure for ``inputs [B, C, H, W]``.

        ``targets``: None (the trained model's predictions), an int or ``[B]`` labels; kept fixed
        for every randomised model. ``explanation``: builds the explainer of a model; called with
        ``model`` for the reference maps, then once per step with the randomised copy (``model``
        itself is never changed).
        """
        check_batch(inputs)
        inputs = inputs.to(model_device(model))
        targets = resolve_targets(model, inputs, targets)
        layers = self.cascade(model, inputs[:1])
        reference = normalised_maps(self._maps(explanation(model), inputs, targets), self.reduction)
        work = copy.deepcopy(model)
        modules = dict(work.named_modules())
        scores: dict[str, list[Tensor]] = {m: [] for m in self.measures}
        zero = []
        for step, name in enumerate(layers):
            randomise_(modules[name], self.seed + step)
            maps = self._maps(explanation(work), inputs, targets)
            zero.append(int((maps == 0).flatten(1).all(dim=1).sum()))
            for measure, value in similarities(
                reference, normalised_maps(maps, self.reduction), self.measures
            ).items():
                scores[measure].append(value)
        return SanityResult(layers, {m: torch.stack(v) for m, v in scores.items()}, zero)

    def _maps(self, explain: Explainer, inputs: Tensor, targets: Tensor) -> Tensor:
        maps = explain_in_batches(explain, inputs, targets, self.batch_size)
        check_map_shape(maps, inputs)
        return maps
