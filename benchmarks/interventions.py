"""Interventions: their cost over zero ablation, and the faithfulness–sparsity frontier under each.

**Cost** (``## Intervention cost``): on the VGG-11 target (random weights of the same
architecture when ``runs/vgg11-fmnist`` is absent: timing does not depend on the weights), one
batch of ``--batch`` test images with a random channel pathway keeping half of the channels,
timed side by side in one run (``--repeats`` rounds, each variant once per round, medians):
the plain forward, the gated forward under zero, mean and resample ablation (no grad), and one
DGR-style step (forward + backward to continuous masks) under zero and mean. Claim checked:
mean / zero <= 1.1 (spec §10: one fused multiply-add per site, no extra forward).

**Frontier** (``## Faithfulness–sparsity frontier under zero and mean ablation``): for each
demo target, on the first ``--limit`` test images, the pathways of cp-mct (channel, one global
threshold, without the connecting repair so that every point keeps exactly its fraction;
disconnected pathways count unfaithful), random (channel) and DGR (released defaults; its continuous gates, optimised under
each ablation, binarised by one global percentile) at kept fractions 0.9 … 0.1, measured under
the ablation they were found for: agreement, blank agreement and swap follows-mask. Writes a
figure to ``docs/figures/frontier.png``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/interventions.py            # after make demo
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from neuralpath.checkpoint import load_target
from neuralpath.data import load_dataset
from neuralpath.gating import GatedModel
from neuralpath.interventions import MeanAblation, ResampleAblation
from neuralpath.methods import FinderOptions, build_finder
from neuralpath.methods.dgr import DGR, DGRConfig
from neuralpath.metrics.faithfulness import pathway_outcome, summarize
from neuralpath.metrics.leakage import leakage_outcome, summarize_leakage
from neuralpath.pathway import Pathway, global_percentile
from neuralpath.reference import ReferenceStatistics, reference_statistics

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    command_line,
    interleaved_medians,
    load_batch,
    load_model,
    shown,
    write_section,
)

COST_SECTION = "## Intervention cost"
FRONTIER_SECTION = "## Faithfulness–sparsity frontier under zero and mean ablation"
KEPT = (0.9, 0.7, 0.5, 0.3, 0.1)
METHODS = ("cp-mct", "random", "dgr")


def _command() -> str:
    """The command line this run was started with (thread count as the environment set it)."""
    return command_line("interventions.py", env=f"OMP_NUM_THREADS={torch.get_num_threads()}")


def cost_section(checkpoint: Path, batch: int, repeats: int) -> str:
    model, described = load_model(checkpoint)
    images, source = load_batch(batch)
    gated = GatedModel.discover(model, images[:1])
    stats = reference_statistics(gated, load_batch(512)[0], progress=False)
    generator = torch.Generator().manual_seed(0)
    masks = {
        s.name: (torch.rand(batch, s.units, generator=generator) < 0.5).float() for s in gated.sites
    }
    under = {
        "zero": gated,
        "mean": gated.with_intervention(MeanAblation(stats)),
        "resample": gated.with_intervention(ResampleAblation(load_batch(512)[0])),
    }

    def forward(g: GatedModel | None) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return gated.forward(images) if g is None else g.forward(images, masks)

        return run

    def step(g: GatedModel) -> Callable[[], object]:
        def run() -> object:
            leaves = {k: v.clone().requires_grad_() for k, v in masks.items()}
            g.forward(images, leaves)[:, 0].sum().backward()
            return leaves

        return run

    variants = {"plain forward": forward(None)}
    variants.update({f"gated forward, {n}": forward(g) for n, g in under.items()})
    variants.update({f"DGR-style step, {n}": step(under[n]) for n in ("zero", "mean")})
    seconds = interleaved_medians(variants, repeats)
    rows = [f"| {name} | {1000 * s:.1f} |" for name, s in seconds.items()]
    fwd = seconds["gated forward, mean"] / seconds["gated forward, zero"]
    bwd = seconds["DGR-style step, mean"] / seconds["DGR-style step, zero"]
    res = seconds["gated forward, resample"] / seconds["gated forward, zero"]
    verdict = "met" if max(fwd, bwd) <= 1.1 else "NOT met"
    return "\n".join(
        [
            COST_SECTION,
            "",
            f"`{_command()}` ({described}; {batch} {source}; a random "
            f"channel pathway keeping half of {sum(s.units for s in gated.sites)} channels; "
            f"medians of {repeats} interleaved rounds).",
            "",
            "| variant | ms per batch |",
            "|---|---|",
            *rows,
            "",
            f"- mean / zero: **{fwd:.3f}×** for a gated forward, **{bwd:.3f}×** for a forward + "
            f"backward to the masks (target ≤ 1.1×: **{verdict}**).",
            f"- resample / zero: {res:.2f}× (one donor forward per batch, by design).",
        ]
    )


def measure(gated: GatedModel, images: Tensor, pathway: Pathway, baseline: Tensor) -> dict:
    """Faithfulness and leakage of ``pathway`` on ``images`` under ``gated``'s intervention."""
    row = summarize(pathway_outcome(gated, images, pathway), None, None)
    row.update(summarize_leakage(leakage_outcome(gated, images, pathway, baseline=baseline)))
    return row


