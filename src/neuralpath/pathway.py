"""The :class:`Pathway` type: per-sample masks over the gate sites of a model, and its algebra.

A pathway maps each gate-site name to a mask ``[B, C]`` (channel granularity) or
``[B, *site.element_shape]`` (element granularity). Binary pathways hold ``bool`` masks;
continuous ones (gates while optimising) hold floats. Units are counted over all layers together: unit ``i`` of
the flattened pathway (:meth:`Pathway.flatten`) is a channel or scalar of some layer, in site order.
"""

from __future__ import annotations

import functools
import math
import operator
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from neuralpath.errors import CheckpointError, InputError, ShapeError
from neuralpath.io import load_artifact, pack_bits, save_tensors, unpack_bits

Granularity = Literal["channel", "element"]
GRANULARITIES: tuple[Granularity, ...] = ("channel", "element")
_FORMAT = "neuralpath.pathway"
_CLASS_FORMAT = "neuralpath.class-pathways"


@contextmanager
def _corrupt_file(path: str | os.PathLike[str], kind: str) -> Iterator[None]:
    """Turn a malformed entry of a ``kind`` file (missing key, wrong type or shape) into
    :class:`CheckpointError` naming ``path``."""
    try:
        yield
    except (KeyError, TypeError, ShapeError, InputError) as exc:
        raise CheckpointError(f"corrupt {kind} file {path}: {exc}") from exc


def _check_granularity(granularity: str) -> Granularity:
    if granularity not in GRANULARITIES:
        raise InputError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    return granularity  # type: ignore[return-value]


