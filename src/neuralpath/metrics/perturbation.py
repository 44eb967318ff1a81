"""Pixel-perturbation metrics for saliency maps: LeRF/MoRF curves, deletion and insertion AUC,
and the protocols every saliency metric of :mod:`neuralpath.metrics` shares.

**One explain signature**: an :data:`Explainer` ``explain(inputs [B, C, H, W], targets [B]) ->
maps`` (``[B, C, H, W]``, ``[B, 1, H, W]`` or ``[B, H, W]``) is built once per model (ours and
Captum's: :func:`neuralpath.attribution.make_explainer`, or any function of that shape); an
:data:`ExplainerFactory` builds one for another model (the sanity check's randomised copies).

**One call shape** (:class:`AttributionMetric`): ``metric(model, inputs, targets, explanation)
-> result``, ``targets`` ``[B]`` classes or None (the model's prediction), ``explanation`` the
maps or an :data:`Explainer` (the sanity check: an :data:`ExplainerFactory`); localisation
metrics also take ``masks=``. Every metric and result says its direction in
``higher_is_better``; results give a JSON-ready ``summary()``.

Conventions, shared by :mod:`~neuralpath.metrics.roar`:

* **Pixel relevance** is the attribution reduced over channels, by default the sum of absolute
  values (``"sum-abs"``; also ``"sum"``, ``"max-abs"``, ``"signed-max-abs"``).
* **Ordering**: pixels are sorted by relevance with a *stable* sort, so pixels of equal relevance
  are always taken in row-major order (lowest flat index ``h * W + w`` first), both for the most
  and for the least relevant first. Results are therefore deterministic.
* **Removing** a pixel (``removal``):

  - ``"baseline"`` (default): set all its channels to the baseline (default 0 = the data-set
    mean in normalised space; a number, a ``[C]`` tensor of per-channel values or a full image);
  - ``"noisy-linear"``: ROAD's noisy linear imputation (Rong et al., ICML 2022), so that the
    shape of the removed region leaks less class information: per channel, every removed pixel
    is the weighted mean of its 8 neighbours (1/6 direct, 1/12 diagonal, renormalised at the
    border; kept neighbours give known values), solved jointly as one sparse linear system per
    image, plus Gaussian noise of std ``noise_std`` (default 0.01 as in ROAD [paper], in the
    normalised space). The noise of an image is drawn from a generator seeded by ``seed`` and a
    hash of the image's values [ours], so it does not depend on batching; an image with every
    pixel removed has no neighbour to impute from and becomes the baseline plus noise [ours].
    The imputation equals Quantus's (``noisy_linear_imputation``, noise off); its ``ROAD``
    metric differs from LeRF/MoRF with this removal in what it reports (accuracy on the imputed
    images, MoRF order only), in its counts (``floor(q * N / 100)``) and in its unseeded noise.
* ``p`` is the softmax probability of the target class: the model's prediction on the clean
  input when ``targets`` is None, else the given labels.
* Counts: ``q`` % of ``N = H * W`` pixels is ``round(q * N / 100)`` (halves round up).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from neuralpath.errors import InputError, ShapeError, check_non_negative
from neuralpath.gating import GatedModel, check_inputs, frozen
from neuralpath.seeding import sample_seed
from neuralpath.targets import resolve_target

Explainer = Callable[[Tensor, Tensor], Tensor]
"""``explain(inputs [B, C, H, W], targets [B]) -> maps [B, C|1, H, W] or [B, H, W]``, built once
per model and called per batch."""
ExplainerFactory = Callable[[nn.Module], Explainer]
"""``for_model(model) -> Explainer``: the same method built for ``model`` (the target or a changed
copy with the same modules); called once per model state, not per batch."""


class MetricResult(Protocol):
    """What every metric returns: its direction and a JSON-ready summary."""

    higher_is_better: bool

    def summary(self) -> dict[str, Any]: ...


class AttributionMetric(Protocol):
    """``metric(model, inputs [B, C, H, W], targets [B] | None, explanation) -> MetricResult``;
    ``higher_is_better``: the metric's direction."""

    name: str
    higher_is_better: bool

    def __call__(
        self, model: nn.Module, inputs: Tensor, targets: Any, explanation: Any, /
    ) -> MetricResult: ...


