"""Pathway store: the pathways of a whole data split, sharded, bit-packed, resumable.

Layout of a store directory::

    index.json                  what was extracted (method, intervention, target, data, layers,
                                shards) and, once complete, its summary (ablation, leakage keys)
    shard-00000.safetensors     samples [0, S): "packed" uint8 [S, ceil(N/8)], one row a sample,
    shard-00001.safetensors     ...           plus per-sample ids, labels, predictions, kept and
                                              the leakage controls ("leakage/<field>")
    class-stats.safetensors     per-class unit counts (firing frequency = counts / instances)

Shard ``k`` always holds samples ``[k*S, (k+1)*S)`` whatever the number of processes, and each is
written atomically, so a killed extraction resumes by skipping the shards that exist (nothing
duplicated, nothing lost), and ``torchrun`` ranks (rank ``r`` takes shards ``k % world == r``)
write byte-identical shards to a single process. Class statistics are summed over each rank's
shards and combined with ``torch.distributed.all_reduce``; the leakage summary is computed by
rank 0 from every shard's leakage columns (as a single process would, bit for bit). The reader
loads one sample's row or one class's frequencies without reading the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from neuralpath.data import LabeledDataset
from neuralpath.errors import CheckpointError, InputError, ShapeError
from neuralpath.io import (
    load_tensors,
    pack_bits,
    read_json,
    save_tensors,
    unpack_bits,
    write_json_atomic,
)
from neuralpath.methods.base import PathwayFinder, find_in_chunks
from neuralpath.metrics.faithfulness import average_class_iou
from neuralpath.metrics.leakage import LeakageOutcome, leakage_outcome, summarize_leakage
from neuralpath.pathway import ClassPathways, Pathway

FORMAT = "neuralpath.pathway-store"
VERSION = 2
INDEX = "index.json"
CLASS_STATS = "class-stats.safetensors"
_LEAKAGE = "leakage/"


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def _pack_rows(pathway: Pathway) -> Tensor:
    """``[B, ceil(N/8)]`` uint8: each sample's flattened binary pathway, bit-packed."""
    flat = pathway.flatten().to("cpu", torch.bool)
    return torch.stack([pack_bits(row) for row in flat])


@dataclass(frozen=True)
class ExtractionInfo:
    """What an extraction covers; stored in ``index.json``."""

    method: str
    granularity: str
    layers: list[dict[str, Any]]  # [{"name", "shape"}] per-sample mask shapes
    num_classes: int
    total: int
    shard_size: int
    provenance: dict[str, Any]
    intervention: dict[str, Any]

    @property
    def units(self) -> int:
        return sum(int(torch.tensor(layer["shape"]).prod()) for layer in self.layers)

    @property
    def shards(self) -> int:
        return (self.total + self.shard_size - 1) // self.shard_size


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def extract(  # noqa: PLR0913 -- public API; keyword-only extraction options
    finder: PathwayFinder,
    dataset: LabeledDataset,
    out_dir: str | os.PathLike[str],
    *,
    num_classes: int,
    shard_size: int = 512,
    batch_size: int = 64,
    limit: int | None = None,
    provenance: dict[str, Any] | None = None,
    progress: bool = True,
    on_shard: Callable[[int], None] | None = None,
    internal_batch_size: int | None = None,
    baseline: Tensor | None = None,
    seed: int = 0,
) -> Path:
    """Extract pathways of ``dataset`` (items ``(image, label)``) into a store at ``out_dir``.

    Resumes when ``out_dir`` holds a store of the same extraction (same method, intervention,
    layers, sizes and provenance); a store of another extraction is an error. Under ``torchrun``
    every rank calls this with the same arguments. ``on_shard(k)`` is called after shard ``k`` is
    written (used by fault-injection tests). ``internal_batch_size`` bounds memory (see
    :func:`find_in_chunks`). Leakage controls are measured per batch under the finder's
    intervention (``baseline`` ``[*input_shape]``, default zeros; swap partners by ``seed``).
    Returns the store directory."""
    if shard_size < 1 or batch_size < 1:
        raise InputError("shard_size and batch_size must be >= 1")
    total = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    if total < 1:
        raise InputError("no samples to extract (empty data set or limit < 1)")
    out = Path(out_dir)
    rank, world = _rank_world()
    info, layer_shapes = _probe(finder, dataset, num_classes, total, shard_size, provenance)
    _check_or_start(out, info, rank)

    mine = [k for k in range(info.shards) if k % world == rank]
    todo = [k for k in mine if not (out / shard_name(k)).exists()]
    bar = tqdm(
        total=len(mine),
        initial=len(mine) - len(todo),
        desc=f"extract {finder.name}",
        unit="shard",
        disable=not progress or rank != 0,
    )
    writer = _ShardWriter(finder, layer_shapes, batch_size, internal_batch_size, baseline, seed)
    for k in todo:
        start, stop = k * shard_size, min(total, (k + 1) * shard_size)
        writer.write(Subset(dataset, range(start, stop)), start, out / shard_name(k))
        bar.update(1)
        if on_shard is not None:
            on_shard(k)
    bar.close()
    _barrier()
    _write_class_stats(out, info, mine, rank)
    _barrier()
    return out