def check_sparsity(sparsity: float) -> float:
    """Raise unless ``sparsity`` (fraction of units dropped) is a number in [0, 1)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or math.isnan(sparsity):
        raise InputError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if not 0.0 <= sparsity < 1.0:
        raise InputError(f"sparsity must be in [0, 1) (fraction of units dropped), got {sparsity}")
    return float(sparsity)


CONNECT_FLOOR = "connect_floor"
"""Metadata key of the per-sample floor of the connecting repair (:mod:`neuralpath.methods.connect`):
a list of one integer per sample, which :meth:`Pathway.select`, :meth:`Pathway.cat` and
:meth:`Pathway.expand` keep aligned with the samples."""

PER_SAMPLE_METADATA = (CONNECT_FLOOR,)


def repaired_samples(pathway: Pathway) -> Tensor:
    """``[B]`` bool on the CPU: which samples the connecting repair widened (``connect_floor`` > 0)."""
    floors = pathway.metadata.get(CONNECT_FLOOR)
    if floors is None:
        return torch.zeros(pathway.batch_size, dtype=torch.bool)
    return torch.as_tensor(floors, dtype=torch.long).reshape(-1).gt(0)


class Pathway(Mapping[str, Tensor]):
    """Masks of all gated layers for a batch of ``B`` samples: ``{site name: [B, C, ...]}``.

    A read-only mapping, so it can be handed to :meth:`GatedModel.gate` directly.
    ``metadata`` is free-form provenance (method, sparsity, ...) kept by save/load; the keys in
    :data:`PER_SAMPLE_METADATA` hold one value per sample.
    """

    def __init__(
        self,
        masks: Mapping[str, Tensor],
        granularity: Granularity = "channel",
        metadata: Mapping[str, Any] | None = None,
    ):
        self.granularity: Granularity = _check_granularity(granularity)
        if not masks:
            raise ShapeError("a pathway needs at least one layer")
        self._masks: dict[str, Tensor] = dict(masks)
        batch_sizes = {name: m.shape[0] if m.dim() else None for name, m in self._masks.items()}
        if len(set(batch_sizes.values())) != 1 or None in batch_sizes.values():
            raise ShapeError(f"all masks must share one batch dimension, got {batch_sizes}")
        for name, mask in self._masks.items():
            if mask.dim() < 2:
                raise ShapeError(
                    f"mask for layer {name!r} must be [B, C, ...], got {list(mask.shape)}"
                )
            if granularity == "channel" and mask.dim() != 2:
                raise ShapeError(
                    f"channel pathway mask for layer {name!r} must be [B, C], got {list(mask.shape)}"
                )
        self.metadata: dict[str, Any] = dict(metadata or {})

    # Mapping protocol -------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        kind = "binary" if self.is_binary else "continuous"
        return (
            f"Pathway({self.batch_size} samples, {len(self)} layers, {self.granularity}, {kind}, "
            f"{self.units_total} units)"
        )

    # Shape facts ------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return next(iter(self._masks.values())).shape[0]

    @property
    def layer_names(self) -> list[str]:
        return list(self._masks)

    @property
    def layer_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample mask shape of each layer."""
        return {name: tuple(m.shape[1:]) for name, m in self._masks.items()}

    @property
    def units(self) -> dict[str, int]:
        """Units per sample in each layer."""
        return {name: math.prod(shape) for name, shape in self.layer_shapes.items()}

    @property
    def units_total(self) -> int:
        return sum(self.units.values())

    @property
    def is_binary(self) -> bool:
        return all(m.dtype == torch.bool for m in self._masks.values())

    @property
    def device(self) -> torch.device:
        return next(iter(self._masks.values())).device

    # Construction and conversion --------------------------------------------------------------
    def _with(self, masks: Mapping[str, Tensor]) -> Pathway:
        return Pathway(masks, self.granularity, self.metadata)

    def to(self, device: torch.device | str) -> Pathway:
        return self._with({n: m.to(device) for n, m in self._masks.items()})

    def detach(self) -> Pathway:
        return self._with({n: m.detach() for n, m in self._masks.items()})

    def binarize(self, threshold: float = 0.0) -> Pathway:
        """Binary pathway keeping units whose mask value is ``> threshold``."""
        return self._with({n: m > threshold for n, m in self._masks.items()})

    def float(self) -> Pathway:
        return self._with({n: m.float() for n, m in self._masks.items()})

    def flatten(self) -> Tensor:
        """All layers' masks concatenated per sample: ``[B, units_total]``."""
        return torch.cat([m.reshape(m.shape[0], -1) for m in self._masks.values()], dim=1)

    def select(self, index: int | slice | Sequence[int] | Tensor) -> Pathway:
        """Samples ``index`` of the batch (an int keeps a batch dimension of 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        elif isinstance(index, Sequence) and not isinstance(index, Tensor):
            index = torch.as_tensor(list(index), dtype=torch.long)
        if isinstance(index, Tensor):
            index = index.to(self.device)
        metadata = dict(self.metadata)
        for key in PER_SAMPLE_METADATA:
            if key in metadata:
                picked = torch.as_tensor(metadata[key])[
                    index.cpu() if isinstance(index, Tensor) else index
                ]
                metadata[key] = picked.reshape(-1).tolist()
        return Pathway({n: m[index] for n, m in self._masks.items()}, self.granularity, metadata)

    def expand(self, batch_size: int) -> Pathway:
        """Repeat a one-sample pathway ``batch_size`` times (e.g. a class pathway for a batch)."""
        if self.batch_size != 1:
            raise ShapeError(f"expand needs a one-sample pathway, got {self.batch_size} samples")
        metadata = dict(self.metadata)
        for key in PER_SAMPLE_METADATA:
            if key in metadata:
                metadata[key] = list(metadata[key]) * batch_size
        masks = {n: m.expand(batch_size, *m.shape[1:]) for n, m in self._masks.items()}
        return Pathway(masks, self.granularity, metadata)

    @classmethod
    def cat(cls, pathways: Sequence[Pathway]) -> Pathway:
        """Concatenate pathways of the same layers and granularity along the batch."""
        if not pathways:
            raise ShapeError("cat needs at least one pathway")
        first = pathways[0]
        for other in pathways[1:]:
            first.check_compatible(other)
        masks = {n: torch.cat([p[n] for p in pathways]) for n in first.layer_names}
        metadata = dict(first.metadata)
        for key in PER_SAMPLE_METADATA:
            if any(key in p.metadata for p in pathways):
                metadata[key] = [
                    value for p in pathways for value in p.metadata.get(key, [0] * p.batch_size)
                ]
        return cls(masks, first.granularity, metadata)

    def check_compatible(self, other: Pathway) -> None:
        """Raise :class:`ShapeError` unless ``other`` has the same layers, shapes, granularity."""
        if self.granularity != other.granularity:
            raise ShapeError(f"granularity differs: {self.granularity} vs {other.granularity}")
        if self.layer_shapes != other.layer_shapes:
            mine, theirs = self.layer_shapes, other.layer_shapes
            diff = sorted(set(mine.items()) ^ set(theirs.items()))
            raise ShapeError(f"pathways cover different layers or shapes: {diff[:4]}")

    # Statistics -------------------------------------------------------------------------------
    def kept_fraction(self) -> Tensor:
        """Fraction of units kept (non-zero) per sample: ``[B]``; 1 - sparsity."""
        kept = functools.reduce(operator.add, (self._count_kept(m) for m in self._masks.values()))
        return kept / self.units_total

    def kept_fraction_per_layer(self) -> dict[str, Tensor]:
        """``{layer: [B]}`` fraction of the layer's units kept per sample."""
        return {n: self._count_kept(m) / self.units[n] for n, m in self._masks.items()}

    @staticmethod
    def _count_kept(mask: Tensor) -> Tensor:
        return (mask != 0).reshape(mask.shape[0], -1).sum(dim=1, dtype=torch.float64).float()

    def jaccard(self, other: Pathway) -> Tensor:
        """Jaccard index ``|p ∧ q| / |p ∨ q|`` of sample i here and sample i of ``other``: ``[B]``.

        Two empty pathways have index 1.
        """
        self.check_compatible(other)
        if self.batch_size != other.batch_size:
            raise ShapeError(f"batch sizes differ: {self.batch_size} vs {other.batch_size}")
        return _jaccard_rows(self.flatten() != 0, other.flatten() != 0)

    def jaccard_per_layer(self, other: Pathway) -> dict[str, Tensor]:
        """``{layer: [B]}`` Jaccard index per layer (see :meth:`jaccard`)."""
        self.check_compatible(other)
        return {
            n: _jaccard_rows(
                self[n].reshape(self.batch_size, -1) != 0,
                other[n].reshape(other.batch_size, -1) != 0,
            )
            for n in self.layer_names
        }

    def pairwise_jaccard(self, layer: str | None = None) -> Tensor:
        """Jaccard index between every pair of samples: ``[B, B]`` (over one layer if given)."""
        flat = self.flatten() if layer is None else self[layer].reshape(self.batch_size, -1)
        bits = (flat != 0).float()
        inter = bits @ bits.T
        sizes = bits.sum(dim=1)
        union = sizes[:, None] + sizes[None, :] - inter
        return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))

    # Storage ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a safetensors file (binary masks bit-packed) with JSON metadata, atomically."""
        tensors, layers = {}, []
        for name, mask in self._masks.items():
            packed = mask.dtype == torch.bool
            tensors[f"mask/{name}"] = pack_bits(mask) if packed else mask.detach()
            layers.append({"name": name, "shape": list(mask.shape), "packed": packed})
        meta = {
            "format": _FORMAT,
            "version": 1,
            "granularity": self.granularity,
            "layers": layers,
            "metadata": self.metadata,
        }
        save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Pathway:
        """Read a file written by :meth:`save`."""
        tensors, meta = load_artifact(path, _FORMAT, "pathway")
        masks = {}
        with _corrupt_file(path, "pathway"):
            for layer in meta["layers"]:
                stored = tensors[f"mask/{layer['name']}"]
                shape = tuple(int(s) for s in layer["shape"])
                masks[layer["name"]] = unpack_bits(stored, shape) if layer["packed"] else stored
                if tuple(masks[layer["name"]].shape) != shape:
                    raise CheckpointError(f"layer {layer['name']!r} has the wrong shape in {path}")
            return cls(masks, meta["granularity"], meta.get("metadata"))