Reduction = Literal["sum-abs", "sum", "max-abs", "signed-max-abs"]
REDUCTIONS: tuple[str, ...] = ("sum-abs", "sum", "max-abs", "signed-max-abs")
Baseline = float | Tensor
Removal = Literal["baseline", "noisy-linear"]
REMOVALS: tuple[str, ...] = ("baseline", "noisy-linear")
DEFAULT_NOISE_STD = 0.01
"""ROAD's noise std of the imputed pixels (Rong et al. 2022) [paper]."""
DEFAULT_PERCENTAGES: tuple[float, ...] = tuple(float(q) for q in range(1, 11))


def pixel_relevance(attributions: Tensor, reduction: str = "sum-abs") -> Tensor:
    """Per-pixel relevance ``[B, H, W]`` of ``attributions [B, C, H, W]`` (or ``[B, H, W]``).

    ``reduction`` over channels: ``"sum-abs"`` (Σ|a|, default), ``"sum"`` (Σa), ``"max-abs"``
    (max|a|) or ``"signed-max-abs"`` (the channel value of largest magnitude, with its sign).
    A ``[B, H, W]`` map is returned as is for ``"sum"``/``"signed-max-abs"``, abs otherwise.
    """
    if reduction not in REDUCTIONS:
        raise InputError(
            f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}"
        )
    if not isinstance(attributions, Tensor) or attributions.dim() not in (3, 4):
        shape = (
            list(attributions.shape)
            if isinstance(attributions, Tensor)
            else type(attributions).__name__
        )
        raise ShapeError(f"attributions must be [B, C, H, W] or [B, H, W], got {shape}")
    a = attributions.detach().float()
    if a.dim() == 3:
        a = a.unsqueeze(1)
    if reduction == "sum-abs":
        return a.abs().sum(dim=1)
    if reduction == "sum":
        return a.sum(dim=1)
    if reduction == "max-abs":
        return a.abs().amax(dim=1)
    index = a.abs().argmax(dim=1, keepdim=True)
    return a.gather(1, index).squeeze(1)


def check_percentages(percentages: Sequence[float]) -> tuple[float, ...]:
    """Validate a non-empty list of percentages, each in (0, 100]."""
    values = tuple(float(q) for q in percentages)
    if not values:
        raise InputError("need at least one percentage q")
    bad = [q for q in values if not 0.0 < q <= 100.0]
    if bad:
        raise InputError(f"percentages must lie in (0, 100], got {bad}")
    return values


def pixel_count(percentage: float, num_pixels: int) -> int:
    """``round(percentage * num_pixels / 100)`` with halves rounded up."""
    return int(percentage * num_pixels / 100.0 + 0.5)


def relevance_order(relevance: Tensor, most_relevant_first: bool = True) -> Tensor:
    """Flat pixel indices ``[B, H*W]`` sorted by relevance (``relevance``: ``[B, H, W]``).

    Stable: pixels of equal relevance keep row-major order in both directions.
    """
    flat = relevance.reshape(relevance.shape[0], -1)
    return flat.sort(dim=1, descending=most_relevant_first, stable=True).indices


def order_ranks(order: Tensor) -> Tensor:
    """Inverse permutation of ``order [B, N]``: ``rank[b, order[b, i]] = i``."""
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def top_mask(ranks: Tensor, count: int, spatial: tuple[int, int]) -> Tensor:
    """Boolean ``[B, 1, H, W]`` mask of the first ``count`` pixels of each ranking ``[B, H*W]``."""
    return (ranks < count).view(ranks.shape[0], 1, *spatial)