def _probe(
    finder: PathwayFinder,
    dataset: LabeledDataset,
    num_classes: int,
    total: int,
    shard_size: int,
    provenance: dict[str, Any] | None,
) -> tuple[ExtractionInfo, dict[str, tuple[int, ...]]]:
    """What the extraction covers, and its per-layer mask shapes: the layout (granularity,
    shapes) is whatever the finder produces, so one sample is probed."""
    probe = finder.find(dataset[0][0].unsqueeze(0).to(finder.gated.device))
    layers = [{"name": name, "shape": list(shape)} for name, shape in probe.layer_shapes.items()]
    info = ExtractionInfo(
        finder.name, probe.granularity, layers, num_classes, total, shard_size,
        dict(provenance or {}), finder.gated.intervention.describe(),
    )  # fmt: skip
    return info, probe.layer_shapes


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _check_or_start(out: Path, info: ExtractionInfo, rank: int) -> None:
    expected = _index_payload(info, complete=False)
    if (out / INDEX).exists():
        found = read_json(out / INDEX)
        keys = (
            "format",
            "version",
            "method",
            "granularity",
            "layers",
            "num_classes",
            "total",
            "shard_size",
            "provenance",
            "intervention",
        )
        if any(found.get(key) != expected[key] for key in keys):
            raise CheckpointError(
                f"{out} holds another extraction ({found.get('method')!r} of "
                f"{found.get('total')} samples); choose a new --out or remove it"
            )
    elif rank == 0:
        if out.exists() and any(out.iterdir()):
            raise CheckpointError(f"{out} exists and is not a pathway store; choose a new --out")
        write_json_atomic(out / INDEX, expected)
    _barrier()


def _index_payload(info: ExtractionInfo, complete: bool) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "method": info.method,
        "granularity": info.granularity,
        "layers": info.layers,
        "num_classes": info.num_classes,
        "total": info.total,
        "shard_size": info.shard_size,
        "shards": info.shards,
        "provenance": info.provenance,
        "intervention": info.intervention,
        "complete": complete,
    }