def _jaccard_rows(a: Tensor, b: Tensor) -> Tensor:
    inter = (a & b).sum(dim=1, dtype=torch.float64)
    union = (a | b).sum(dim=1, dtype=torch.float64)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter)).float()


# Binarisation -------------------------------------------------------------------------------


def _check_scores(scores: Mapping[str, Tensor]) -> int:
    if not scores:
        raise ShapeError("scores must cover at least one layer")
    batch = {s.shape[0] for s in scores.values()}
    if len(batch) != 1:
        raise ShapeError(f"all scores must share one batch dimension, got sizes {sorted(batch)}")
    for name, s in scores.items():
        if not s.is_floating_point():
            raise InputError(f"scores for layer {name!r} must be floating point, got {s.dtype}")
        # a NaN makes the sum NaN: one reduction, the elementwise test only when it is not finite
        if not torch.isfinite(s.sum()) and torch.isnan(s).any():
            raise InputError(f"scores for layer {name!r} contain NaN")
    return batch.pop()


def global_percentile(
    scores: Mapping[str, Tensor],
    sparsity: float,
    granularity: Granularity = "channel",
    *,
    chunk_size: int | None = None,
    min_per_layer: int = 0,
) -> Pathway:
    """Drop every unit whose score is at or below the ``sparsity`` quantile of *all* layers' scores.

    One threshold per sample over all layers together (Khakzar et al.): the threshold is the
    k-th smallest score with ``k = round(sparsity * N)``; ties at the threshold are dropped too,
    so the achieved sparsity is at least the requested one. Computed with ``torch.kthvalue`` on
    the scores' device. ``chunk_size`` bounds memory by processing that many samples at a time.
    ``min_per_layer`` > 0: then :func:`keep_per_layer` (no layer keeps fewer units than that).
    """
    check_sparsity(sparsity)
    batch = _check_scores(scores)
    total = sum(s[0].numel() for s in scores.values())
    drop = int(round(sparsity * total))
    if drop == 0:
        return Pathway(
            {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}, granularity
        )
    if chunk_size is not None and chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    step = chunk_size or batch
    thresholds = []
    for start in range(0, batch, step):
        rows = min(step, batch - start)
        flat = torch.cat([s[start : start + rows].reshape(rows, -1) for s in scores.values()], 1)
        thresholds.append(torch.kthvalue(flat, drop, dim=1).values)
        del flat
    threshold = torch.cat(thresholds)
    masks = {n: s > threshold.view(-1, *([1] * (s.dim() - 1))) for n, s in scores.items()}
    pathway = Pathway(masks, granularity, {"rule": "global", "sparsity": sparsity})
    return keep_per_layer(pathway, scores, min_per_layer) if min_per_layer > 0 else pathway