def baseline_like(baseline: Baseline, inputs: Tensor) -> Tensor:
    """Broadcast a scalar, ``[C]``, ``[C, H, W]`` or ``[B, C, H, W]`` baseline to ``inputs``."""
    if not isinstance(baseline, Tensor):
        return inputs.new_full((1, 1, 1, 1), float(baseline)).expand_as(inputs)
    value = baseline.to(device=inputs.device, dtype=inputs.dtype)
    if value.dim() == 1 and value.shape[0] == inputs.shape[1]:
        value = value.view(1, -1, 1, 1)
    elif value.dim() == 3:
        value = value.unsqueeze(0)
    if value.dim() != 4:
        raise ShapeError(
            f"baseline of shape {list(baseline.shape)} does not fit inputs {list(inputs.shape)}"
        )
    try:
        return value.expand_as(inputs)
    except RuntimeError as exc:
        raise ShapeError(
            f"baseline of shape {list(baseline.shape)} does not fit inputs {list(inputs.shape)}"
        ) from exc


def check_removal(removal: str, noise_std: float, seed: int = 0) -> None:
    """Raise :class:`InputError` for an unknown ``removal``, a negative ``noise_std`` or a
    ``seed`` that is not an integer."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an integer, got {seed!r}")
    if removal not in REMOVALS:
        raise InputError(f"unknown removal {removal!r}; expected one of {', '.join(REMOVALS)}")
    check_non_negative(noise_std, "noise_std")


# ROAD's neighbourhood: (row offset, column offset, weight); the weights sum to 1.
_NEIGHBOURS: tuple[tuple[int, int, float], ...] = (
    (-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6),
    (0, 1, 1 / 6), (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12),
)  # fmt: skip


def _solve_road_system(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Solve ROAD's system for one image: ``image [C, H, W]`` float64, ``removed [H, W]`` bool
    with at least one pixel kept; returns the imputed values ``[C, n]`` of the ``n`` removed
    pixels in row-major order. Each removed pixel ``i`` satisfies
    ``S_i x_i - Σ_{removed j} w_ij x_j = Σ_{kept j} w_ij v_j``, ``S_i`` = Σ of the weights of its
    neighbours inside the image."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import spsolve

    channels, height, width = image.shape
    values = image.reshape(channels, -1)
    flat_removed = removed.reshape(-1)
    unknown = np.flatnonzero(flat_removed)
    n = unknown.size
    variable = np.full(flat_removed.size, -1)
    variable[unknown] = np.arange(n)
    rows, cols = np.divmod(unknown, width)
    total = np.zeros(n)
    rhs = np.zeros((n, channels))
    lhs_rows, lhs_cols, lhs_values = [np.arange(n)], [np.arange(n)], []
    for dy, dx, weight in _NEIGHBOURS:
        r, c = rows + dy, cols + dx
        inside = np.flatnonzero((r >= 0) & (r < height) & (c >= 0) & (c < width))
        neighbour = r[inside] * width + c[inside]
        total[inside] += weight
        free = flat_removed[neighbour]
        lhs_rows.append(inside[free])
        lhs_cols.append(variable[neighbour[free]])
        lhs_values.append(np.full(int(free.sum()), -weight))
        np.add.at(rhs, inside[~free], weight * values[:, neighbour[~free]].T)
    matrix = csc_matrix(
        (
            np.concatenate([total, *lhs_values]),
            (np.concatenate(lhs_rows), np.concatenate(lhs_cols)),
        ),
        shape=(n, n),
    )
    return np.asarray(spsolve(matrix, rhs)).reshape(n, channels).T


def _pixel_mask(removed: Tensor, inputs: Tensor) -> Tensor:
    """Bool ``removed`` (``[B, 1, H, W]`` or ``[B, H, W]``) as ``[B, 1, H, W]`` on ``inputs``' device."""
    b, _, h, w = inputs.shape
    if (
        not isinstance(removed, Tensor)
        or removed.dtype != torch.bool
        or tuple(removed.shape) not in ((b, 1, h, w), (b, h, w))
    ):
        shape = list(removed.shape) if isinstance(removed, Tensor) else type(removed).__name__
        raise ShapeError(f"removed must be a bool mask [B, 1, H, W] of inputs, got {shape}")
    return removed.reshape(b, 1, h, w).to(inputs.device)


