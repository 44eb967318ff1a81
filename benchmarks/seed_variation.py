"""How far the demo's headline numbers move with the seed.

Runs the whole demo study (``python -m neuralpath.demo``: train both targets, fit both GEN-CNP
generators, compare every method on 500 test images) once per seed, each seed in its own runs
directory, and reports mean ± sd over the seeds per target, method and metric, plus how many
seeds agree with each of the GEN-CNP paper's comparisons. The demo skips finished steps, so a
rerun only computes missing seeds; seed 0 is the demo's own ``runs/`` (``--seed0-runs``).

    .venv/bin/python benchmarks/seed_variation.py --seeds 0 1 2

Writes the ``## Seed variation`` section of ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from neuralpath import demo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _common import command_line, shown, write_section  # noqa: E402

SECTION = "## Seed variation"
ARCHS = ("vgg11", "alexnet")
METRICS = (
    ("agreement", "agreement ↑", 3),
    ("mic", "mIC % ↑", 2),
    ("mdc", "mDC % ↓", 2),
    ("aciou", "acIOU % ↑", 1),
    ("kept_fraction_mean", "kept", 3),
    ("blank_agreement", "blank agr. ↓", 2),
    ("swap_follows_mask", "swap → mask ↓", 2),
)
"""Faithfulness beside its leakage controls (spec §10); a results file from before the controls
existed has no blank/swap keys and shows "–" there."""
CLAIMS = (
    ("GEN-CNP's acIOU above DGR-R's", lambda m: m["gencnp"]["aciou"] > m["dgr-r"]["aciou"]),
    ("GEN-CNP's acIOU above DGR's", lambda m: m["gencnp"]["aciou"] > m["dgr"]["aciou"]),
    ("GEN-CNP's mIC above DGR's", lambda m: m["gencnp"]["mic"] > m["dgr"]["mic"]),
    ("GEN-CNP's mDC no worse than DGR's", lambda m: m["gencnp"]["mdc"] <= m["dgr"]["mdc"]),
    ("GEN-CNP's mDC below cp-mct's", lambda m: m["gencnp"]["mdc"] < m["cp-mct"]["mdc"]),
)


def runs_dir(seed: int, args: argparse.Namespace) -> Path:
    return args.seed0_runs if seed == 0 else args.out / f"seed{seed}"


def mean_sd(values: list[float], digits: int) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def reading(per_seed: dict[str, list[dict]], n_seeds: int) -> list[str]:
    """Plain-language summary: which comparisons are stable across seeds, which metrics are noisy.

    ``per_seed``: ``"<arch>, <ablation> ablation"`` -> one ``methods`` dict per seed."""
    verdicts: dict[str, list[str]] = {"held": [], "failed": [], "mixed": []}
    for claim, holds in CLAIMS:
        for arch in per_seed:
            count = sum(bool(holds(run)) for run in per_seed[arch])
            kind = "held" if count == n_seeds else "failed" if count == 0 else "mixed"
            verdicts[kind].append(f"{claim} ({arch})")
    noisy = []
    for arch in per_seed:
        for method in per_seed[arch][0]:
            for key, label, _ in METRICS:
                if key not in per_seed[arch][0][method]:
                    continue
                values = [run[method][key] for run in per_seed[arch]]
                mean = statistics.mean(values)
                if abs(mean) >= 1.0 and statistics.stdev(values) > 0.25 * abs(mean):
                    noisy.append(f"{method} {label.split()[0]} on {arch}")
    text = [
        f"Reading: held on every seed: {'; '.join(verdicts['held']) or 'none'}. "
        f"Failed on every seed: {'; '.join(verdicts['failed']) or 'none'}. "
        f"Seed-dependent: {'; '.join(verdicts['mixed']) or 'none'}."
    ]
    if noisy:
        text += [
            "",
            "Metrics whose sd exceeds a quarter of their mean (compare these across methods only "
            f"with the spread in mind): {', '.join(noisy)}.",
        ]
    return text


def demo_minutes(bases: list[Path]) -> str:
    """What one seed's demo run cost, from the ``demo/timing.json`` each run writes: the mean
    over the runs that started from nothing (a rerun that skipped finished steps is faster)."""
    runs = []
    for base in bases:
        path = base / "demo" / "timing.json"
        if path.exists():
            timing = json.loads(path.read_text())
            if timing.get("from_scratch"):
                runs.append(timing["seconds"] / 60)
    if not runs:
        return "(no from-scratch timing recorded in `demo/timing.json`)"
    return f"(mean {statistics.mean(runs):.1f} min over {len(runs)} from-scratch run(s))"


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark (built without running anything)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "seeds")
    parser.add_argument("--seed0-runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < 2:
        parser.error("need at least two different seeds")

    for seed in args.seeds:
        code = demo.run(["--runs", str(runs_dir(seed, args)), "--seed", str(seed)])
        if code != 0:
            return code

    per_seed: dict[str, list[dict]] = {}
    accuracy: dict[str, list[float]] = {arch: [] for arch in ARCHS}
    for seed in args.seeds:
        base = runs_dir(seed, args)
        for arch in ARCHS:
            results = json.loads((base / "demo" / arch / "results.json").read_text())
            parts = results.get("interventions") or {"zero": {"methods": results["methods"]}}
            for ablation, part in parts.items():
                per_seed.setdefault(f"{arch}, {ablation} ablation", []).append(part["methods"])
            meta = json.loads((base / f"{arch}-fmnist" / "meta.json").read_text())
            accuracy[arch].append(100 * meta["test_accuracy"])

    lines = [
        SECTION,
        "",
        f"Command: `{command_line(__file__, argv)}` (the whole `make demo` study once per seed, every "
        f"step with `--seed N`; seed 0 is `{shown(args.seed0_runs)}`, the others "
        f"`{shown(args.out)}/seed<N>`). Mean ± sd over {len(args.seeds)} seeds; each seed trains "
        "its own targets and generators, so the spread covers training as well as the methods. "
        "Each seed costs one demo run "
        + demo_minutes([runs_dir(seed, args) for seed in args.seeds])
        + ".",
        "",
    ]
    for group, runs in per_seed.items():
        arch = group.split(",")[0]
        lines += [
            f"### {group} (target test accuracy {mean_sd(accuracy[arch], 2)} %)",
            "",
            "| method | " + " | ".join(label for _, label, _ in METRICS) + " |",
            "|---" * (len(METRICS) + 1) + "|",
        ]
        for method in runs[0]:
            cells = [
                mean_sd([run[method][key] for run in runs], digits)
                if key in runs[0][method]
                else "–"
                for key, _, digits in METRICS
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "### The GEN-CNP paper's comparisons, per seed",
        "",
        "| comparison | " + " | ".join(per_seed) + " |",
        "|---" * (len(per_seed) + 1) + "|",
    ]
    for claim, holds in CLAIMS:
        counts = [sum(bool(holds(run)) for run in runs) for runs in per_seed.values()]
        lines.append(
            f"| {claim} | " + " | ".join(f"{c} of {len(args.seeds)} seeds" for c in counts) + " |"
        )
    lines += ["", *reading(per_seed, len(args.seeds))]
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_write:
        write_section(args.results, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