def keep_per_layer(pathway: Pathway, scores: Mapping[str, Tensor], min_per_layer: int) -> Pathway:
    """``pathway`` ``{layer: [B, ...]}`` where every layer of every sample keeps at least
    ``min(min_per_layer, N_l)`` units: a layer that keeps fewer also keeps its ``min_per_layer``
    highest-scoring units (``scores`` shaped like the masks; ties broken by ``torch.topk``).

    One global threshold can empty whole layers (channels at high sparsity, small layers),
    which disconnects the pathway model: nothing of the input passes it. Keeping at least one
    unit per layer is **[ours]** (Khakzar et al. keep the global rule as is).
    """
    if isinstance(min_per_layer, bool) or not isinstance(min_per_layer, int) or min_per_layer < 0:
        raise InputError(f"min_per_layer must be an integer >= 0, got {min_per_layer!r}")
    masks = {}
    for name, mask in pathway.items():
        flat = mask.reshape(mask.shape[0], -1)
        keep = min(min_per_layer, flat.shape[1])
        kept = flat.sum(dim=1) if flat.dtype == torch.bool else (flat != 0).sum(dim=1)
        short = kept < keep
        if short.any():
            flat = flat.clone()
            top = scores[name].reshape(flat.shape)[short].topk(keep, dim=1).indices
            flat[short] = flat[short].scatter(1, top, True)
        masks[name] = flat.reshape(mask.shape)
    return Pathway(masks, pathway.granularity, {**pathway.metadata, "min_per_layer": min_per_layer})


def per_layer_topk(
    scores: Mapping[str, Tensor],
    sparsity: float,
    granularity: Granularity = "channel",
    *,
    min_per_layer: int = 1,
) -> Pathway:
    """Keep the ``round((1 - sparsity) * N_l)`` highest-scoring units of each layer, and at least
    ``min_per_layer`` of them (at most all)."""
    check_sparsity(sparsity)
    _check_scores(scores)
    masks = {}
    for name, s in scores.items():
        flat = s.reshape(s.shape[0], -1)
        keep = min(flat.shape[1], max(min_per_layer, int(round((1.0 - sparsity) * flat.shape[1]))))
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask.scatter_(1, flat.topk(keep, dim=1).indices, True)
        masks[name] = mask.reshape(s.shape)
    return Pathway(masks, granularity, {"rule": "per_layer", "sparsity": sparsity})


