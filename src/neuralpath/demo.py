"""The main job (``make demo``): the full study on Fashion-MNIST from nothing.

Trains the VGG-11 and AlexNet targets, fits a GEN-CNP generator for each, compares every method
on the same test samples and writes one report per target. Each step runs the same CLI command a
user would and is skipped when its output already exists, so a re-run reuses finished work.

    python -m neuralpath.demo [--runs runs] [--limit 500] [--seed 0]   (delete runs/ to start over)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from neuralpath.cli import main as cli
from neuralpath.io import write_json_atomic


@dataclass(frozen=True)
class Step:
    """One CLI command, done once ``output`` exists (``None``: the command resumes by itself)."""

    title: str
    output: Path | None
    argv: tuple[str, ...]


MEAN_GENERATOR: tuple[str, ...] = ("--ablation", "mean", "--swap-weight", "1", "--alpha", "ALPHA")
"""How the demo trains the generator it uses under mean ablation [ours]: under that ablation, with
the swap penalty that keeps pathways input-dependent (``## GEN-CNP trained under interventions``
in docs/results.md measures the choices); ``ALPHA`` is :data:`MEAN_GENERATOR_ALPHA`."""
MEAN_GENERATOR_ALPHA = "1.5"


def plan(runs: Path, limit: int, train_limit: int, gencnp_epochs: int, seed: int = 0) -> list[Step]:
    """The demo's steps, in order, for both targets; every command runs with ``--seed seed``.

    Each target gets two GEN-CNP generators: the paper's (zero ablation, KL distillation) and one
    trained under mean ablation (:data:`MEAN_GENERATOR`). Each study runs every method under zero
    ablation (the papers' protocol, with the paper's generator) and mean ablation (with the
    generator trained under it), with the leakage controls beside the faithfulness numbers."""
    mean_args = tuple(MEAN_GENERATOR_ALPHA if a == "ALPHA" else a for a in MEAN_GENERATOR)
    steps: list[Step] = []
    for arch in ("vgg11", "alexnet"):
        target = runs / f"{arch}-fmnist"
        generator = runs / f"gencnp-{arch}-fmnist"
        mean_generator = runs / f"gencnp-mean-{arch}-fmnist"
        study = runs / "demo" / arch
        fit = ("fit-gencnp", "--checkpoint", str(target), "--data", "fashion-mnist",
               "--epochs", str(gencnp_epochs), "--limit", str(train_limit), "--resume")  # fmt: skip
        # fmt: off
        steps += [
            Step(
                f"train {arch}",
                target / "meta.json",
                ("train", "--arch", arch, "--data", "fashion-mnist", "--epochs", "3",
                 "--out", str(target)),
            ),
            Step(f"fit GEN-CNP for {arch}", None, (*fit, "--out", str(generator))),
            Step(
                f"fit GEN-CNP under mean ablation for {arch}",
                None,
                (*fit, *mean_args, "--out", str(mean_generator)),
            ),
            Step(
                f"compare all methods on {arch}",
                study / "report.html",
                ("compare", "--checkpoint", str(target), "--generator", f"zero={generator}",
                 "--generator", f"mean={mean_generator}", "--data", "fashion-mnist",
                 "--split", "test", "--limit", str(limit), "--ablation", "zero,mean",
                 "--out", str(study)),
            ),
        ]
        # fmt: on
    return [Step(step.title, step.output, (*step.argv, "--seed", str(seed))) for step in steps]


def _headline(study: Path) -> str:
    """Per ablation, each method's faithfulness beside its leakage controls (blank agreement:
    the blank input still gives the class; swap→mask: another sample's pathway decides)."""
    results = json.loads((study / "results.json").read_text())
    lines = []
    for ablation, part in results["interventions"].items():
        lines += [
            f"{ablation} ablation",
            f"  {'method':<12} {'agree':>6} {'acc':>6} {'mIC%':>6} {'mDC%':>6} {'acIOU%':>7} "
            f"{'kept':>6} {'blank':>6} {'swap→mask':>9}",
        ]
        for name, row in part["methods"].items():
            lines.append(
                f"  {name:<12} {row['agreement']:6.3f} {row['accuracy']:6.3f} {row['mic']:6.2f} "
                f"{row['mdc']:6.2f} {row['aciou']:7.2f} {row['kept_fraction_mean']:6.3f} "
                f"{row['blank_agreement']:6.3f} {row['swap_follows_mask']:9.3f}"
            )
    return "\n".join(lines)


def run(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m neuralpath.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", default="runs", help="working directory (default runs/)")
    parser.add_argument("--limit", type=int, default=500, help="test images per study (500)")
    parser.add_argument(
        "--train-limit", type=int, default=20000, help="training images for GEN-CNP (default 20000)"
    )
    parser.add_argument("--gencnp-epochs", type=int, default=3, help="GEN-CNP epochs (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every step (default 0)")
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    started = time.perf_counter()
    skipped = False
    for step in plan(runs, args.limit, args.train_limit, args.gencnp_epochs, args.seed):
        if step.output is not None and step.output.exists():
            print(f"== {step.title}: done already ({step.output})", flush=True)
            skipped = True
            continue
        print(f"== {step.title}: neuralpath {' '.join(step.argv)}", flush=True)
        code = cli(list(step.argv))
        if code != 0:
            print(f"demo stopped: step '{step.title}' failed (exit {code})", file=sys.stderr)
            return code
    seconds = time.perf_counter() - started
    print(f"\nDemo finished in {seconds:.0f} s.")
    write_json_atomic(
        runs / "demo" / "timing.json",
        {"seconds": seconds, "from_scratch": not skipped, "argv": list(argv or sys.argv[1:])},
    )
    for arch in ("vgg11", "alexnet"):
        study = runs / "demo" / arch
        print(
            f"\n{arch} on Fashion-MNIST test ({args.limit} images) — report: {study / 'report.html'}"
        )
        print(_headline(study))
    return 0


if __name__ == "__main__":
    sys.exit(run())
