"""Score saliency methods: LeRF/MoRF, deletion/insertion, ROAR, sanity checks and localisation.

:func:`evaluate_attribution` runs the chosen metrics for several attribution methods on one
target and returns a JSON-ready payload, in steps a reader can follow:

1. :func:`check_request`: metrics, methods and data make sense, before any work;
2. :func:`build_methods`: every method built once on the target (:class:`BuiltMethod`: its
   finder, a GEN-CNP generator loaded and checked against the target's weights, its explainer,
   and the factory that rebuilds it for the sanity check's randomised copies);
3. :func:`score_method`: per method, its maps in batches (timed), the perturbation and
   localisation metrics on them, and the sanity check;
4. the payload, then ROAR over all methods at once (:func:`run_roar`).

:func:`markdown_table` and :func:`plot_results` turn the payload into a report.
``neuralpath evaluate-attribution`` and ``benchmarks/attribution_quality.py`` are thin wrappers.

Method specs: a name of :data:`neuralpath.attribution.METHOD_NAMES`, optionally with a finder
for the pathway methods after a colon: ``pathway-gradient:cp-intgrad`` (default ``cp-mct``).
Interventions: given a :class:`~neuralpath.gating.GatedModel` with an intervention, the pathway
methods' pathway model runs under it (Captum's methods have none); the sanity check's randomised
copies get it too, mean ablation with per-unit means recomputed for each randomised model over
the same reference images (see :func:`neuralpath.attribution.explainer_factory`).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn

    from neuralpath.data import ImageDataset
    from neuralpath.gating import GatedModel
    from neuralpath.interventions import Intervention
    from neuralpath.methods import PathwayFinder
    from neuralpath.metrics.perturbation import AttributionMetric, Explainer, ExplainerFactory

METRICS = ("lerf", "morf", "deletion", "insertion", "roar", "sanity", "localisation")
CURVES = ("lerf", "morf", "deletion", "insertion")
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
    sparsity: float | None = None
    granularity: str | None = None
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


def parse_method(spec: str) -> tuple[str, str | None]:
    """``"name[:finder]"`` -> (method name, finder: ``cp-mct`` by default for the pathway
    methods, None for Captum's)."""
    from neuralpath.attribution import PATHWAY_METHODS, check_method
    from neuralpath.errors import InputError

    name, _, finder = spec.partition(":")
    check_method(name)
    if name not in PATHWAY_METHODS:
        if finder:
            raise InputError(f"{name!r} takes no finder (only {', '.join(PATHWAY_METHODS)} do)")
        return name, None
    return name, finder or "cp-mct"


def check_request(
    test_set: ImageDataset,
    methods: Sequence[str],
    config: EvaluationConfig,
    *,
    roar_ready: bool,
    mean_without_images: bool,
) -> None:
    """Raise a clear error for a request that cannot run, before any work: unknown metrics, no
    method, localisation without masks, ROAR without its inputs (``roar_ready``), a sanity check
    under mean ablation without the reference images (``mean_without_images``)."""
    from neuralpath.errors import DataError, InputError

    unknown = [m for m in config.metrics if m not in METRICS]
    if unknown or not config.metrics:
        raise InputError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    if not methods:
        raise InputError("need at least one attribution method")
    for spec in methods:
        parse_method(spec)
    if "localisation" in config.metrics and test_set.masks is None:
        raise DataError(
            f"localisation needs ground-truth masks; {test_set.name!r} has none (use synthetic)"
        )
    if "roar" in config.metrics and not roar_ready:
        raise InputError("ROAR needs the training split, the architecture and a work directory")
    if "sanity" in config.metrics and mean_without_images:
        raise InputError(
            "the sanity check under mean ablation recomputes the per-unit means of each "
            "randomised model: pass the reference images"
        )


@dataclass(frozen=True)
class BuiltMethod:
    """A method spec built once on the target: ``explain`` (its explainer), ``for_model`` (the
    same method for a changed copy of the target), ``finder`` (pathway methods) and
    ``settings``, what its maps depend on beyond the spec (ROAR's cache key)."""

    spec: str
    explain: Explainer
    for_model: ExplainerFactory
    finder: PathwayFinder | None
    settings: dict[str, Any]


def build_methods(
    gated: GatedModel,
    specs: Sequence[str],
    config: EvaluationConfig,
    reference_images: Tensor | None = None,
) -> dict[str, BuiltMethod]:
    """Every spec built once on ``gated`` (its intervention for the pathway methods): bad finder
    settings or a generator trained for other weights fail here, before any work."""
    from neuralpath.errors import InputError

    parsed = {spec: parse_method(spec) for spec in specs}
    finders = {finder for _, finder in parsed.values() if finder is not None}
    stray = sorted(set(config.finder_settings) - finders)
    if stray:
        raise InputError(
            f"settings for finder(s) no method uses: {', '.join(stray)} (finders in use: "
            f"{', '.join(sorted(finders)) or 'none'})"
        )
    return {
        spec: _build_method(spec, name, finder, gated, config, reference_images)
        for spec, (name, finder) in parsed.items()
    }


def _build_method(
    spec: str,
    name: str,
    finder: str | None,
    gated: GatedModel,
    config: EvaluationConfig,
    reference_images: Tensor | None,
) -> BuiltMethod:
    from neuralpath.attribution import explainer_factory, pathway_options
    from neuralpath.interventions import ZeroAblation
    from neuralpath.methods import build_finder

    if finder is None:  # Captum's methods: no pathway model for an intervention to act on
        factory = explainer_factory(name, gated.with_intervention(ZeroAblation()))
        return BuiltMethod(spec, factory(gated.model), factory, None, {})
    options = pathway_options(
        sparsity=config.sparsity,
        granularity=config.granularity,  # type: ignore[arg-type]
        seed=config.seed,
        generator=config.generator,
        settings=config.finder_settings.get(finder, {}),
    )
    built = build_finder(finder, gated, options)
    factory = explainer_factory(name, gated, built, reference_images=reference_images)
    settings: dict[str, Any] = {
        "sparsity": config.sparsity,
        "granularity": config.granularity,
        "seed": config.seed,
        "generator": config.generator,
        "settings": config.finder_settings.get(finder, {}),
    }
    if ":" in spec:  # as recorded before the finder had a default here (ROAR caches)
        settings["finder"] = finder
    if gated.intervention.name != "zero":
        settings["ablation"] = gated.intervention.name
    return BuiltMethod(spec, factory(gated.model), factory, built, settings)


def curve_metrics(config: EvaluationConfig) -> dict[str, AttributionMetric]:
    """The perturbation metrics of ``config.metrics``, built once for every method."""
    from neuralpath.metrics.perturbation import Deletion, Insertion, LeRF, MoRF

    settings: dict[str, Any] = {
        "reduction": config.reduction,
        "batch_size": config.batch_size,
        "removal": config.removal,
        "seed": config.seed,
    }
    metrics: dict[str, Callable[[], AttributionMetric]] = {
        "lerf": lambda: LeRF(config.percentages, **settings),
        "morf": lambda: MoRF(config.percentages, **settings),
        "deletion": lambda: Deletion(config.steps, **settings),
        "insertion": lambda: Insertion(config.steps, **settings),
    }
    return {name: make() for name, make in metrics.items() if name in config.metrics}


def score_method(
    method: BuiltMethod,
    model: nn.Module,
    fast: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    masks: Tensor | None,
    config: EvaluationConfig,
) -> dict[str, Any]:
    """One method's row of results: its maps of ``inputs [N, C, H, W]`` for ``targets [N]`` in
    batches (timed; all-zero maps counted), the perturbation metrics on ``fast`` (``model`` fed
    channels-last, :class:`~neuralpath.metrics.perturbation.FastLayout`), localisation against
    ``masks [N, H, W]``, and the sanity check on the first ``config.sanity_limit`` images."""
    from neuralpath.attribution import zero_maps
    from neuralpath.metrics.localisation import PointingGame, RelevanceMass, localisation_summary
    from neuralpath.metrics.perturbation import explain_in_batches
    from neuralpath.metrics.sanity import CascadingRandomisation

    row: dict[str, Any] = {}
    if method.finder is not None:
        row["finder_sparsity"] = method.finder.sparsity
    if set(config.metrics) & {*CURVES, "localisation"}:
        started = time.perf_counter()
        maps = explain_in_batches(method.explain, inputs, targets, config.batch_size)
        row["seconds_per_image"] = (time.perf_counter() - started) / inputs.shape[0]
        row["zero_maps"] = int(zero_maps(maps).sum())  # no ranking: ties removed
        for name, metric in curve_metrics(config).items():
            row[name] = metric(fast, inputs, targets, maps).summary()
        if "localisation" in config.metrics:
            hits = PointingGame(config.tolerance)(fast, inputs, targets, maps, masks=masks)
            mass = RelevanceMass()(fast, inputs, targets, maps, masks=masks)
            row["localisation"] = {
                **localisation_summary(hits, mass),
                "tolerance": config.tolerance,
            }
    if "sanity" in config.metrics:
        count = min(config.sanity_limit, inputs.shape[0])
        sanity = CascadingRandomisation(seed=config.seed, batch_size=config.batch_size)
        row["sanity"] = sanity(model, inputs[:count], targets[:count], method.for_model).summary()
    return row


def _warn_about_zero_maps(results: Mapping[str, Mapping[str, Any]], samples: int) -> None:
    """One warning for the run naming the methods with all-zero maps (not one per batch)."""
    from neuralpath.errors import ZeroMapsWarning

    zeroed = [
        f"{spec} ({row['zero_maps']} of {samples})"
        for spec, row in results.items()
        if row.get("zero_maps")
    ]
    if zeroed:
        warnings.warn(
            f"all-zero maps, whose pixel rankings are ties only: {', '.join(zeroed)}",
            ZeroMapsWarning,
            stacklevel=3,
        )


def sanity_reference(intervention: Intervention, reference_images: Tensor | None) -> str:
    """How the sanity check's randomised models get ``intervention`` (recorded in the payload)."""
    if intervention.name == "mean":
        count = 0 if reference_images is None else int(reference_images.shape[0])
        return (
            f"per-unit means recomputed for each randomised model over the same {count} "
            "reference images"
        )
    if intervention.name == "resample":
        return "donor activations from each randomised model itself"
    return "none needed (dropped units are 0)"


def evaluate_attribution(  # noqa: PLR0913 -- public API; optional keyword-only inputs
    model: nn.Module | GatedModel,
    test_set: ImageDataset,
    methods: Sequence[str],
    config: EvaluationConfig,
    *,
    reference_images: Tensor | None = None,
    train_set: ImageDataset | None = None,
    arch: str | None = None,
    arch_args: Mapping[str, Any] | None = None,
    roar_test_set: ImageDataset | None = None,
) -> dict[str, Any]:
    """Run ``config.metrics`` for every method spec on ``test_set``; returns the JSON payload.

    ``model``: the target, or its :class:`GatedModel` whose intervention the pathway methods
    run under (``gated.with_intervention``, e.g. from the CLI's ``--ablation``);
    ``reference_images`` ``[N, *input_shape]``: what mean ablation's statistics were computed
    over (the sanity check recomputes them per randomised model). ROAR also needs
    ``train_set``, ``arch``/``arch_args`` (to retrain) and ``config.roar_work_dir``, and tests
    on ``roar_test_set`` (default ``test_set``); localisation needs ``test_set.masks``.
    """
    from tqdm.auto import tqdm

    from neuralpath.errors import ZeroMapsWarning
    from neuralpath.gating import GatedModel
    from neuralpath.metrics.perturbation import FastLayout, model_device, resolve_targets

    target = model.model if isinstance(model, GatedModel) else model
    inputs = test_set.images.to(model_device(target))
    gated = model if isinstance(model, GatedModel) else GatedModel.discover(target, inputs[:1])
    roar_inputs = (train_set, arch, arch_args, config.roar_work_dir)
    roar_ready = all(given is not None for given in roar_inputs) and bool(config.roar_work_dir)
    mean_without_images = gated.intervention.name == "mean" and reference_images is None
    check_request(
        test_set, methods, config, roar_ready=roar_ready, mean_without_images=mean_without_images
    )
    built = build_methods(gated, methods, config, reference_images)
    fast = FastLayout(gated)
    labels = test_set.labels.to(inputs.device) if config.target == "label" else None
    targets = resolve_targets(fast, inputs, labels)
    masks = None if test_set.masks is None else test_set.masks.to(inputs.device)
    with warnings.catch_warnings():  # counted per method, warned once below
        warnings.simplefilter("ignore", ZeroMapsWarning)
        results = {
            spec: score_method(built[spec], target, fast, inputs, targets, masks, config)
            for spec in tqdm(methods, desc="methods", disable=not config.progress)
        }
    _warn_about_zero_maps(results, inputs.shape[0])
    payload = _payload(test_set, methods, config, results, gated, reference_images)
    if "roar" in config.metrics:
        roar_test = test_set if roar_test_set is None else roar_test_set
        payload["roar"] = run_roar(target, built, config, train_set, roar_test, arch, arch_args)  # type: ignore[arg-type]
        for spec in methods:
            results[spec]["roar"] = dict(payload["roar"]["accuracy"][spec])
    return payload


def _payload(
    test_set: ImageDataset,
    methods: Sequence[str],
    config: EvaluationConfig,
    results: dict[str, dict[str, Any]],
    gated: GatedModel,
    reference_images: Tensor | None,
) -> dict[str, Any]:
    """The JSON payload of :func:`evaluate_attribution` (ROAR added after)."""
    from neuralpath.metrics.perturbation import DEFAULT_NOISE_STD

    samples = len(test_set)
    return {
        "data": test_set.name,
        "split": test_set.split,
        "samples": samples,
        "target": config.target,
        "methods": list(methods),
        "metrics": list(config.metrics),
        "ablation": gated.intervention.name,
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
            "sanity_samples": min(config.sanity_limit, samples),
            "generator": config.generator,
            "finder_settings": config.finder_settings,
            "intervention": gated.intervention.describe(),
            "sanity_intervention": sanity_reference(gated.intervention, reference_images),
            **config.extra,
        },
        "results": results,
    }