def pathways_at(method: str, gated: GatedModel, images: Tensor) -> dict[float, Pathway]:
    """The method's pathways of ``images`` at every kept fraction of :data:`KEPT`."""
    if method == "dgr":
        gates = DGR(gated, DGRConfig()).optimise(images).gates
        return {k: global_percentile(dict(gates), 1.0 - k) for k in KEPT}
    exact = {"connect": False} if method == "cp-mct" else {}  # no widening: the kept fraction
    return {
        k: build_finder(
            method, gated,
            FinderOptions(sparsity=1.0 - k, granularity="channel", seed=0, settings=exact),
        ).find(images)
        for k in KEPT
    }  # fmt: skip


def frontier(checkpoint: Path, limit: int) -> tuple[dict, str]:
    """``{(method, ablation): {kept: row}}`` for one target, and a description of it."""
    target = load_target(checkpoint, "cpu")
    size = target.meta.input_shape[-1]
    images = load_dataset("fashion-mnist", "test", image_size=size).images[:limit]
    train = load_dataset("fashion-mnist", "train", image_size=size, limit=2000, seed=0).images
    gated = GatedModel.discover(target.model, target.example_input())
    stats: ReferenceStatistics = reference_statistics(gated, train, progress=False)
    results: dict = {}
    for ablation, under in (
        ("zero", gated),
        ("mean", gated.with_intervention(MeanAblation(stats))),
    ):
        for method in METHODS:
            found = pathways_at(method, under, images)
            results[(method, ablation)] = {
                k: measure(under, images, p, stats.input_mean) for k, p in found.items()
            }
    accuracy = target.meta.test_accuracy
    return results, f"{checkpoint.name} (test accuracy {100 * (accuracy or float('nan')):.2f} %)"


def frontier_tables(results: dict) -> list[str]:
    head = "| method | ablation | " + " | ".join(f"{k:.0%} kept" for k in KEPT) + " |"
    lines = []
    for key, title in (
        ("agreement", "agreement (higher is better)"),
        ("blank_agreement", "blank agreement (lower is better; plain model on the blank: "
         "{plain:.2f})"),
        ("swap_follows_mask", "swap follows mask (lower is better)"),
    ):  # fmt: skip
        plain = next(iter(next(iter(results.values())).values()))["blank_agreement_plain"]
        lines += [f"*{title.format(plain=plain)}*", "", head, "|---|---|" + "---|" * len(KEPT)]
        for (method, ablation), rows in results.items():
            cells = " | ".join(f"{rows[k][key]:.2f}" for k in KEPT)
            lines.append(f"| {method} | {ablation} | {cells} |")
        lines.append("")
    return lines


def plot(all_results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("agreement", "blank_agreement", "swap_follows_mask")
    fig, axes = plt.subplots(
        len(all_results), 3, figsize=(12, 3.3 * len(all_results)), squeeze=False
    )
    colours = dict(zip(METHODS, ("tab:blue", "tab:grey", "tab:red"), strict=True))
    for row, (name, results) in enumerate(all_results.items()):
        for col, key in enumerate(keys):
            ax = axes[row][col]
            for (method, ablation), values in results.items():
                ax.plot(
                    KEPT, [values[k][key] for k in KEPT], marker="o", color=colours[method],
                    linestyle="-" if ablation == "zero" else "--", label=f"{method}, {ablation}",
                )  # fmt: skip
            ax.set_title(f"{name}: {key.replace('_', ' ')}")
            ax.set_xlabel("kept fraction")
            ax.set_ylim(-0.02, 1.02)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def frontier_section(targets: list[Path], limit: int) -> str:
    lines = [
        FRONTIER_SECTION,
        "",
        f"`{_command()}` (after `make demo`; first {limit} Fashion-MNIST test images; mean "
        "ablation and the blank baseline use 2000 training images; solid = zero, dashed = mean "
        "in the figure).",
        "",
        "![frontier](figures/frontier.png)",
        "",
    ]
    everything = {}
    for checkpoint in targets:
        results, described = frontier(checkpoint, limit)
        everything[checkpoint.name] = results
        lines += [f"### {described}", "", *frontier_tables(results)]
    plot(everything, ROOT / "docs" / "figures" / "frontier.png")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (nothing runs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="demo runs (runs/)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--limit", type=int, default=200, help="test images for the frontier")
    parser.add_argument("--skip-frontier", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    section = cost_section(args.runs / "vgg11-fmnist", args.batch, args.repeats)
    print(section)
    write_section(args.out, section)
    targets = [args.runs / f"{a}-fmnist" for a in ("vgg11", "alexnet")]
    targets = [t for t in targets if (t / "meta.json").exists()]
    if not args.skip_frontier and targets:
        section = frontier_section(targets, args.limit)
        print(section)
        write_section(args.out, section)
    print(f"wrote {shown(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
