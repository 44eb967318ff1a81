"""GEN-CNP study on Fashion-MNIST: GEN-CNP vs DGR, DGR-R and critical pathways; transfer;
ablations; the alpha trade-off frontier.

For each target (``runs/vgg11-fmnist``, ``runs/alexnet-fmnist``; waited for up to ``--wait`` s,
then trained with :func:`neuralpath.train.train_target` when still absent; the study works on
its own snapshot under ``--out/targets``):

1. fit a GEN-CNP generator (default config, ``--alpha``) on a seeded ``--train-limit`` subset of
   the training split for ``--epochs`` epochs (reused when its directory is complete);
2. explain the first ``--eval-limit`` test images with ``gencnp``; then ``cp-mct``, ``dgr``,
   ``dgr-r`` and ``gencnp-global`` at the *matched* sparsity 1 - (GEN-CNP's mean kept fraction);
   all through ``build_finder`` + ``run_finder``; metrics from ``summarize``;
3. transfer: class pathways from the first ``--j`` correctly predicted training instances per
   class (θ = ``--theta``), applied to the same test images by predicted class, for gencnp and
   cp-mct;
4. (first target only) ablations: per-layer PDN, MLP RFE; and the alpha sweep ``--alphas`` with
   cp-mct at each matched sparsity, plotted as ``docs/figures/gencnp_frontier.png``.

Everything goes to ``--out`` (generators, ``results.json``) and the ``## GEN-CNP study`` section
of ``docs/results.md``: every table, the design paragraph and the findings are rendered from
``results.json`` (``--report-only`` renders them again without running anything); nothing is
typed in by hand.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gencnp_study.py
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from neuralpath.data import load_dataset
from neuralpath.errors import CheckpointError
from neuralpath.gating import GatedModel
from neuralpath.io import atomic_path, write_json_atomic
from neuralpath.methods import FinderOptions, build_finder
from neuralpath.methods.gencnp import FitConfig, GeneratorConfig, fit_gencnp
from neuralpath.methods.gencnp.checkpoint import read_meta
from neuralpath.runner import open_target, run_finder
from neuralpath.transfer import build_class_pathways, evaluate_transfer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _common import command_line, in_repository, shown, write_section  # noqa: E402

SECTION = "## GEN-CNP study"
NOISE = 1.0
"""Differences below this many points (of a % metric) are read as noise in the findings."""
KEYS = (
    "agreement",
    "accuracy",
    "mic",
    "mdc",
    "aciou",
    "kept_fraction_mean",
    "kept_fraction_std",
    "seconds_per_image",
)


def ensure_target(directory: Path, args: argparse.Namespace) -> tuple[Path, str]:
    """The study's own snapshot of a target, ``--out/targets/<name>``, and where it came from.

    Made once: a copy of the shared checkpoint (waited for up to ``--wait`` seconds), or, when it
    never appears, a target trained here (``--target-train-limit`` images, 2 epochs). Generators
    are tied to the snapshot's weights, so retraining the shared checkpoint later does not break
    (or silently change) the study.
    """
    own = args.out / "targets" / directory.name
    if (own / "meta.json").exists():
        return own, f"the snapshot already in `{shown(own)}`"
    if directory.resolve() == own.resolve():
        raise SystemExit(f"target {directory} not found")
    deadline = time.time() + args.wait
    while not (directory / "meta.json").exists() and time.time() < deadline:
        time.sleep(10)
    if (directory / "meta.json").exists():
        shutil.copytree(directory, own)
        return own, f"a copy of `{shown(directory)}` taken when the study ran"
    from neuralpath.train import train_target

    arch = directory.name.split("-")[0]
    print(f"[study] {directory} absent: training {arch} into {own}", file=sys.stderr)
    source = (
        f"trained by the study ({arch}, 2 epochs on {args.target_train_limit} training images, "
        f"seed 0), `{shown(directory)}` being absent"
    )
    train_target(
        arch,
        "fashion-mnist",
        epochs=2,
        seed=0,
        device="cpu",
        out_dir=own,
        limit=args.target_train_limit,
        progress=False,
    )
    return own, source


def fit(
    gated: GatedModel,
    train: Any,
    out: Path,
    config: FitConfig,
    target_meta: dict[str, Any],
    progress: bool,
) -> tuple[Path, list[dict[str, Any]]]:
    """Fit (or finish / reuse) the generator in ``out``; returns the directory and history.

    The history's last entry carries ``reused``: whether a complete generator from an earlier
    run was taken as it was (the report says how many were)."""
    started = time.perf_counter()
    try:
        reused = len(read_meta(out).get("history", [])) >= config.epochs
    except (CheckpointError, OSError, ValueError):  # absent or unreadable: fit_gencnp decides
        reused = False
    fit_gencnp(
        gated,
        train,
        config,
        out_dir=out,
        resume=True,
        progress=progress,
        data_name="fashion-mnist",
        target_meta=target_meta,
    )
    history = read_meta(out)["history"]
    print(
        f"[study] generator {out.name}: {time.perf_counter() - started:.0f} s, "
        f"last epoch {history[-1]}",
        file=sys.stderr,
    )
    history[-1] = {**history[-1], "reused": reused}
    return out, history


def evaluate(
    method: str,
    gated: GatedModel,
    test: Any,
    args: argparse.Namespace,
    sparsity: float = 0.9,
    generator: Path | None = None,
) -> dict[str, Any]:
    options = FinderOptions(
        sparsity=sparsity,
        granularity="channel",  # the study compares channel pathways (GEN-CNP's only units)
        generator=None if generator is None else str(generator),
        seed=args.seed,
    )
    finder = build_finder(method, gated, options)
    run = run_finder(
        finder,
        test,
        batch_size=args.batch_size,
        limit=args.eval_limit,
        progress=args.progress,
        method=method,
    )
    summary = run.summary()
    print(f"[study] {method}: " + ", ".join(f"{k} {summary[k]:.4g}" for k in KEYS), file=sys.stderr)
    return summary


def matched(kept: float) -> float:
    """The sparsity (fraction dropped) matching a mean kept fraction, in [0, 0.99]."""
    return min(0.99, max(0.0, 1.0 - kept))


def base_fit_config(args: argparse.Namespace) -> FitConfig:
    """The generator training configuration of every fit (ablations change one field)."""
    return FitConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        alpha=args.alpha,
        seed=args.seed,
        generator=GeneratorConfig(),
    )


def study_target(
    directory: Path, source: str, args: argparse.Namespace, first: bool
) -> dict[str, Any]:
    target, gated = open_target(str(directory), "cpu")
    size = target.meta.input_shape[-1]
    train = load_dataset(
        "fashion-mnist", "train", limit=args.train_limit, seed=args.seed, image_size=size
    )
    test = load_dataset("fashion-mnist", "test", image_size=size)
    work = args.out / directory.name
    meta = target.meta.to_dict()
    base = base_fit_config(args)
    gdir, history = fit(gated, train, work / "gen-default", base, meta, args.progress)
    result: dict[str, Any] = {
        "target": shown(directory),
        "target_source": source,
        "target_epochs": target.meta.epochs,
        "target_test_accuracy": target.meta.test_accuracy,
        "sites": [[s.name, s.units] for s in gated.sites],
        "generator_history": history,
        "methods": {},
    }
    methods = result["methods"]
    methods["gencnp"] = evaluate("gencnp", gated, test, args, generator=gdir)
    sparsity = matched(methods["gencnp"]["kept_fraction_mean"])
    result["matched_sparsity"] = sparsity
    for method in ("cp-mct", "dgr", "dgr-r"):
        methods[method] = evaluate(method, gated, test, args, sparsity=sparsity)
    methods["gencnp-global"] = evaluate("gencnp-global", gated, test, args, sparsity, gdir)

    transfer: dict[str, Any] = {}
    for method in ("gencnp", "cp-mct"):
        options = FinderOptions(
            sparsity=sparsity, granularity="channel", generator=str(gdir), seed=args.seed
        )
        finder = build_finder(method, gated, options)
        classes = build_class_pathways(
            finder,
            train,
            target.meta.num_classes,
            j=args.j,
            theta=args.theta,
            batch_size=args.batch_size,
            class_names=list(target.meta.class_names),
            progress=args.progress,
        )
        classes.save(work / f"class_pathways_{method}.safetensors")
        outcome = evaluate_transfer(
            finder,
            classes,
            test,
            limit=args.eval_limit,
            batch_size=args.batch_size,
            progress=args.progress,
            method=method,
        )
        transfer[method] = {
            **outcome.to_dict(),
            "class_kept_fraction_mean": float(classes.pathway.kept_fraction().mean()),
        }
        print(
            f"[study] transfer {method}: instance mdc {outcome.instance['mdc']:.3g}, class mdc "
            f"{outcome.transfer['mdc']:.3g}, class agreement {outcome.transfer['agreement']:.3g}",
            file=sys.stderr,
        )
    result["transfer"] = transfer

    if first and not args.skip_ablations:
        ablations: dict[str, Any] = {}
        for name, cfg in (
            ("per-layer PDN", GeneratorConfig(pdn="per-layer")),
            ("MLP RFE", GeneratorConfig(rfe="mlp")),
        ):
            slug = name.lower().replace(" ", "-")
            adir, ahist = fit(
                gated,
                train,
                work / f"gen-{slug}",
                FitConfig(**{**base.__dict__, "generator": cfg}),
                meta,
                args.progress,
            )
            ablations[name] = evaluate("gencnp", gated, test, args, generator=adir)
            ablations[name]["history"] = ahist
        result["ablations"] = ablations
        sweep = []
        for alpha in args.alphas:
            if math.isclose(alpha, args.alpha):
                gen_summary, sdir = methods["gencnp"], gdir
            else:
                sdir, shist = fit(
                    gated,
                    train,
                    work / f"gen-alpha-{alpha:g}",
                    FitConfig(**{**base.__dict__, "alpha": alpha}),
                    meta,
                    args.progress,
                )
                gen_summary = evaluate("gencnp", gated, test, args, generator=sdir)
                result.setdefault("sweep_histories", {})[f"{alpha:g}"] = shist
            mct = evaluate(
                "cp-mct", gated, test, args, sparsity=matched(gen_summary["kept_fraction_mean"])
            )
            sweep.append({"alpha": alpha, "gencnp": gen_summary, "cp-mct": mct})
        result["alpha_sweep"] = sweep
    return result


def plot_frontier(sweep: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for method, marker in (("gencnp", "o-"), ("cp-mct", "s--")):
        kept = [100 * row[method]["kept_fraction_mean"] for row in sweep]
        for ax, key, label in zip(
            axes,
            ("mdc", "agreement", "aciou"),
            (
                "mDC % (lower is better)",
                "agreement (higher is better)",
                "acIOU % (higher is better)",
            ),
            strict=True,
        ):
            ax.plot(
                kept,
                [row[method][key] for row in sweep],
                marker,
                label="GEN-CNP" if method == "gencnp" else "cp-mct (matched sparsity)",
            )
            ax.set_xlabel("mean kept fraction %")
            ax.set_ylabel(label)
    for row in sweep:
        axes[0].annotate(
            f"α={row['alpha']:g}",
            (100 * row["gencnp"]["kept_fraction_mean"], row["gencnp"]["mdc"]),
            fontsize=8,
        )
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_sweep(results: dict[str, Any], args: argparse.Namespace) -> None:
    """Plot the first target's α sweep (if any) to ``--figure``."""
    name, first = next(iter(results["targets"].items()))
    if "alpha_sweep" in first:
        limit = results["config"]["eval_limit"]
        title = f"GEN-CNP α trade-off on {name} ({limit} test images)"
        plot_frontier(first["alpha_sweep"], args.figure, title)


