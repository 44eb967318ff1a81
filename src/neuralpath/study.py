"""The study behind ``neuralpath compare``: every method on the same samples, one results file.

For each intervention of ``ablations`` (spec §10: what a dropped unit becomes) and each method:
instance pathways of the evaluation samples with their faithfulness metrics and leakage
controls, and the *transfer* experiment: class pathways built from the first ``j`` correctly
predicted training samples of each class, used to explain the evaluation samples of that
(predicted) class. Every finder works on the target's gated model under that intervention
(GEN-CNP uses the generator given for that ablation, else the common one). Methods with a sparsity knob run at GEN-CNP's
mean kept fraction under the first ablation when GEN-CNP is part of the study and no sparsity is
given (matched sparsity), else at ``sparsity`` (None: each method's default). The reference statistics (mean ablation, blank
baseline) are the target's, over ``reference_size`` training images. Class pathways are built by
:func:`neuralpath.transfer.build_class_pathways`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neuralpath.checkpoint import Target
from neuralpath.data import FolderSplit, ImageDataset, load_dataset
from neuralpath.errors import InputError
from neuralpath.gating import GatedModel, UnitType
from neuralpath.interventions import check_ablation
from neuralpath.io import write_json_atomic
from neuralpath.methods import FinderOptions, build_finder, finder_entry, finder_names
from neuralpath.pathway import ClassPathways, Granularity, check_sparsity
from neuralpath.runner import (
    DEFAULT_REFERENCE_SIZE,
    FinderRun,
    Reference,
    open_reference,
    open_target,
    run_finder,
)
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


@dataclass(frozen=True)
class StudyConfig:
    """What a study runs. ``sparsity=None`` matches GEN-CNP's mean kept fraction (see module);
    ``granularity=None``: the methods' own default when they share one, else ``"channel"``
    (every method has it): a study compares pathways unit by unit (matched sparsity, the
    report's overlap matrix), so its methods need one granularity.

    Class pathways come from the first ``transfer_per_class`` training samples of each class,
    counting only correctly predicted ones (``instances="correct"``) or all, grouped by the
    model's prediction (``"all"``). ``settings``: method -> its settings
    (:attr:`~neuralpath.methods.FinderOptions.settings`), e.g. ``{"dgr": {"gamma": 0.01}}``.
    ``ablations``: the interventions every method runs under (the first one gives the
    backward-compatible ``methods``/``transfer`` of ``results.json`` and the matched sparsity);
    ``reference_size``: training images behind the reference statistics and resample donors.
    ``generators``: ablation -> the GEN-CNP generator used under it (e.g. one trained under that
    ablation, as DGR optimises under it); ``generator`` serves the ablations not listed.
    ``layers``/``unit_types``/``include_fc``: the gate sites (see :meth:`GatedModel.discover`;
    ``unit_types`` such as ``("heads", "mlp")`` for a vision transformer); ``folder``: how
    an image folder ``data`` is split (None: :class:`~neuralpath.data.FolderSplit` defaults).
    """

    methods: tuple[str, ...] = DEFAULT_METHODS
    sparsity: float | None = None
    granularity: Granularity | None = None
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
    ablations: tuple[str, ...] = ("zero", "mean")
    reference_size: int = DEFAULT_REFERENCE_SIZE
    generators: dict[str, str] = field(default_factory=dict)
    layers: tuple[str, ...] | None = None
    include_fc: bool = False
    unit_types: tuple[UnitType, ...] | None = None
    folder: FolderSplit | None = None

    def __post_init__(self) -> None:
        stray = [m for m in self.settings if m not in self.methods]
        if stray:
            raise InputError(
                f"settings for method(s) not in the study: {', '.join(stray)} "
                f"(methods: {', '.join(self.methods)})"
            )
        for name, values in (("methods", self.methods), ("ablations", self.ablations)):
            if not values:
                raise InputError(f"a study needs at least one of its {name}")
            if len(set(values)) != len(values):
                raise InputError(f"{name} listed twice: {list(values)}")
        unknown = [m for m in self.methods if m not in finder_names()]
        if unknown:
            raise InputError(
                f"unknown method(s) {', '.join(unknown)}; available: {', '.join(finder_names())}"
            )
        for ablation in self.ablations:
            check_ablation(ablation)
        if self.sparsity is not None:
            check_sparsity(self.sparsity)
        stray = [a for a in self.generators if a not in self.ablations]
        if stray:
            raise InputError(f"generators for ablation(s) not in the study: {', '.join(stray)}")
        missing = [a for a in self.ablations if self.generator_for(a) is None]
        if "gencnp" in self.methods and missing:
            raise InputError(
                "method gencnp needs a generator directory (--generator) for ablation(s) "
                + ", ".join(missing)
            )
        if self.transfer_per_class < 1:
            raise InputError(f"transfer_per_class must be >= 1, got {self.transfer_per_class}")
        if not 0.0 < self.theta <= 1.0:
            raise InputError(f"theta must be in (0, 1], got {self.theta}")
        if self.reference_size < 1:
            raise InputError(f"reference_size must be >= 1, got {self.reference_size}")

    def generator_for(self, ablation: str) -> str | None:
        """The GEN-CNP generator used under ``ablation``."""
        return self.generators.get(ablation, self.generator)


@dataclass
class MethodResult:
    """One method's instance run and its class pathways (for the report)."""

    run: FinderRun
    classes: ClassPathways | None
    transfer: dict[str, Any] | None


@dataclass
class StudyResult:
    """Everything a study measured; :meth:`to_json` is the ``results.json`` contract.

    ``interventions``: ablation -> method -> its result, for every ablation of the config.
    ``sparsity``: what the methods with a sparsity knob ran at (None: their defaults differ);
    ``granularity``: the one every method ran at.
    """

    config: StudyConfig
    target: dict[str, Any]
    sparsity: float | None
    granularity: Granularity
    interventions: dict[str, dict[str, MethodResult]] = field(default_factory=dict)

    @property
    def methods(self) -> dict[str, MethodResult]:
        """The results under the first ablation (the report's panels and figures)."""
        return self.interventions.get(self.config.ablations[0], {})

    def to_json(self) -> dict[str, Any]:
        """``methods``/``transfer`` (first ablation), ``ablations``, ``interventions`` (ablation
        -> {``methods``, ``transfer``}), ``sparsity``, ``config``, ``target``."""
        parts = {
            ablation: {
                "methods": {name: r.run.summary() for name, r in results.items()},
                "transfer": {n: r.transfer for n, r in results.items() if r.transfer is not None},
            }
            for ablation, results in self.interventions.items()
        }
        first = parts.get(self.config.ablations[0], {"methods": {}, "transfer": {}})
        return {
            "methods": first["methods"],
            "transfer": first["transfer"],
            "ablations": list(self.config.ablations),
            "interventions": parts,
            "sparsity": self.sparsity,
            "granularity": self.granularity,
            "config": asdict(self.config),
            "target": self.target,
        }


def run_study(  # noqa: PLR0913 -- public API; keyword-only run options
    checkpoint: str | os.PathLike[str] | Target,
    config: StudyConfig,
    *,
    device: str = "auto",
    progress: bool = True,
    pathway_dir: str | os.PathLike[str] | None = None,
    recompute_reference: bool = False,
    reference_dir: str | os.PathLike[str] | None = None,
) -> tuple[StudyResult, GatedModel, ImageDataset]:
    """Run every method of ``config`` under every ablation on the same samples of the target at
    ``checkpoint`` (a checkpoint directory, or an opened :class:`~neuralpath.checkpoint.Target`
    such as a user's model from :func:`neuralpath.model_source.open_model`). Every data set is
    read at the target's own input shape, resize and normalisation.

    ``pathway_dir``: if given, each method's instance pathways are saved there as
    ``<method>.safetensors`` (first ablation) and ``<ablation>/<method>.safetensors`` (the
    others). ``recompute_reference``: recompute the target's stored reference statistics, kept
    in ``reference_dir`` (default: :meth:`~neuralpath.checkpoint.Target.reference_dir`).
    Returns the result, the gated target under the first ablation and the evaluation data.
    """
    opened = checkpoint if isinstance(checkpoint, Target) else str(checkpoint)
    target, gated = open_target(
        opened, device, layers=config.layers, include_fc=config.include_fc,
        unit_types=config.unit_types,
    )  # fmt: skip
    evaluation = _load(target, config, config.split)
    train = _load(target, config, "train")
    reference_set = _load(target, config, "train", config.reference_size)
    reference = open_reference(
        target.reference_dir(reference_dir), gated, reference_set, size=config.reference_size,
        seed=config.seed, recompute=recompute_reference, progress=progress,
        source={"data": config.data, "split": "train"},
    )  # fmt: skip
    models = {
        ablation: gated.with_intervention(reference.intervention(ablation, config.seed))
        for ablation in config.ablations
    }
    order = sorted(config.methods, key=lambda name: name != "gencnp")
    result = StudyResult(config, target.meta.to_dict(), *_study_units(config))
    for ablation, intervened in models.items():
        results: dict[str, MethodResult] = {}
        for name in order:
            options = FinderOptions(
                result.sparsity, result.granularity, config.generator_for(ablation), config.seed,
                config.settings.get(name, {}),
            )  # fmt: skip
            results[name] = _run_method(
                name, intervened, options, reference, (evaluation, train), target.meta.num_classes,
                config, progress,
            )  # fmt: skip
            if name == "gencnp" and config.sparsity is None and not result.interventions:
                result.sparsity = float(1.0 - results[name].run.outcome.kept_fraction.mean())
        result.interventions[ablation] = {name: results[name] for name in config.methods}
    if pathway_dir is not None:  # only once every method has finished: no partial study
        _save_pathways(result, Path(pathway_dir))
    return result, models[config.ablations[0]], evaluation


def _study_units(config: StudyConfig) -> tuple[float | None, Granularity]:
    """``(sparsity, granularity)`` every method of the study shares: the configured ones, else
    the methods' common defaults (granularity ``channel`` when they disagree)."""
    sparsity = config.sparsity
    if sparsity is None:
        sparsity = _shared_default(config.methods, "sparsity")
    granularity = config.granularity or _shared_default(config.methods, "granularity") or "channel"
    return sparsity, granularity


def _load(
    target: Target, config: StudyConfig, split: str, limit: int | None = None
) -> ImageDataset:
    """``split`` of ``config.data`` at ``target``'s preprocessing (a ``config.seed`` subset of
    ``limit`` images)."""
    return load_dataset(
        config.data, split, config.data_root, limit=limit, seed=config.seed,
        preprocessing=target.meta.preprocessing(), folder=config.folder or FolderSplit(),
    )  # fmt: skip


def _shared_default(methods: tuple[str, ...], key: str) -> Any:
    """The default of setting ``key`` (e.g. ``"sparsity"``) of the ``methods`` that have it, when
    they share one (else None)."""
    defaults = {getattr(finder_entry(m).config(), key, None) for m in methods} - {None}
    return defaults.pop() if len(defaults) == 1 else None


def _run_method(
    name: str,
    gated: GatedModel,
    options: FinderOptions,
    reference: Reference,
    data: tuple[ImageDataset, ImageDataset],
    num_classes: int,
    config: StudyConfig,
    progress: bool,
) -> MethodResult:
    """One method under ``gated``'s intervention: instance pathways of the evaluation samples,
    class pathways of the training samples (``data``: both sets), transfer; warns
    (:class:`~neuralpath.errors.LeakageWarning`) when its pathways follow the mask."""
    evaluation, train = data
    finder = build_finder(name, gated, options)
    baseline = reference.statistics.input_mean
    run = run_finder(
        finder, evaluation, batch_size=config.batch_size, limit=config.limit, progress=progress,
        method=name, baseline=baseline, seed=config.seed,
    )  # fmt: skip
    run.warn_if_leaking()
    run.warn_if_disconnected()
    classes = build_class_pathways(
        finder,
        train,
        num_classes,
        j=config.transfer_per_class,
        theta=config.theta,
        instances=config.instances,
        batch_size=config.batch_size,
        class_names=evaluation.class_names,
        progress=progress,
        allow_missing=True,
    )
    transfer = transfer_from_run(
        gated, classes, evaluation, run, batch_size=config.batch_size, baseline=baseline,
        seed=config.seed,
    )  # fmt: skip
    summary = dict(transfer.transfer)
    summary.update(
        class_instances=classes.counts.tolist(),
        theta=classes.theta,
        instance_class_jaccard=transfer.instance_class_jaccard,
    )
    return MethodResult(run, classes, summary)


def _save_pathways(result: StudyResult, directory: Path) -> None:
    """Each method's instance pathways: the first ablation's in ``directory``, the others' in
    ``directory/<ablation>``; their metadata names the ablation."""
    for index, (ablation, results) in enumerate(result.interventions.items()):
        folder = directory if index == 0 else directory / ablation
        for name, method in results.items():
            method.run.pathway.metadata.update(ablation=ablation)
            method.run.pathway.save(folder / f"{name}.safetensors")


def write_results(result: StudyResult, out_dir: str | os.PathLike[str]) -> Path:
    """``results.json`` in ``out_dir``; returns its path."""
    path = Path(out_dir) / "results.json"
    write_json_atomic(path, result.to_json())
    return path
