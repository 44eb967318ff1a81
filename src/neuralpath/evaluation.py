"""Score saliency methods: LeRF/MoRF, deletion/insertion, ROAR, sanity checks and localisation.

:func:`evaluate_attribution` runs the chosen metrics for several attribution methods on one
target and returns a JSON-ready payload; :func:`markdown_table` and :func:`plot_results` turn it
into a report. ``neuralpath evaluate-attribution`` and ``benchmarks/attribution_quality.py`` are
thin wrappers around it.

Method specs: a name of :data:`neuralpath.attribution.METHOD_NAMES`, optionally with a finder
for the pathway methods after a colon: ``pathway-gradient:cp-intgrad``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from neuralpath.data import ImageDataset

METRICS = ("lerf", "morf", "deletion", "insertion", "roar", "sanity", "localisation")
DEFAULT_METHODS = (
    "pathway-gradient:cp-mct",
    "pathway-gradient:cp-intgrad",
    "gradient",
    "input-x-gradient",
    "integrated-gradients",
    "guided-backprop",
    "grad-cam",
)


@dataclass
class EvaluationConfig:
    """Settings of :func:`evaluate_attribution` (see the command's ``--help`` for each)."""

    metrics: Sequence[str] = ("lerf", "morf", "deletion", "insertion", "sanity")
    percentages: Sequence[float] = tuple(float(q) for q in range(1, 11))
    steps: int = 20
    reduction: str = "sum-abs"
    removal: str = "baseline"
    target: str = "prediction"
    batch_size: int = 64
    sparsity: float = 0.9
    granularity: str = "element"
    seed: int = 0
    sanity_limit: int = 50
    tolerance: float = 0.0
    roar_percentages: Sequence[float] = (10.0, 30.0, 50.0, 70.0, 90.0)
    roar_epochs: int = 1
    roar_train_limit: int | None = None
    roar_work_dir: str | None = None
    progress: bool = True
    generator: str | None = None
    finder_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name[:finder]"`` -> (method name, options for ``make_attribution_method``)."""
    from neuralpath.attribution import METHOD_NAMES, PATHWAY_METHODS
    from neuralpath.errors import InputError

    name, _, finder = spec.partition(":")
    if name not in METHOD_NAMES:
        raise InputError(
            f"unknown attribution method {name!r}; available: {', '.join(METHOD_NAMES)}"
        )
    if finder and name not in PATHWAY_METHODS:
        raise InputError(f"{name!r} takes no finder (only {', '.join(PATHWAY_METHODS)} do)")
    return name, ({"finder": finder} if finder else {})


def evaluate_attribution(
    model: nn.Module,
    test_set: ImageDataset,
    methods: Sequence[str],
    config: EvaluationConfig,
    *,
    train_set: ImageDataset | None = None,
    arch: str | None = None,
    arch_args: Mapping[str, Any] | None = None,
    roar_test_set: ImageDataset | None = None,
) -> dict[str, Any]:
    """Run ``config.metrics`` for every method spec on ``test_set`` (an ``ImageDataset``).

    ROAR also needs ``train_set``, ``arch``/``arch_args`` (to retrain) and
    ``config.roar_work_dir``, and tests on ``roar_test_set`` (default ``test_set``);
    localisation needs ``test_set.masks``. Returns the JSON payload.
    """
    import torch
    from tqdm.auto import tqdm

    from neuralpath.attribution import PATHWAY_METHODS, zero_maps
    from neuralpath.errors import DataError, InputError, ZeroMapsWarning
    from neuralpath.gating import GatedModel
    from neuralpath.methods import FinderOptions, build_finder
    from neuralpath.metrics.localisation import PointingGame, RelevanceMass
    from neuralpath.metrics.perturbation import (
        DEFAULT_NOISE_STD,
        Deletion,
        Insertion,
        LeRF,
        MoRF,
        bind,
        method_explainer,
        model_device,
        resolve_targets,
    )
    from neuralpath.metrics.roar import ROAR
    from neuralpath.metrics.sanity import CascadingRandomisation

    unknown = [m for m in config.metrics if m not in METRICS]
    if unknown or not config.metrics:
        raise InputError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    if not methods:
        raise InputError("need at least one attribution method")
    if "localisation" in config.metrics and test_set.masks is None:
        raise DataError(
            f"localisation needs ground-truth masks; {test_set.name!r} has none (use synthetic)"
        )
    if "roar" in config.metrics and (
        train_set is None or arch is None or arch_args is None or not config.roar_work_dir
    ):
        raise InputError("ROAR needs the training split, the architecture and a work directory")

    device = model_device(model)
    explainers = {}
    method_settings: dict[str, dict[str, Any]] = {}
    finder_of: dict[str, str] = {}
    for spec in methods:
        name, options = parse_method(spec)
        if name in PATHWAY_METHODS:
            finder = options.get("finder", "cp-mct")
            finder_of[spec] = finder
            options = {
                "sparsity": config.sparsity,
                "granularity": config.granularity,
                "seed": config.seed,
                "generator": config.generator,
                "settings": config.finder_settings.get(finder, {}),
                **options,
            }
            method_settings[spec] = options
            # a generator's weights are checked once, below, on `model`, which no metric changes
            # (the sanity check explains randomised copies of it)
            explainers[spec] = method_explainer(name, **options, verify_weights=False)
        else:
            explainers[spec] = method_explainer(name, **options)
    finders = set(finder_of.values())
    stray = sorted(set(config.finder_settings) - finders)
    if stray:
        raise InputError(
            f"settings for finder(s) no method uses: {', '.join(stray)} (finders in use: "
            f"{', '.join(sorted(finders)) or 'none'})"
        )

    inputs = test_set.images.to(device)
    labels = test_set.labels.to(device)
    targets = resolve_targets(model, inputs, labels if config.target == "label" else None)
    curve_settings: dict[str, Any] = {
        "reduction": config.reduction,
        "batch_size": config.batch_size,
        "removal": config.removal,
        "seed": config.seed,
    }
    perturbation = {
        "lerf": LeRF(config.percentages, **curve_settings),
        "morf": MoRF(config.percentages, **curve_settings),
        "deletion": Deletion(config.steps, **curve_settings),
        "insertion": Insertion(config.steps, **curve_settings),
    }
    wanted = [m for m in perturbation if m in config.metrics]
    results: dict[str, dict[str, Any]] = {spec: {} for spec in methods}
    if finder_of:  # each finder once up front: bad settings or a wrong generator fail early
        gated = GatedModel.discover(model, inputs[:1])
        for spec, finder in finder_of.items():
            options = method_settings[spec]
            built = build_finder(
                finder,
                gated,
                FinderOptions(
                    options["sparsity"],
                    options["granularity"],
                    options["generator"],
                    options["seed"],
                    options["settings"],
                ),
            )
            results[spec]["finder_sparsity"] = built.sparsity
    needs_maps = bool(wanted) or "localisation" in config.metrics
    with warnings.catch_warnings():  # counted per method below, not warned per batch
        warnings.simplefilter("ignore", ZeroMapsWarning)
        for spec in tqdm(methods, desc="methods", disable=not config.progress):
            explain = explainers[spec]
            if needs_maps:
                started = time.perf_counter()
                maps = torch.cat(
                    [
                        explain(
                            model,
                            inputs[i : i + config.batch_size],
                            targets[i : i + config.batch_size],
                        )
                        for i in range(0, inputs.shape[0], config.batch_size)
                    ]
                )
                elapsed = time.perf_counter() - started
                results[spec]["seconds_per_image"] = elapsed / inputs.shape[0]
                results[spec]["zero_maps"] = int(zero_maps(maps).sum())  # no ranking: ties removed
                for metric in wanted:
                    results[spec][metric] = perturbation[metric](
                        model, inputs, targets, attributions=maps
                    ).summary()
                if "localisation" in config.metrics:
                    masks = test_set.masks.to(device)
                    hits = PointingGame(config.tolerance)(maps, masks)
                    mass = RelevanceMass()(maps, masks)
                    results[spec]["localisation"] = {
                        "pointing_game": hits.mean().item(),
                        "relevance_mass": mass.mean().item(),
                        "higher_is_better": True,
                        "tolerance": config.tolerance,
                    }
            if "sanity" in config.metrics:
                count = min(config.sanity_limit, inputs.shape[0])
                sanity = CascadingRandomisation(seed=config.seed)
                results[spec]["sanity"] = sanity(
                    model, inputs[:count], targets[:count], explain
                ).summary()
    zeroed = [
        f"{spec} ({results[spec]['zero_maps']} of {inputs.shape[0]})"
        for spec in methods
        if results[spec].get("zero_maps")
    ]
    if zeroed:
        warnings.warn(
            f"all-zero maps, whose pixel rankings are ties only: {', '.join(zeroed)}",
            ZeroMapsWarning,
            stacklevel=2,
        )

    payload: dict[str, Any] = {
        "data": test_set.name,
        "split": test_set.split,
        "samples": int(inputs.shape[0]),
        "target": config.target,
        "methods": list(methods),
        "metrics": list(config.metrics),
        "config": {
            "percentages": list(config.percentages),
            "steps": config.steps,
            "reduction": config.reduction,
            "baseline": "0 in normalised space (the data-set mean)",
            "removal": config.removal,
            "noise_std": DEFAULT_NOISE_STD if config.removal == "noisy-linear" else None,
            "sparsity": config.sparsity,
            "granularity": config.granularity,
            "seed": config.seed,
            "sanity_samples": min(config.sanity_limit, int(inputs.shape[0])),
            "generator": config.generator,
            "finder_settings": config.finder_settings,
            **config.extra,
        },
        "results": results,
    }
    if "roar" in config.metrics:
        roar = ROAR(
            config.roar_work_dir,
            percentages=config.roar_percentages,
            epochs=config.roar_epochs,
            train_limit=config.roar_train_limit,
            seed=config.seed,
            target=config.target,
            reduction=config.reduction,
            removal=config.removal,
            explain_batch_size=config.batch_size,
            progress=config.progress,
        )
        roar_test = test_set if roar_test_set is None else roar_test_set
        payload["roar"] = {"test_samples": len(roar_test), "train_samples": len(train_set)}
        outcome = roar(
            model,
            arch,
            arch_args,
            train_set,
            roar_test,
            {spec: bind(explainers[spec], model) for spec in methods},
            method_settings,
        )
        payload["roar"].update(outcome.summary())
        for spec in methods:
            results[spec]["roar"] = {f"{q:g}": acc for q, acc in outcome.accuracy[spec].items()}
    return payload


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _pick(summary: Mapping[str, Any], q: float) -> float | None:
    for fraction, value in zip(summary["fractions"], summary["curve"], strict=True):
        if abs(fraction * 100 - q) < 1e-6:
            return value
    return None


def markdown_table(payload: Mapping[str, Any]) -> str:
    """A Markdown table of ``payload`` (from :func:`evaluate_attribution`), one row per method."""
    results = payload["results"]
    metrics = payload["metrics"]
    pct = payload["config"]["percentages"]
    shown = [q for q in (1.0, 5.0, 10.0) if q in pct] or list(pct)[:3]
    columns: list[tuple[str, Any]] = []
    for name, arrow in (("lerf", "↓"), ("morf", "↑")):
        if name in metrics:
            for q in shown:
                columns.append(
                    (f"{name.upper()} {q:g}% {arrow}", lambda r, n=name, q=q: _pick(r[n], q))
                )
            columns.append((f"{name.upper()} area {arrow}", lambda r, n=name: r[n]["area"]))
    for name, arrow in (("deletion", "↓"), ("insertion", "↑")):
        if name in metrics:
            columns.append((f"{name} AUC {arrow}", lambda r, n=name: r[n]["area"]))
    if "localisation" in metrics:
        columns.append(("pointing ↑", lambda r: r["localisation"]["pointing_game"]))
        columns.append(("mass ↑", lambda r: r["localisation"]["relevance_mass"]))
    if "sanity" in metrics:
        columns.append(("SSIM last layer ↓", lambda r: r["sanity"]["similarity"]["ssim"][0]))
        columns.append(("SSIM all layers ↓", lambda r: r["sanity"]["similarity"]["ssim"][-1]))
        columns.append(("Spearman all ↓", lambda r: r["sanity"]["similarity"]["spearman_abs"][-1]))
    if "roar" in metrics:
        for q in payload["roar"]["percentages"]:
            columns.append((f"ROAR {q:g}% ↓", lambda r, q=q: r["roar"][f"{q:g}"]))
    lines = [
        "| method | " + " | ".join(c for c, _ in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for method, row in results.items():
        lines.append(f"| {method} | " + " | ".join(_fmt(get(row)) for _, get in columns) + " |")
    if "roar" in metrics and payload["roar"].get("unperturbed_accuracy") is not None:
        lines.append("")
        lines.append(
            f"ROAR: retrained on unperturbed data: accuracy {payload['roar']['unperturbed_accuracy']:.3f}."
        )
    return "\n".join(lines) + "\n"


def plot_results(payload: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Save LeRF/MoRF curves, ROAR accuracy vs q and sanity SSIM vs layer as PNGs; return paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from neuralpath.io import atomic_path

    out = Path(out_dir)
    results, metrics = payload["results"], payload["metrics"]
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(out / name)

    curves = [m for m in ("lerf", "morf", "deletion", "insertion") if m in metrics]
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
        for ax, metric in zip(axes[0], curves, strict=True):
            for method, row in results.items():
                ax.plot(
                    [100 * f for f in row[metric]["fractions"]],
                    row[metric]["curve"],
                    marker=".",
                    label=method,
                )
            ax.set_xlabel("% pixels " + ("inserted" if metric == "insertion" else "removed"))
            ax.set_ylabel("|p - p'| / p" if metric in ("lerf", "morf") else "p (target class)")
            ax.set_title(metric.upper() if metric in ("lerf", "morf") else metric)
        axes[0][0].legend(fontsize=7)
        save(fig, "perturbation_curves.png")
    if "roar" in metrics:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        qs = payload["roar"]["percentages"]
        for method, row in results.items():
            ax.plot(qs, [row["roar"][f"{q:g}"] for q in qs], marker="o", label=method)
        if payload["roar"].get("unperturbed_accuracy") is not None:
            ax.axhline(
                payload["roar"]["unperturbed_accuracy"],
                color="grey",
                linestyle="--",
                label="unperturbed",
            )
        ax.set_xlabel("% most relevant pixels removed")
        ax.set_ylabel("test accuracy after retraining")
        ax.set_title("ROAR (lower is better)")
        ax.legend(fontsize=7)
        save(fig, "roar.png")
    if "sanity" in metrics:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for method, row in results.items():
            layers = row["sanity"]["layers"]
            ax.plot(
                range(len(layers) + 1),
                [1.0, *row["sanity"]["similarity"]["ssim"]],
                marker="o",
                label=method,
            )
        ax.set_xticks(range(len(layers) + 1), ["none", *layers], rotation=60, fontsize=7)
        ax.set_xlabel("randomised down to layer (cascading, from the output)")
        ax.set_ylabel("SSIM to the trained model's map")
        ax.set_title("Sanity check (lower is better)")
        ax.legend(fontsize=7)
        save(fig, "sanity_ssim.png")
    return written