@dataclass(frozen=True)
class _ShardWriter:
    """Writes shards of one extraction: ``finder``'s pathways of a part of the data set (with the
    per-layer mask shapes every batch must keep), found ``batch_size`` samples at a time in chunks
    of ``internal_batch_size``, with leakage controls against ``baseline`` and swap ``seed``."""

    finder: PathwayFinder
    layer_shapes: dict[str, tuple[int, ...]]
    batch_size: int
    internal_batch_size: int | None
    baseline: Tensor | None
    seed: int

    def write(self, part: LabeledDataset, start: int, path: Path) -> None:
        """Find, measure and write the pathways of ``part`` (samples ``start...``) as one
        shard."""
        finder, gated = self.finder, self.finder.gated
        rows, labels, predictions, kept, leaks = [], [], [], [], []
        for images, batch_labels in DataLoader(part, batch_size=self.batch_size, shuffle=False):
            images = images.to(gated.device)
            pathway = find_in_chunks(finder, images, None, self.internal_batch_size).detach()
            if pathway.layer_shapes != self.layer_shapes:
                raise ShapeError(f"{finder.name} changed its pathway layout between batches")
            rows.append(_pack_rows(pathway))
            labels.append(batch_labels.to(torch.long))
            leak = leakage_outcome(gated, images, pathway, baseline=self.baseline, seed=self.seed)
            predictions.append(leak.target)  # the target model's own prediction (target None)
            kept.append(pathway.kept_fraction().cpu().float())
            leaks.append(leak)
        count = sum(r.shape[0] for r in rows)
        leakage = LeakageOutcome.cat(leaks)
        tensors = {
            "packed": torch.cat(rows),
            "ids": torch.arange(start, start + count, dtype=torch.long),
            "labels": torch.cat(labels),
            "predictions": torch.cat(predictions),
            "kept_fraction": torch.cat(kept),
            **{_LEAKAGE + f.name: getattr(leakage, f.name) for f in fields(LeakageOutcome)},
        }
        save_tensors(path, tensors, {"format": FORMAT, "start": start, "count": count})


def _write_class_stats(out: Path, info: ExtractionInfo, mine: Sequence[int], rank: int) -> None:
    """Per-class unit counts and instance counts (grouped by prediction), summed over ranks."""
    units = torch.zeros(info.num_classes, info.units, dtype=torch.float64)
    instances = torch.zeros(info.num_classes, dtype=torch.float64)
    for k in mine:
        tensors, _ = load_tensors(out / shard_name(k))
        bits = torch.stack([unpack_bits(row, (info.units,)) for row in tensors["packed"]]).double()
        one_hot = torch.nn.functional.one_hot(tensors["predictions"], info.num_classes).double()
        units += one_hot.T @ bits
        instances += one_hot.sum(0)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(units)
        dist.all_reduce(instances)
    if rank == 0:
        save_tensors(
            out / CLASS_STATS, {"unit_counts": units, "instances": instances}, {"format": FORMAT}
        )
        payload = _index_payload(info, complete=True)
        payload["bytes_per_sample"] = _bytes_per_sample(out, info)
        payload["summary"] = _leakage_summary(out, info)
        write_json_atomic(out / INDEX, payload)


def _leakage_summary(out: Path, info: ExtractionInfo) -> dict[str, Any]:
    """``ablation`` and the leakage keys over every shard (read column by column)."""
    columns: dict[str, list[Tensor]] = {f.name: [] for f in fields(LeakageOutcome)}
    for k in range(info.shards):
        with safe_open(str(out / shard_name(k)), framework="pt") as shard:
            for name, parts in columns.items():
                parts.append(shard.get_tensor(_LEAKAGE + name))
    outcome = LeakageOutcome(**{name: torch.cat(parts) for name, parts in columns.items()})
    return {"ablation": info.intervention["ablation"], **summarize_leakage(outcome)}


def _bytes_per_sample(out: Path, info: ExtractionInfo) -> float:
    shards = sum((out / shard_name(k)).stat().st_size for k in range(info.shards))
    return shards / info.total