def run_roar(
    model: nn.Module,
    built: Mapping[str, BuiltMethod],
    config: EvaluationConfig,
    train_set: ImageDataset,
    test_set: ImageDataset,
    arch: str,
    arch_args: Mapping[str, Any],
) -> dict[str, Any]:
    """ROAR (resumable, in ``config.roar_work_dir``) for every built method at once; the
    ``roar`` entry of the payload."""
    from neuralpath.metrics.roar import ROAR

    roar = ROAR(
        config.roar_work_dir,  # type: ignore[arg-type]
        percentages=config.roar_percentages,
        epochs=config.roar_epochs,
        train_limit=config.roar_train_limit,
        seed=config.seed,
        target=config.target,
        reduction=config.reduction,
        removal=config.removal,  # type: ignore[arg-type]
        explain_batch_size=config.batch_size,
        progress=config.progress,
    )
    explainers = {spec: method.explain for spec, method in built.items()}
    settings = {spec: method.settings for spec, method in built.items()}
    outcome = roar(model, arch, arch_args, train_set, test_set, explainers, settings)
    return {"test_samples": len(test_set), "train_samples": len(train_set), **outcome.summary()}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _pick(summary: Mapping[str, Any], q: float) -> float | None:
    for fraction, value in zip(summary["fractions"], summary["curve"], strict=True):
        if abs(fraction * 100 - q) < 1e-6:
            picked: float | None = value
            return picked
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
    metrics = payload["metrics"]
    written: list[Path] = []
    plots = (
        ("perturbation_curves.png", _plot_curves, any(m in metrics for m in CURVES)),
        ("roar.png", _plot_roar, "roar" in metrics),
        ("sanity_ssim.png", _plot_sanity, "sanity" in metrics),
    )
    for name, plot, wanted in plots:
        if not wanted:
            continue
        fig = plot(plt, payload)
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(out / name)
    return written


def _plot_curves(plt: Any, payload: Mapping[str, Any]) -> Any:
    """One panel per perturbation curve, one line per method."""
    curves = [m for m in CURVES if m in payload["metrics"]]
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], curves, strict=True):
        for method, row in payload["results"].items():
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
    return fig


def _plot_roar(plt: Any, payload: Mapping[str, Any]) -> Any:
    """Test accuracy after retraining vs q, one line per method."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    qs = payload["roar"]["percentages"]
    for method, row in payload["results"].items():
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
    return fig


def _plot_sanity(plt: Any, payload: Mapping[str, Any]) -> Any:
    """SSIM to the trained model's map vs the layers randomised, one line per method."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    layers: list[str] = []
    for method, row in payload["results"].items():
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
    return fig