def leakage_cells(summary: dict[str, Any]) -> str:
    """The leakage controls beside the faithfulness cells: ablation, blank agreement and swap
    follows-mask in % ("–" in results from before the controls existed)."""
    if "swap_follows_mask" not in summary:
        return "– | – | –"
    return (
        f"{summary['ablation']} | {100 * summary['blank_agreement']:.1f} | "
        f"{100 * summary['swap_follows_mask']:.1f}"
    )


def fmt(summary: dict[str, Any], spread: bool = True) -> str:
    """Table cells: agreement, accuracy, mIC, mDC, acIOU, kept fraction (all in %), then the
    leakage controls (:func:`leakage_cells`)."""
    kept = f"{100 * summary['kept_fraction_mean']:.1f}"
    if spread:
        kept += f" ± {100 * summary['kept_fraction_std']:.1f}"
    return (
        f"{100 * summary['agreement']:.1f} | {100 * summary['accuracy']:.1f} | "
        f"{summary['mic']:.2f} | {summary['mdc']:.2f} | {summary['aciou']:.1f} | {kept} | "
        + leakage_cells(summary)
    )


LEAKAGE_HEADER = "ablation | blank agr. % ↓ | swap → mask % ↓"
HEADER = [
    "| method | agreement % | accuracy % | mIC % | mDC % ↓ | acIOU % | kept % (mean ± sd) | "
    f"{LEAKAGE_HEADER} |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def design_notes(results: dict[str, Any]) -> str:
    """The generator's design, from the configuration the study ran with."""
    gen = {**GeneratorConfig().to_dict(), **results["config"].get("generator_config", {})}
    fit_cfg = {**FitConfig().__dict__, **results["config"].get("fit_config", {})}
    fit_cfg.pop("generator", None)
    pdn = (
        f"{gen['pdn_depth']} pre-norm transformer encoder layer(s) ({gen['heads']} heads) over "
        "the L layer tokens + learned layer embedding (every layer's importance can read every "
        "deeper layer's features with one shared set of weights)"
    )
    return (
        "Design of the generator (names and roles from the paper; shapes and training choices "
        "[ours], all configurable in `GeneratorConfig`/`FitConfig`; "
        + ("values as run" if "generator_config" in results["config"] else "library defaults")
        + "): RFE = "
        + (
            f"stride-2 conv 3×3 + GroupNorm + ReLU ({gen['rfe_width']} channels) repeated down "
            f"to S×S (S = min({gen['resolution']}, smallest site side)), 1×1 projection to "
            f"D = {gen['width']}"
            if gen["rfe"] == "conv"
            else f"an MLP to D = {gen['width']}"
        )
        + ", flattened to one token per layer; PDN = "
        + (pdn if gen["pdn"] == "shared" else "one network per layer")
        + "; RPD = a GRU cell carried over the layers in forward order with a linear head per "
        f"layer, score logits initialised around {gen['init_logit']:g} ± {gen['init_spread']:g} "
        "so the first pathways keep almost every unit; DAQ "
        f"(β = {gen['daq_beta']:g}, σ = {gen['daq_sigma']:g}) binarises exactly in the forward "
        f"pass. Loss T²·{fit_cfg['distillation'].upper()} + α·Σ‖s_l‖²/ΣC_l "
        f"(T = {fit_cfg['temperature']:g}), Adam with a {fit_cfg['schedule']} learning-rate "
        "schedule, the last epoch's generator is used (no selection on validation)."
    )


def _pct(summary: dict[str, Any], key: str) -> float:
    """A metric in %: agreement and accuracy are stored as fractions, the others in %."""
    return 100 * summary[key] if key in ("agreement", "accuracy") else summary[key]


def _versus(
    results: dict[str, Any], key: str, a: str, b: str, digits: int = 1
) -> tuple[list[str], list[float]]:
    """``target a vs b %`` per target, and the differences a − b."""
    texts, diffs = [], []
    for name, res in results["targets"].items():
        x, y = _pct(res["methods"][a], key), _pct(res["methods"][b], key)
        texts.append(f"{name} {x:.{digits}f} vs {y:.{digits}f} %")
        diffs.append(x - y)
    return texts, diffs


def _tally(diffs: list[float], goal: str) -> str:
    """``k of n target(s)`` on which the difference is beyond the noise level in the direction
    ``goal`` (``"higher"`` or ``"lower"``), with how many are within noise."""
    n = len(diffs)
    sign = 1.0 if goal == "higher" else -1.0
    beyond = sum(sign * d > NOISE for d in diffs)
    noise = sum(abs(d) <= NOISE for d in diffs)
    return f"{beyond} of {n} target(s)" + (f" ({noise} within noise)" if noise else "")


def _pair(label_a: str, a: dict[str, Any], label_b: str, b: dict[str, Any]) -> str:
    """Two GEN-CNP variants side by side: kept fraction, mDC, acIOU, and a verdict."""
    kept_a, kept_b = 100 * a["kept_fraction_mean"], 100 * b["kept_fraction_mean"]
    verdict = []
    if abs(kept_a - kept_b) > NOISE:
        verdict.append(f"{label_a if kept_a < kept_b else label_b} sparser")
    if abs(a["mdc"] - b["mdc"]) > NOISE:
        verdict.append(f"{label_a if a['mdc'] < b['mdc'] else label_b} more faithful")
    if abs(a["aciou"] - b["aciou"]) > NOISE:
        verdict.append(f"{label_a if a['aciou'] > b['aciou'] else label_b} higher acIOU")
    return (
        f"{label_a}: {kept_a:.1f} % kept, mDC {a['mdc']:.2f}, acIOU {a['aciou']:.1f}; "
        f"{label_b}: {kept_b:.1f} % kept, mDC {b['mdc']:.2f}, acIOU {b['aciou']:.1f} "
        f"({'; '.join(verdict) or 'no difference beyond noise'})"
    )


def findings(results: dict[str, Any]) -> list[str]:
    """The findings paragraph, every figure taken from ``results`` (the tables above)."""
    targets = results["targets"]
    cfg = results["config"]
    out = [
        f"Findings (generated from the tables above; one seed, {cfg['eval_limit']} test images, "
        f"no confidence intervals; differences of {NOISE:g} point or less are read as noise):",
        "",
    ]
    texts, diffs = _versus(results, "aciou", "gencnp", "dgr-r")
    dgr_texts, dgr_diffs = _versus(results, "aciou", "gencnp", "dgr")
    agree = ", ".join(
        f"{n} {100 * r['methods']['dgr-r']['agreement']:.1f} %" for n, r in targets.items()
    )
    out.append(
        "- **acIOU vs DGR-R (paper: GEN-CNP clearly higher): GEN-CNP higher on "
        f"{_tally(diffs, 'higher')}** ({'; '.join(texts)}); higher than DGR's on "
        f"{_tally(dgr_diffs, 'higher')} ({'; '.join(dgr_texts)}). DGR-R starts from "
        "U(0, 1) gates drawn per image; its binarised pathways keep the prediction for "
        f"{agree} of the images at this sparsity."
    )
    texts, diffs = _versus(results, "mdc", "gencnp", "dgr", digits=2)
    no_worse = sum(d <= NOISE for d in diffs)
    cost = ", ".join(
        f"{n} {r['methods']['dgr']['seconds_per_image'] / r['methods']['gencnp']['seconds_per_image']:.0f}×"
        for n, r in targets.items()
        if r["methods"]["gencnp"].get("seconds_per_image")
    )
    effort = "DGR optimises every image"
    if cost:
        effort += f" (its time per image over GEN-CNP's in this run: {cost})"
    out.append(
        f"- **mDC vs DGR (goal: no worse): no worse, noise included, on {no_worse} of "
        f"{len(diffs)} target(s)** ({'; '.join(texts)}). {effort}."
    )
    texts, diffs = _versus(results, "mdc", "gencnp", "cp-mct", digits=2)
    line = (
        "- **GEN-CNP vs critical pathways (cp-mct) at the same sparsity:** GEN-CNP's mDC lower "
        f"on {_tally(diffs, 'lower')} ({'; '.join(texts)})."
    )
    sweep = next((r["alpha_sweep"] for r in targets.values() if "alpha_sweep" in r), None)
    if sweep:
        points = [
            f"α = {row['alpha']:g} ({100 * (1 - row['gencnp']['kept_fraction_mean']):.0f} % "
            f"dropped): mDC {row['gencnp']['mdc']:.2f} vs {row['cp-mct']['mdc']:.2f} %, agreement "
            f"{100 * row['gencnp']['agreement']:.1f} vs {100 * row['cp-mct']['agreement']:.1f} %"
            for row in sweep
        ]
        wins = [
            f"{row['alpha']:g}"
            for row in sweep
            if row["cp-mct"]["mdc"] < row["gencnp"]["mdc"] - NOISE
        ]
        line += f" α sweep on {next(iter(targets))}: {'; '.join(points)}; cp-mct is the more "
        line += (
            f"faithful at α = {', '.join(wins)}." if wins else "faithful at no α (beyond noise)."
        )
    out.append(line)
    texts, diffs = _versus(results, "mdc", "gencnp", "gencnp-global", digits=2)
    out.append(
        "- **Instance-specific vs one global sparsity** (same scores, same mean kept fraction): "
        f"instance-specific more faithful (lower mDC) on {_tally(diffs, 'lower')} "
        f"(mDC {'; '.join(texts)})."
    )
    for name, res in targets.items():
        if "ablations" not in res:
            continue
        gencnp = res["methods"]["gencnp"]
        for label, (ours, theirs) in (
            ("Shared vs per-layer PDN", ("shared PDN", "per-layer PDN")),
            ("Conv vs MLP RFE", ("conv RFE", "MLP RFE")),
        ):
            if theirs in res["ablations"]:
                pair = _pair(ours, gencnp, theirs, res["ablations"][theirs])
                out.append(f"- **{label}** ({name}): {pair}.")
    for name, res in targets.items():
        parts = []
        for method, tr in res["transfer"].items():
            inst, cls = tr["instance"], tr["transfer"]
            parts.append(
                f"{method}: class mDC {cls['mdc']:.2f} vs instance {inst['mdc']:.2f} %, "
                f"agreement {100 * cls['agreement']:.1f} vs {100 * inst['agreement']:.1f} %, "
                f"Jaccard(instance, class) {tr['instance_class_jaccard']:.1f} %"
            )
        out.append(
            f"- **Transfer** ({name}): {'; '.join(parts)}. The acIOU of transferred "
            "pathways is 100 % by construction."
        )
    sources = [
        f"{name}: {res['target_source']} ({res['target_epochs']} epoch(s))"
        for name, res in targets.items()
        if "target_source" in res
    ]
    if sources:
        out.append(
            f"- Targets: {'; '.join(sources)}. Generators are tied to the snapshot weights "
            "(SHA-256 fingerprint in their `meta.json`), so a rerun reuses the snapshots."
        )
    return out


def _reused(results: dict[str, Any]) -> tuple[int, int]:
    """How many of the run's generators were reused from an earlier run, of how many."""
    histories = []
    for res in results["targets"].values():
        histories.append(res.get("generator_history", []))
        histories += [a.get("history", []) for a in res.get("ablations", {}).values()]
        histories += list(res.get("sweep_histories", {}).values())
    flags = [h[-1].get("reused") for h in histories if h]
    return sum(bool(f) for f in flags), len(flags)


def report(results: dict[str, Any], command: str, rendered_by: str | None = None) -> str:
    """The ``## GEN-CNP study`` section, rendered from ``results`` alone."""
    cfg = results["config"]
    timing = f"CPU, {cfg['threads']} thread(s)"
    if "seconds" in results:
        timing += f"; {results['seconds'] / 60:.1f} min"
        reused, total = _reused(results)
        if reused:
            timing += f", {reused} of {total} generators reused from an earlier run"
    rendered = (
        f"; section rendered from its `results.json` by `{rendered_by}`" if rendered_by else ""
    )
    figure = Path(results.get("figure", cfg.get("figure", "")))
    figure_text = (
        f"`{shown(figure)}`"
        if in_repository(figure)
        else f"figure written to {figure}, outside the repository"
    )
    lines = [
        f"{SECTION}\n",
        f"Command: `{command}` ({timing}){rendered}.",
        (
            f"Budget: generator trained for {cfg['epochs']} epochs on a seeded {cfg['train_limit']}-image "
            "subset of the Fashion-MNIST training split "
            f"({100 * cfg.get('fit_config', {}).get('val_fraction', FitConfig().val_fraction):g} % "
            "of it held out for validation), "
            f"batch {cfg['batch_size']}, Adam lr {cfg['lr']}, α = {cfg['alpha']}, "
            f"T = {cfg.get('fit_config', {}).get('temperature', FitConfig().temperature):g}; evaluation "
            f"on the first {cfg['eval_limit']} test images. Baselines at the matched sparsity "
            "1 − GEN-CNP's mean kept fraction (DGR/DGR-R: released defaults, gates binarised by the "
            "global percentile; ties at the threshold are dropped too, so their kept fraction can be "
            "lower). Channel granularity, default gated layers (post-ReLU of every conv)."
        ),
        "",
    ]
    for name, res in results["targets"].items():
        accuracy = 100 * (res["target_test_accuracy"] or 0)
        lines += [
            (
                f"### {name}: {res['target']} (test accuracy {accuracy:.2f} %; matched sparsity "
                f"{100 * res['matched_sparsity']:.1f} %)"
            ),
            "",
            *HEADER,
        ]
        lines += [f"| {method} | {fmt(summary)} |" for method, summary in res["methods"].items()]
        lines += [
            "",
            (
                f"Transfer: class pathways from the first {cfg['j']} correctly predicted "
                f"training images per class (θ = {cfg['theta']}), applied by predicted class to the "
                "same test images:"
            ),
            "",
            "| method | pathway | agreement % | accuracy % | mIC % | mDC % ↓ | acIOU % | kept % | "
            f"{LEAKAGE_HEADER} |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for method, tr in res["transfer"].items():
            lines.append(f"| {method} | instance | {fmt(tr['instance'], spread=False)} |")
            lines.append(f"| {method} | class (transfer) | {fmt(tr['transfer'], spread=False)} |")
        lines += [
            "",
            "Mean Jaccard(instance pathway, class pathway): "
            + ", ".join(
                f"{m} {tr['instance_class_jaccard']:.1f} %" for m, tr in res["transfer"].items()
            )
            + ".",
        ]
        if "ablations" in res:
            lines += [
                "",
                "Ablations (same budget):",
                "",
                *HEADER,
                f"| GEN-CNP (shared PDN, conv RFE, instance sparsity) | {fmt(res['methods']['gencnp'])} |",
                (
                    "| one global sparsity (percentile of GEN-CNP scores) | "
                    f"{fmt(res['methods']['gencnp-global'])} |"
                ),
            ]
            lines += [
                f"| {label} | {fmt(summary)} |" for label, summary in res["ablations"].items()
            ]
            lines += [
                "",
                f"α sweep ({figure_text}; cp-mct at each matched sparsity):",
                "",
                (
                    "| α | kept % | mDC % ↓ | agreement % | acIOU % | cp-mct mDC % | "
                    f"cp-mct agreement % | cp-mct acIOU % | GEN-CNP {LEAKAGE_HEADER} |"
                ),
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for row in res["alpha_sweep"]:
                g, m = row["gencnp"], row["cp-mct"]
                lines.append(
                    f"| {row['alpha']:g} | {100 * g['kept_fraction_mean']:.1f} ± "
                    f"{100 * g['kept_fraction_std']:.1f} | {g['mdc']:.2f} | {100 * g['agreement']:.1f} | "
                    f"{g['aciou']:.1f} | {m['mdc']:.2f} | {100 * m['agreement']:.1f} | {m['aciou']:.1f} | "
                    f"{leakage_cells(g)} |"
                )
        lines.append("")
    lines += [design_notes(results), "", *findings(results)]
    return "\n".join(lines).rstrip() + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark (built without running anything)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--targets",
        type=Path,
        nargs="+",
        default=[ROOT / "runs" / "vgg11-fmnist", ROOT / "runs" / "alexnet-fmnist"],
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gencnp-study")
    parser.add_argument("--train-limit", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--alphas", type=float, nargs="*", default=[0.1, 0.3, 1.0])
    parser.add_argument("--eval-limit", type=int, default=500)
    parser.add_argument("--j", type=int, default=50)
    parser.add_argument("--theta", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for targets")
    parser.add_argument(
        "--target-train-limit",
        type=int,
        default=30000,
        help="training images for a target the study has to train itself",
    )
    parser.add_argument("--skip-ablations", action="store_true")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument(
        "--figure", type=Path, default=ROOT / "docs" / "figures" / "gencnp_frontier.png"
    )
    parser.add_argument("--no-write", action="store_true", help="do not write docs/results.md")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="re-render the section (and the figure) from --out/results.json without running",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = command_line(__file__, argv, env="OMP_NUM_THREADS=1")
    if args.report_only:
        results = json.loads((args.out / "results.json").read_text())
        if not args.no_write:
            plot_sweep(results, args)
            results["figure"] = str(args.figure)
        body = report(results, results.get("command", command), rendered_by=command)
        print(body)
        if not args.no_write:
            write_section(args.results, body)
        return 0
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    config = {
        k: [str(p) for p in v] if k == "targets" else str(v) if isinstance(v, Path) else v
        for k, v in vars(args).items()
    }
    fit_config = {**base_fit_config(args).__dict__}
    config["generator_config"] = fit_config.pop("generator").to_dict()
    config["fit_config"] = fit_config
    results: dict[str, Any] = {"config": config, "targets": {}, "command": command}
    for i, directory in enumerate(args.targets):
        own, source = ensure_target(directory, args)
        results["targets"][directory.name] = study_target(own, source, args, i == 0)
        write_json_atomic(args.out / "results.json", results)
    plot_sweep(results, args)
    results["figure"] = str(args.figure)
    results["seconds"] = time.perf_counter() - started
    write_json_atomic(args.out / "results.json", results)
    body = report(results, command)
    print(body)
    if not args.no_write:
        write_section(args.results, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