class PathwayStore:
    """Read a store written by :func:`extract` without loading it whole."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        if not (self.directory / INDEX).is_file():
            raise CheckpointError(
                f"{self.directory} is not a neuralpath pathway store (no {INDEX})"
            )
        index = read_json(self.directory / INDEX)
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise CheckpointError(f"{self.directory} is not a neuralpath pathway store")
        if not index.get("complete"):
            raise CheckpointError(
                f"{self.directory} is incomplete: re-run the extraction to resume it"
            )
        self.index = index
        self.layers: list[dict[str, Any]] = index["layers"]
        self.granularity: str = index["granularity"]
        self.shard_size: int = int(index["shard_size"])
        self._units = sum(int(torch.tensor(layer["shape"]).prod()) for layer in self.layers)

    def __len__(self) -> int:
        return int(self.index["total"])

    @property
    def method(self) -> str:
        return str(self.index["method"])

    @property
    def num_classes(self) -> int:
        return int(self.index["num_classes"])

    @property
    def summary(self) -> dict[str, Any]:
        """``ablation`` and the leakage keys of the whole extraction (see
        :func:`~neuralpath.metrics.leakage.summarize_leakage`); empty before version 2."""
        return dict(self.index.get("summary") or {})

    def _open(self, k: int) -> Any:
        path = self.directory / shard_name(k)
        try:
            return safe_open(str(path), framework="pt")
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read shard {path}: {exc}") from exc

    def _column(self, name: str) -> Tensor:
        parts = []
        for k in range(int(self.index["shards"])):
            with self._open(k) as shard:
                parts.append(shard.get_tensor(name))
        return torch.cat(parts)

    @property
    def labels(self) -> Tensor:
        return self._column("labels")

    @property
    def predictions(self) -> Tensor:
        return self._column("predictions")

    @property
    def kept_fraction(self) -> Tensor:
        return self._column("kept_fraction")

    def _unflatten(self, bits: Tensor) -> Pathway:
        masks, offset = {}, 0
        for layer in self.layers:
            shape = tuple(layer["shape"])
            size = int(torch.tensor(shape).prod())
            masks[layer["name"]] = bits[:, offset : offset + size].reshape(bits.shape[0], *shape)
            offset += size
        return Pathway(masks, self.granularity, {"method": self.method})  # type: ignore[arg-type]

    def pathways(self, indices: Sequence[int]) -> Pathway:
        """Pathways of the samples ``indices``, in that order (reads only their shards' rows)."""
        if len(indices) == 0:
            raise InputError("no sample indices given")
        by_shard: dict[int, list[int]] = {}
        for i in indices:
            if not 0 <= i < len(self):
                raise InputError(f"sample {i} is not in the store (0..{len(self) - 1})")
            by_shard.setdefault(i // self.shard_size, []).append(i)
        rows: dict[int, Tensor] = {}
        for k, members in by_shard.items():
            with self._open(k) as shard:
                packed = shard.get_slice("packed")
                for i in members:
                    row = packed[i % self.shard_size : i % self.shard_size + 1].reshape(-1)
                    rows[i] = unpack_bits(row, (self._units,))
        return self._unflatten(torch.stack([rows[i] for i in indices]))

    def class_pathways(self, theta: float = 0.5) -> ClassPathways:
        """Firing frequencies per predicted class from ``class-stats`` (no shard is read)."""
        tensors, _ = load_tensors(self.directory / CLASS_STATS)
        counts = tensors["instances"]
        frequency = tensors["unit_counts"] / counts.clamp_min(1)[:, None]
        return ClassPathways(self._unflatten(frequency.float()), counts.long(), theta)

    def class_frequency(self, c: int) -> Pathway:
        """Firing frequency of class ``c``'s units: a one-sample continuous pathway."""
        if not 0 <= c < self.num_classes:
            raise InputError(f"class {c} is out of range 0..{self.num_classes - 1}")
        with safe_open(str(self.directory / CLASS_STATS), framework="pt") as stats:
            units = stats.get_slice("unit_counts")[c : c + 1]
            instances = stats.get_slice("instances")[c : c + 1]
        return self._unflatten((units / instances.clamp_min(1)[:, None]).float())

    def aciou(self, per_class: int | None = None) -> float:
        """acIOU (percent) over the store, grouping by prediction; ``per_class`` caps the
        instances of each class (the first ones) to bound the pairwise cost."""
        predictions = self.predictions
        chosen: list[int] = []
        for c in range(self.num_classes):
            members = (predictions == c).nonzero().squeeze(1).tolist()
            chosen += members[:per_class] if per_class else members
        chosen.sort()
        return average_class_iou(self.pathways(chosen), predictions[chosen])


def store_digest(directory: str | os.PathLike[str]) -> str:
    """SHA-256 over the shards' bytes in order (to compare two extractions)."""
    digest = hashlib.sha256()
    index = json.loads((Path(directory) / INDEX).read_text())
    for k in range(int(index["shards"])):
        digest.update((Path(directory) / shard_name(k)).read_bytes())
    return digest.hexdigest()