def threshold_scores(
    scores: Mapping[str, Tensor], threshold: float, granularity: Granularity = "channel"
) -> Pathway:
    """Keep every unit whose score is ``> threshold``."""
    _check_scores(scores)
    return Pathway(
        {n: s > threshold for n, s in scores.items()}, granularity, {"rule": "threshold"}
    )


# Class aggregation --------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassPathways:
    """Class-relevant pathways: per-class firing frequencies of instance pathways.

    ``frequency`` holds ``{layer: [K, ...]}`` in [0, 1]; ``counts`` ``[K]`` the number of instances
    aggregated per class; ``pathway`` the binary class pathways ``frequency >= theta`` (row k =
    class k).
    """

    frequency: Pathway
    counts: Tensor
    theta: float

    @property
    def pathway(self) -> Pathway:
        return self.frequency._with({n: f >= self.theta for n, f in self.frequency.items()})

    @property
    def num_classes(self) -> int:
        return self.counts.numel()

    def for_labels(self, labels: Tensor) -> Pathway:
        """The class pathway of each label, stacked: a pathway for a batch (transfer)."""
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.dim() != 1:
            raise InputError(f"labels must be 1-D, got shape {list(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise InputError(
                f"labels must be in [0, {self.num_classes}), got {labels.tolist()[:8]}"
            )
        empty = [int(c) for c in labels.unique() if self.counts[c] == 0]
        if empty:
            raise InputError(f"no class pathway for classes {empty}: they had no instances")
        return self.pathway.select(labels)

    def save(self, path: str | os.PathLike[str]) -> None:
        tensors = {f"frequency/{n}": f.float() for n, f in self.frequency.items()}
        tensors["counts"] = self.counts
        meta = {
            "format": _CLASS_FORMAT,
            "version": 1,
            "granularity": self.frequency.granularity,
            "theta": self.theta,
            "layers": self.frequency.layer_names,
            "metadata": self.frequency.metadata,
        }
        save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClassPathways:
        tensors, meta = load_artifact(path, _CLASS_FORMAT, "class-pathways")
        with _corrupt_file(path, "class-pathways"):
            freq = {n: tensors[f"frequency/{n}"] for n in meta["layers"]}
            frequency = Pathway(freq, meta["granularity"], meta.get("metadata"))
            return cls(frequency, tensors["counts"], float(meta["theta"]))


def aggregate_by_class(
    pathway: Pathway,
    labels: Tensor,
    num_classes: int,
    *,
    theta: float = 0.5,
    per_class_limit: int | None = None,
) -> ClassPathways:
    """Average binary instance pathways per class: firing frequency, class pathway at ``theta``.

    ``labels`` ``[B]``: the class of each instance (usually the model's prediction). With
    ``per_class_limit = j`` only the first ``j`` instances of each class (in batch order) count.
    """
    if not pathway.is_binary:
        raise InputError("aggregate_by_class needs a binary pathway; binarize it first")
    if not 0.0 < theta <= 1.0:
        raise InputError(f"theta must be in (0, 1], got {theta}")
    labels = torch.as_tensor(labels, dtype=torch.long, device=pathway.device)
    if labels.shape != (pathway.batch_size,):
        raise ShapeError(f"labels must be [{pathway.batch_size}], got {list(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"labels must be in [0, {num_classes})")
    one_hot = torch.nn.functional.one_hot(labels, num_classes).float()  # [B, K]
    if per_class_limit is not None:
        if per_class_limit < 1:
            raise InputError(f"per_class_limit must be >= 1, got {per_class_limit}")
        rank = one_hot.cumsum(dim=0) * one_hot  # position of each instance within its class
        one_hot = one_hot * (rank <= per_class_limit)
    counts = one_hot.sum(dim=0)  # [K]
    denom = counts.clamp_min(1)
    freq = {}
    for name, mask in pathway.items():
        flat = mask.reshape(mask.shape[0], -1).float()
        freq[name] = ((one_hot.T @ flat) / denom[:, None]).reshape(num_classes, *mask.shape[1:])
    frequency = Pathway(freq, pathway.granularity, pathway.metadata)
    return ClassPathways(frequency, counts.long(), float(theta))