def _impute_image(
    image: Tensor, removed: np.ndarray, fill: Tensor, noise_std: float, seed: int
) -> Tensor:
    """One CPU ``image [C, H, W]`` with its ``removed [H, W]`` pixels imputed (``fill [C, H, W]``
    when all are removed) plus seeded noise, as float64 ``[C, H, W]`` (kept pixels: noisy too,
    the caller keeps the originals)."""
    result = image.to(torch.float64, copy=True)
    if removed.all():
        result.copy_(fill)
    else:
        solution = _solve_road_system(result.numpy(), removed)
        result.view(image.shape[0], -1)[:, torch.from_numpy(removed.reshape(-1))] = (
            torch.from_numpy(solution)
        )
    if noise_std > 0:
        generator = torch.Generator().manual_seed(sample_seed(seed, image))
        result += noise_std * torch.randn(image.shape, generator=generator, dtype=torch.float64)
    return result


def noisy_linear_imputation(
    inputs: Tensor,
    removed: Tensor,
    *,
    noise_std: float = DEFAULT_NOISE_STD,
    seed: int = 0,
    fill: Baseline = 0.0,
) -> Tensor:
    """ROAD's noisy linear imputation of the ``removed`` pixels (bool ``[B, 1, H, W]`` or
    ``[B, H, W]``) of ``inputs [B, C, H, W]``; kept pixels are returned unchanged.

    Solved in float64 with ``scipy.sparse.linalg.spsolve``, one image at a time, so a batch
    equals imputing each image alone. ``noise_std``: std of the Gaussian noise added to every
    removed value, drawn per image from ``seed`` and a hash of the image; ``fill`` (a
    :data:`Baseline`): the value of images with every pixel removed, before noise [ours].
    """
    check_removal("noisy-linear", noise_std, seed)
    mask = _pixel_mask(removed, inputs)
    images = inputs.detach().cpu()
    flags = mask[:, 0].cpu().numpy()
    fills = baseline_like(fill, images)
    imputed = images.to(torch.float64, copy=True)
    for b in np.flatnonzero(flags.reshape(len(flags), -1).any(axis=1)):
        imputed[b] = _impute_image(images[b], flags[b], fills[b], noise_std, seed)
    return torch.where(mask, imputed.to(inputs.device, inputs.dtype), inputs)


def remove_pixels(
    inputs: Tensor,
    removed: Tensor,
    removal: Removal = "baseline",
    *,
    baseline: Baseline = 0.0,
    noise_std: float = DEFAULT_NOISE_STD,
    seed: int = 0,
) -> Tensor:
    """``inputs [B, C, H, W]`` with the ``removed`` pixels (bool ``[B, 1, H, W]``/``[B, H, W]``)
    set to ``baseline`` or imputed by :func:`noisy_linear_imputation` (see the module's
    conventions); ``noise_std``/``seed`` apply to ``"noisy-linear"`` only."""
    check_removal(removal, noise_std, seed)
    if removal == "noisy-linear":
        return noisy_linear_imputation(
            inputs, removed, noise_std=noise_std, seed=seed, fill=baseline
        )
    return torch.where(_pixel_mask(removed, inputs), baseline_like(baseline, inputs), inputs)


def check_batch(inputs: Tensor) -> None:
    """Raise :class:`InputError` unless ``inputs`` is a non-empty finite ``[B, C, H, W]`` batch."""
    if isinstance(inputs, Tensor) and inputs.dim() >= 1 and inputs.shape[0] == 0:
        raise InputError("empty batch: inputs has no samples")
    check_inputs(inputs)
    if inputs.dim() != 4:
        raise InputError(f"inputs must be images [B, C, H, W], got shape {list(inputs.shape)}")


