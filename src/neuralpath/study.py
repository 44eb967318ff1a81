"""The study behind ``neuralpath compare``: every method on the same samples, one results file.

For each method: instance pathways of the evaluation samples with their faithfulness metrics,
and the *transfer* experiment: class pathways built from the first ``j`` correctly predicted
training samples of each class, used to explain the evaluation samples of that (predicted) class.
Methods with a sparsity knob run at GEN-CNP's mean kept fraction when GEN-CNP is part of the
study and no sparsity is given (matched sparsity), else at ``sparsity``. Class pathways are
built by :func:`neuralpath.transfer.build_class_pathways`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from neuralpath.data import ImageDataset, load_dataset
from neuralpath.errors import InputError
from neuralpath.gating import GatedModel
from neuralpath.io import write_json_atomic
from neuralpath.methods import FinderOptions, build_finder, finder_names
from neuralpath.pathway import ClassPathways, Granularity, check_sparsity
from neuralpath.runner import FinderRun, open_target, run_finder
from neuralpath.transfer import InstanceRule, build_class_pathways, transfer_from_run

DEFAULT_METHODS: tuple[str, ...] = (
    "gencnp",
    "dgr",
    "dgr-r",
    "cp-mct",
    "cp-intgrad",
    "greedy",
    "random",
    "active",
)
DEFAULT_SPARSITY = 0.9


@dataclass(frozen=True)
class StudyConfig:
    """What a study runs. ``sparsity=None`` matches GEN-CNP's mean kept fraction (see module).

    Class pathways come from the first ``transfer_per_class`` training samples of each class,
    counting only correctly predicted ones (``instances="correct"``) or all, grouped by the
    model's prediction (``"all"``). ``settings``: method -> its settings
    (:attr:`~neuralpath.methods.FinderOptions.settings`), e.g. ``{"dgr": {"gamma": 0.01}}``.
    """

    methods: tuple[str, ...] = DEFAULT_METHODS
    sparsity: float | None = None
    granularity: Granularity = "channel"
    generator: str | None = None
    data: str = "fashion-mnist"
    data_root: str | None = None
    split: str = "test"
    limit: int | None = 500
    batch_size: int = 64
    seed: int = 0
    transfer_per_class: int = 20
    theta: float = 0.5
    instances: InstanceRule = "correct"
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        stray = [m for m in self.settings if m not in self.methods]
        if stray:
            raise InputError(
                f"settings for method(s) not in the study: {', '.join(stray)} "
                f"(methods: {', '.join(self.methods)})"
            )
        if not self.methods:
            raise InputError("a study needs at least one method")
        if len(set(self.methods)) != len(self.methods):
            raise InputError(f"methods listed twice: {list(self.methods)}")
        unknown = [m for m in self.methods if m not in finder_names()]
        if unknown:
            raise InputError(
                f"unknown method(s) {', '.join(unknown)}; available: {', '.join(finder_names())}"
            )
        if self.sparsity is not None:
            check_sparsity(self.sparsity)
        if "gencnp" in self.methods and self.generator is None:
            raise InputError("method gencnp needs a generator directory (--generator)")
        if self.transfer_per_class < 1:
            raise InputError(f"transfer_per_class must be >= 1, got {self.transfer_per_class}")
        if not 0.0 < self.theta <= 1.0:
            raise InputError(f"theta must be in (0, 1], got {self.theta}")


@dataclass
class MethodResult:
    """One method's instance run and its class pathways (for the report)."""

    run: FinderRun
    classes: ClassPathways | None
    transfer: dict[str, Any] | None


@dataclass
class StudyResult:
    """Everything a study measured; :meth:`to_json` is the ``results.json`` contract."""

    config: StudyConfig
    target: dict[str, Any]
    sparsity: float
    methods: dict[str, MethodResult] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "methods": {name: r.run.summary() for name, r in self.methods.items()},
            "transfer": {n: r.transfer for n, r in self.methods.items() if r.transfer is not None},
            "sparsity": self.sparsity,
            "config": asdict(self.config),
            "target": self.target,
        }


def run_study(
    checkpoint: str | os.PathLike[str],
    config: StudyConfig,
    *,
    device: str = "auto",
    progress: bool = True,
    pathway_dir: str | os.PathLike[str] | None = None,
) -> tuple[StudyResult, GatedModel, ImageDataset]:
    """Run every method of ``config`` on the same samples of the target at ``checkpoint``.

    ``pathway_dir``: if given, each method's instance pathways are saved there as
    ``<method>.safetensors``. Returns the result, the gated target and the evaluation data.
    """
    target, gated = open_target(str(checkpoint), device)
    size = target.meta.input_shape[-1]
    evaluation = load_dataset(config.data, config.split, config.data_root, image_size=size)
    train = load_dataset(config.data, "train", config.data_root, image_size=size)

    order = sorted(config.methods, key=lambda name: name != "gencnp")
    sparsity = DEFAULT_SPARSITY if config.sparsity is None else config.sparsity
    result = StudyResult(config, target.meta.to_dict(), sparsity)
    for name in order:
        options = FinderOptions(
            result.sparsity, config.granularity, config.generator, config.seed,
            config.settings.get(name, {}),
        )  # fmt: skip
        torch.manual_seed(config.seed)
        finder = build_finder(name, gated, options)
        run = run_finder(
            finder,
            evaluation,
            batch_size=config.batch_size,
            limit=config.limit,
            progress=progress,
            method=name,
        )
        classes = build_class_pathways(
            finder,
            train,
            target.meta.num_classes,
            j=config.transfer_per_class,
            theta=config.theta,
            instances=config.instances,
            batch_size=config.batch_size,
            class_names=evaluation.class_names,
            progress=progress,
            allow_missing=True,
        )
        transfer = transfer_from_run(gated, classes, evaluation, run, batch_size=config.batch_size)
        summary = dict(transfer.transfer)
        summary.update(
            class_instances=classes.counts.tolist(),
            theta=classes.theta,
            instance_class_jaccard=transfer.instance_class_jaccard,
        )
        result.methods[name] = MethodResult(run, classes, summary)
        if name == "gencnp" and config.sparsity is None:
            result.sparsity = float(1.0 - run.outcome.kept_fraction.mean())
    result.methods = {name: result.methods[name] for name in config.methods}
    if pathway_dir is not None:  # only once every method has finished: no partial study
        for name, method in result.methods.items():
            method.run.pathway.save(Path(pathway_dir) / f"{name}.safetensors")
    return result, gated, evaluation


def write_results(result: StudyResult, out_dir: str | os.PathLike[str]) -> Path:
    """``results.json`` in ``out_dir``; returns its path."""
    path = Path(out_dir) / "results.json"
    write_json_atomic(path, result.to_json())
    return path