def check_map_shape(attributions: Tensor, inputs: Tensor) -> None:
    """Raise :class:`ShapeError` unless ``attributions`` is ``[B, C|1, H, W]``/``[B, H, W]`` of ``inputs``."""
    b, c, h, w = inputs.shape
    if not isinstance(attributions, Tensor) or tuple(attributions.shape) not in (
        (b, c, h, w),
        (b, 1, h, w),
        (b, h, w),
    ):
        shape = (
            list(attributions.shape)
            if isinstance(attributions, Tensor)
            else type(attributions).__name__
        )
        raise ShapeError(f"attributions of shape {shape} do not match inputs {[b, c, h, w]}")


@torch.no_grad()
def predict_proba(model: nn.Module, inputs: Tensor, batch_size: int = 256) -> Tensor:
    """Softmax probabilities ``[B, K]`` of ``model`` (eval mode, restored after) in batches."""
    with frozen(model):
        parts = [
            model(inputs[i : i + batch_size]).softmax(dim=1)
            for i in range(0, inputs.shape[0], batch_size)
        ]
    return torch.cat(parts)


class FastLayout(nn.Module):
    """``gated.model`` fed channels-last copies of its inputs when it accepts them
    (:meth:`~neuralpath.gating.GatedModel.fast_layout`): the same outputs to float rounding,
    and on CPU faster convolutions and pooling, for the many forwards of the metrics."""

    def __init__(self, gated: GatedModel):
        super().__init__()
        self.model = gated.model
        self.layout = gated.fast_layout

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits ``[B, K]`` of ``inputs [B, C, H, W]``."""
        logits: Tensor = self.model(self.layout(inputs))
        return logits


def model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def resolve_targets(
    model: nn.Module, inputs: Tensor, targets: Any, batch_size: int = 256
) -> Tensor:
    """``targets`` as a ``[B]`` long tensor; None means the model's prediction on ``inputs``."""
    probs = predict_proba(model, inputs, batch_size)
    return resolve_target(probs, targets)


def explain_in_batches(
    explain: Explainer, inputs: Tensor, targets: Tensor, batch_size: int | None = None
) -> Tensor:
    """Maps of ``inputs [B, C, H, W]`` for ``targets [B]``, ``explain`` called on at most
    ``batch_size`` samples at a time (None: all at once), concatenated and detached."""
    if batch_size is None or batch_size >= inputs.shape[0]:
        return explain(inputs, targets).detach()
    _check_positive_int("batch_size", batch_size)
    return torch.cat(
        [
            explain(inputs[i : i + batch_size], targets[i : i + batch_size]).detach()
            for i in range(0, inputs.shape[0], batch_size)
        ]
    )


def maps_of(explanation: Tensor | Explainer, inputs: Tensor, targets: Tensor) -> Tensor:
    """The maps an ``explanation`` stands for: itself (given maps), or an :data:`Explainer`
    called once on the whole batch (callers that hold many images pass maps computed with
    :func:`explain_in_batches`); their shape checked against ``inputs``."""
    if isinstance(explanation, Tensor):
        maps = explanation
    elif callable(explanation):
        maps = explanation(inputs, targets)
    else:
        raise InputError(
            f"explanation must be maps (a tensor) or an explain(inputs, targets) function, got "
            f"{type(explanation).__name__}"
        )
    check_map_shape(maps, inputs)
    return maps


def relevance_for(
    inputs: Tensor, targets: Tensor, explanation: Tensor | Explainer, reduction: str
) -> Tensor:
    """Pixel relevance ``[B, H, W]`` of an ``explanation`` (see :func:`maps_of`)."""
    attributions = maps_of(explanation, inputs, targets)
    relevance = pixel_relevance(attributions.to(inputs.device), reduction)
    if not torch.isfinite(relevance).all():
        raise InputError("attributions contain NaN or infinite values")
    return relevance


@dataclass
class CurveResult:
    """A perturbation curve per sample.

    ``fractions [Q]``: fraction of pixels removed/inserted (x axis); ``curve [B, Q]``: the
    metric's value per sample and step; ``area [B]``: area under each sample's curve (see the
    metric); ``higher_is_better``: the metric's direction.
    """

    name: str
    fractions: Tensor
    curve: Tensor
    area: Tensor
    higher_is_better: bool

    @property
    def mean_curve(self) -> Tensor:
        return self.curve.mean(dim=0)

    def summary(self) -> dict[str, Any]:
        """JSON-ready means over the batch."""
        return {
            "metric": self.name,
            "higher_is_better": self.higher_is_better,
            "fractions": [round(f, 6) for f in self.fractions.tolist()],
            "curve": self.mean_curve.tolist(),
            "area": self.area.mean().item(),
            "area_std": self.area.std().item() if self.area.numel() > 1 else 0.0,
            "samples": int(self.curve.shape[0]),
        }


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")


class _PixelCurve(ABC):
    """What every pixel-removal curve shares: its settings, ``direction`` and the call that turns
    inputs and a saliency map into pixel ranks; subclasses compute the curve (:meth:`_curve`).

    Settings: ``reduction`` (channels to pixel relevance), ``baseline``, ``batch_size`` (model
    calls), ``removal`` (``"baseline"`` or ``"noisy-linear"``, see the module's conventions) with
    ``noise_std`` and ``seed`` for the noise of ``"noisy-linear"``.
    """

    name = "curve"
    higher_is_better = False
    most_relevant_first = True

    def __init__(
        self,
        *,
        reduction: str = "sum-abs",
        baseline: Baseline = 0.0,
        batch_size: int = 256,
        removal: Removal = "baseline",
        noise_std: float = DEFAULT_NOISE_STD,
        seed: int = 0,
    ):
        if reduction not in REDUCTIONS:
            raise InputError(
                f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}"
            )
        _check_positive_int("batch_size", batch_size)
        check_removal(removal, noise_std, seed)
        self.reduction = reduction
        self.baseline = baseline
        self.batch_size = batch_size
        self.removal = removal
        self.noise_std = noise_std
        self.seed = seed

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    def __call__(
        self, model: nn.Module, inputs: Tensor, targets: Any, explanation: Tensor | Explainer
    ) -> CurveResult:
        """Curves ``[B, Q]`` for ``inputs [B, C, H, W]`` on ``model``'s device; ``targets``:
        ``[B]`` classes, an int or None (the prediction); ``explanation``: maps ``[B, C|1, H, W]``
        / ``[B, H, W]`` or an :data:`Explainer`."""
        check_batch(inputs)
        inputs = inputs.to(model_device(model))
        probs = predict_proba(model, inputs, self.batch_size)
        target = resolve_target(probs, targets)
        relevance = relevance_for(inputs, target, explanation, self.reduction)
        ranks = order_ranks(
            relevance_order(relevance, most_relevant_first=self.most_relevant_first)
        )
        fractions, values, area = self._curve(model, inputs, target, probs, ranks)
        return CurveResult(self.name, fractions, values, area, self.higher_is_better)

    @abstractmethod
    def _curve(
        self, model: nn.Module, inputs: Tensor, target: Tensor, probs: Tensor, ranks: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(fractions [Q], curve [B, Q], area [B])`` given the pixel ``ranks`` ``[B, H·W]``."""

    def _removed(self, inputs: Tensor, ranks: Tensor, count: int, *, keep: bool = False) -> Tensor:
        """``inputs`` with their top-``count`` ranked pixels removed (``keep``: all other pixels
        removed instead), by the metric's ``removal``."""
        mask = top_mask(ranks, count, (inputs.shape[2], inputs.shape[3]))
        return remove_pixels(
            inputs,
            ~mask if keep else mask,
            self.removal,
            baseline=self.baseline,
            noise_std=self.noise_std,
            seed=self.seed,
        )

    def _target_probability(self, model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
        return predict_proba(model, x, self.batch_size).gather(1, target[:, None]).squeeze(1)


class PixelPerturbation(_PixelCurve):
    """LeRF (least relevant first) or MoRF (most relevant first) pixel perturbation.

    For each ``q`` in ``percentages`` remove the ``q`` % least (LeRF) or most (MoRF) relevant
    pixels and report ``|p - p'| / p`` per sample. ``area``: trapezoidal area under the curve
    over the fraction axis ``q / 100``, divided by the width of the q range (the curve's mean
    height; the value itself for a single q). LeRF: lower is better; MoRF: higher is better.
    """

    def __init__(
        self,
        order: Literal["lerf", "morf"],
        percentages: Sequence[float] = DEFAULT_PERCENTAGES,
        **settings: Any,
    ):
        if order not in ("lerf", "morf"):
            raise InputError(f"order must be 'lerf' or 'morf', got {order!r}")
        super().__init__(**settings)
        self.order = order
        self.name = order
        self.higher_is_better = self.most_relevant_first = order == "morf"
        self.percentages = check_percentages(percentages)

    def _curve(
        self, model: nn.Module, inputs: Tensor, target: Tensor, probs: Tensor, ranks: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        p = probs.gather(1, target[:, None]).squeeze(1)
        curve = []
        for q in self.percentages:
            perturbed = self._removed(inputs, ranks, pixel_count(q, ranks.shape[1]))
            curve.append((p - self._target_probability(model, perturbed, target)).abs() / p)
        values = torch.stack(curve, dim=1)
        fractions = torch.tensor(self.percentages, dtype=values.dtype, device=values.device) / 100.0
        return fractions, values, _mean_height(values, fractions)


class LeRF(PixelPerturbation):
    """Remove the least relevant pixels first; ``|p - p'| / p`` (lower is better)."""

    def __init__(self, percentages: Sequence[float] = DEFAULT_PERCENTAGES, **settings: Any):
        super().__init__("lerf", percentages, **settings)


class MoRF(PixelPerturbation):
    """Remove the most relevant pixels first; ``|p - p'| / p`` (higher is better)."""

    def __init__(self, percentages: Sequence[float] = DEFAULT_PERCENTAGES, **settings: Any):
        super().__init__("morf", percentages, **settings)


def _mean_height(curve: Tensor, fractions: Tensor) -> Tensor:
    if fractions.numel() == 1:
        return curve[:, 0].clone()
    order = fractions.argsort()
    x, y = fractions[order], curve[:, order]
    return torch.trapezoid(y, x, dim=1) / (x[-1] - x[0])


class _ProgressiveCurve(_PixelCurve):
    """Deletion/insertion: ``steps + 1`` points at fractions ``k / steps`` of the pixels; the
    target probability after each step ``[B, steps + 1]`` and its trapezoidal AUC ``[B]``."""

    insert = False

    def __init__(self, steps: int = 20, **settings: Any):
        _check_positive_int("steps", steps)
        super().__init__(**settings)
        self.steps = steps

    def _curve(
        self, model: nn.Module, inputs: Tensor, target: Tensor, probs: Tensor, ranks: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        num_pixels = ranks.shape[1]
        curve = []
        for k in range(self.steps + 1):
            count = (2 * k * num_pixels + self.steps) // (2 * self.steps)  # round(k N / steps)
            x = self._removed(inputs, ranks, count, keep=self.insert)
            curve.append(self._target_probability(model, x, target))
        values = torch.stack(curve, dim=1)
        fractions = (
            torch.arange(self.steps + 1, dtype=values.dtype, device=values.device) / self.steps
        )
        return fractions, values, torch.trapezoid(values, fractions, dim=1)


class Deletion(_ProgressiveCurve):
    """Delete the most relevant pixels first (by ``removal``); AUC of ``p`` (lower is better)."""

    name = "deletion"
    higher_is_better = False
    insert = False


class Insertion(_ProgressiveCurve):
    """Insert the most relevant pixels first into the removed image (the baseline, or with
    ``removal="noisy-linear"`` the inserted pixels' imputation); AUC of ``p`` (higher is better)."""

    name = "insertion"
    higher_is_better = True
    insert = True
