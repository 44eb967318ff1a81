"""Attribution quality on Fashion-MNIST: ROAR, LeRF/MoRF, deletion/insertion and sanity checks.

Pathway Gradient (NeuronMCT = ``cp-mct`` and NeuronIntGrad = ``cp-intgrad`` finders, element
units, 90 % sparsity) against gradient, input×gradient, integrated gradients, guided backprop and
Grad-CAM, on our VGG-11 and AlexNet targets (``runs/vgg11-fmnist``, ``runs/alexnet-fmnist``;
trained here with ``neuralpath.train`` when missing), laid out like the Pathway Gradient paper's
figures with the paper's CIFAR-10/ResNet-50 numbers beside ours (spec §7).

Budget (the CPU is shared): LeRF/MoRF/deletion/insertion on ``--limit`` test images, sanity on
``--sanity-limit`` of them, ROAR retraining ``--roar-epochs`` epochs on a ``--roar-train-limit``
random training subset, tested on ``--roar-test-limit`` test images. ROAR is resumable, and each
architecture's finished stage is kept in ``--work-dir``: rerunning the same command (or running
architectures in separate processes first) reuses them and only computes what is missing.

    .venv/bin/python benchmarks/attribution_quality.py

Writes ``--work-dir/<arch>/{results.json,results.md,*.png}`` and the
``## Attribution quality (ROAR, LeRF, sanity)`` section of ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Attribution quality (ROAR, LeRF, sanity)"
METHODS = {
    "pathway-gradient:cp-mct": "Pathway Gradient, NeuronMCT",
    "pathway-gradient:cp-intgrad": "Pathway Gradient, NeuronIntGrad",
    "gradient": "Gradients",
    "input-x-gradient": "Input × gradient",
    "integrated-gradients": "Integrated gradients",
    "guided-backprop": "Guided backprop",
    "grad-cam": "Grad-CAM",
}
# Reference numbers from the Pathway Gradient paper (spec §7): CIFAR-10 ROAR and LeRF, ResNet-50 sanity.
PAPER_ROAR = {  # accuracy (%) after removing 10/30/50/70/90 %; unperturbed 84.36
    "gradient": (79.1, 81.1, 82.8, 82.3, 75.5),
    "grad-cam": (74.7, 70.0, 63.3, 58.0, 47.6),
    "pathway-gradient:cp-mct": (74.4, 67.8, 65.5, 57.9, 44.4),
    "pathway-gradient:cp-intgrad": (75.1, 67.3, 61.7, 56.9, 48.0),
}
PAPER_LERF = {  # |p - p'| / p at 1/5/10 %
    "gradient": (0.216, 0.390, 0.540),
    "grad-cam": (0.076, 0.120, 0.148),
    "pathway-gradient:cp-mct": (0.039, 0.100, 0.152),
}
PAPER_SANITY = {  # SSIM after randomising fc / all blocks (ResNet-50)
    "gradient": (0.47, 0.42),
    "guided-backprop": (0.99, 0.61),
    "pathway-gradient:cp-intgrad": (0.52, 0.10),
}
TARGETS = {"vgg11": "vgg11-fmnist", "alexnet": "alexnet-fmnist"}


def ensure_target(arch: str, directory: Path, epochs: int, seed: int) -> None:
    """Train ``arch`` on Fashion-MNIST into ``directory`` unless a checkpoint is already there."""
    from neuralpath.train import train_target

    if (directory / "meta.json").exists():
        return
    print(f"{directory} missing: training {arch} for {epochs} epochs", file=sys.stderr)
    train_target(arch, "fashion-mnist", epochs=epochs, seed=seed, device="cpu", out_dir=directory)


def run_arch(arch: str, args: argparse.Namespace, metrics: list[str]) -> dict[str, Any]:
    from neuralpath.checkpoint import load_target
    from neuralpath.data import load_dataset
    from neuralpath.evaluation import (
        EvaluationConfig,
        evaluate_attribution,
        markdown_table,
        plot_results,
    )
    from neuralpath.io import read_json, state_digest, write_bytes_atomic, write_json_atomic
    from neuralpath.metrics.roar import subset

    checkpoint = ROOT / args.runs / TARGETS[arch]
    ensure_target(arch, checkpoint, args.target_epochs, args.seed)
    target = load_target(checkpoint, "cpu")
    size = target.meta.input_shape[1]
    full = load_dataset(
        "fashion-mnist",
        "test",
        limit=max(args.limit, args.roar_test_limit),
        seed=args.seed,
        image_size=size,
    )
    test_set = subset(full, args.limit, args.seed)
    train_set = load_dataset(
        "fashion-mnist", "train", limit=args.roar_train_limit, seed=args.seed, image_size=size
    )
    out = Path(args.work_dir) / arch
    name = "results" if "roar" not in metrics else "results-roar"
    key = {
        "methods": list(args.methods),
        "metrics": metrics,
        "limit": args.limit,
        "steps": args.steps,
        "sanity_limit": args.sanity_limit,
        "seed": args.seed,
        "checkpoint": f"{args.runs}/{TARGETS[arch]}",
        "target_digest": state_digest(
            target.model
        ),  # a retrained target must not reuse old results
    }
    if "roar" in metrics:
        key.update(train=args.roar_train_limit, test=args.roar_test_limit, epochs=args.roar_epochs)
    if (out / f"{name}.json").exists():  # finished earlier with the same settings: reuse it
        cached = read_json(out / f"{name}.json")
        if cached.get("benchmark_key") == key:
            return cached
    config = EvaluationConfig(
        metrics=metrics,
        percentages=tuple(float(q) for q in range(1, 11)),
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        sanity_limit=args.sanity_limit,
        roar_epochs=args.roar_epochs,
        roar_work_dir=str(out / "roar"),
        progress=not args.no_progress,
        extra={
            "checkpoint": f"{args.runs}/{TARGETS[arch]}",
            "arch": arch,
            "target_test_accuracy": target.meta.test_accuracy,
        },
    )
    started = time.perf_counter()
    payload = evaluate_attribution(
        target.model,
        test_set,
        args.methods,
        config,
        train_set=train_set,
        arch=target.meta.arch,
        arch_args=target.meta.arch_args,
        roar_test_set=subset(full, args.roar_test_limit, args.seed),
    )
    payload["wall_time_s"] = round(time.perf_counter() - started, 1)
    payload["plots"] = [
        str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)
        for p in plot_results(payload, out)
    ]
    payload["benchmark_key"] = key
    write_json_atomic(out / f"{name}.json", payload)
    write_bytes_atomic(out / f"{name}.md", markdown_table(payload).encode())
    return payload


def merge(base: dict[str, Any], roar: dict[str, Any]) -> dict[str, Any]:
    """``base`` with the ROAR results of ``roar`` added (both from :func:`run_arch`)."""
    merged = {**base, "metrics": [*base["metrics"], "roar"], "roar": roar["roar"]}
    merged["wall_time_s"] = base["wall_time_s"] + roar["wall_time_s"]
    for method, row in merged["results"].items():
        row["roar"] = roar["results"][method]["roar"]
    return merged


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _ordering(ours: dict[str, float], paper: dict[str, float], lower_first: bool) -> str:
    """Compare the method orderings; name every pair the two disagree on."""
    common = [m for m in paper if m in ours]
    key = (lambda m: ours[m]) if lower_first else (lambda m: -ours[m])
    pkey = (lambda m: paper[m]) if lower_first else (lambda m: -paper[m])
    ours_order = " < ".join(METHODS[m] for m in sorted(common, key=key))
    paper_order = " < ".join(METHODS[m] for m in sorted(common, key=pkey))
    flips = [
        f"{METHODS[a]} vs {METHODS[b]}"
        for i, a in enumerate(common)
        for b in common[i + 1 :]
        if (ours[a] - ours[b]) * (paper[a] - paper[b]) < 0
    ]
    verdict = "same ordering" if not flips else "differs on " + "; ".join(flips)
    return f"ours: {ours_order}; paper: {paper_order} — {verdict}."


def render(payloads: dict[str, dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    archs = list(payloads)
    first = payloads[archs[0]]
    roar_archs = [a for a in archs if "roar" in payloads[a]["metrics"]]
    lines = [
        SECTION,
        "",
        f"Command: `{command}`",
        "",
        "Fashion-MNIST (1×32×32, test split), targets "
        + ", ".join(
            f"`{payloads[a]['config']['checkpoint']}` ({a}, test accuracy {_f(payloads[a]['config'].get('target_test_accuracy'))})"
            for a in archs
        )
        + ". Pathway Gradient uses element units at 90 % sparsity; maps explain the target's "
        "prediction; removed pixels are set to 0 in normalised space (the data-set mean); pixel "
        "relevance = Σ|attribution| over channels; ties in relevance fall in row-major order. "
        "CPU only, shared machine.",
        "",
        (
            f"**Budget**: LeRF/MoRF/deletion/insertion on {first['samples']} test images "
            f"(q = 1..10 %, deletion/insertion in {args.steps} steps); sanity checks on "
            f"{first['config']['sanity_samples']} of them (cascading randomisation of every conv/linear "
            f"layer from the output, seed {args.seed}); ROAR ({', '.join(roar_archs) or 'not run'}) retrains the target architecture from "
            f"scratch for {args.roar_epochs} epoch(s) on {args.roar_train_limit} random training images "
            f"and tests on {args.roar_test_limit} test images, one model per (method, q), same seed "
            "for all. The paper's numbers are CIFAR-10 (ROAR, LeRF; full retraining) and "
            "ImageNet ResNet-50 (sanity): compare trends, not values."
        ),
        "",
    ]
    if roar_archs:
        archs_all, archs = archs, roar_archs
        qs = payloads[archs[0]]["roar"]["percentages"]
        lines += [
            "### ROAR: test accuracy after removing the top-q % pixels and retraining (lower = better)",
            "",
        ]
        header = (
            "| method | "
            + " | ".join(f"{a} {q:g}%" for a in archs for q in qs)
            + " | paper CIFAR-10 10/30/50/70/90 |"
        )
        lines += [header, "|---" * (len(archs) * len(qs) + 2) + "|"]
        unperturbed = " | ".join(
            _f(payloads[a]["roar"]["unperturbed_accuracy"]) for a in archs for _ in qs
        )
        lines.append(f"| (no removal, retrained) | {unperturbed} | 84.36 |")
        for m, label in ((m, METHODS.get(m, m)) for m in args.methods):
            row = " | ".join(
                _f(payloads[a]["results"][m]["roar"][f"{q:g}"]) for a in archs for q in qs
            )
            paper = "/".join(f"{v:g}" for v in PAPER_ROAR[m]) if m in PAPER_ROAR else "–"
            lines.append(f"| {label} | {row} | {paper} |")
        lines.append("")
        for a in archs:
            ours = {
                m: sum(payloads[a]["results"][m]["roar"].values()) / len(qs) for m in args.methods
            }
            paper = {m: sum(v) / len(v) for m, v in PAPER_ROAR.items()}
            lines.append(
                f"- ROAR ordering by mean accuracy over q, {a} (lowest first): "
                + _ordering(ours, paper, True)
            )
        lines.append("")
        archs = archs_all
    if "lerf" in first["metrics"]:
        lines += [
            "### LeRF: |p − p′| / p after removing the q % least relevant pixels (lower = better)",
            "",
        ]
        cols = (1, 5, 10)
        lines.append(
            "| method | "
            + " | ".join(f"{a} {q}%" for a in archs for q in cols)
            + " | "
            + " | ".join(f"{a} MoRF 10% ↑ | {a} del. AUC ↓ | {a} ins. AUC ↑" for a in archs)
            + " | paper CIFAR-10 1/5/10 % |"
        )
        lines.append("|---" * (len(archs) * (len(cols) + 3) + 2) + "|")
        for m, label in ((m, METHODS.get(m, m)) for m in args.methods):
            r = {a: payloads[a]["results"][m] for a in archs}
            lerf = " | ".join(_f(r[a]["lerf"]["curve"][q - 1]) for a in archs for q in cols)
            extra = " | ".join(
                f"{_f(r[a]['morf']['curve'][9])} | {_f(r[a]['deletion']['area'])} | {_f(r[a]['insertion']['area'])}"
                for a in archs
            )
            paper = "/".join(f"{v:.3f}" for v in PAPER_LERF[m]) if m in PAPER_LERF else "–"
            lines.append(f"| {label} | {lerf} | {extra} | {paper} |")
        lines.append("")
        for a in archs:
            ours = {m: payloads[a]["results"][m]["lerf"]["curve"][9] for m in args.methods}
            paper = {m: v[2] for m, v in PAPER_LERF.items()}
            lines.append(f"- LeRF at 10 %, {a} (best first): " + _ordering(ours, paper, True))
        lines.append("")
    if "sanity" in first["metrics"]:
        lines += ["### Sanity check: SSIM to the trained model's map (lower = better)", ""]
        lines.append(
            "| method | "
            + " | ".join(
                f"{a} fc (last layer) | {a} all layers | {a} Spearman(abs) all" for a in archs
            )
            + " | paper ResNet-50 fc / all |"
        )
        lines.append("|---" * (3 * len(archs) + 2) + "|")
        for m, label in ((m, METHODS.get(m, m)) for m in args.methods):
            cells = " | ".join(
                f"{_f(s['ssim'][0])} | {_f(s['ssim'][-1])} | {_f(s['spearman_abs'][-1])}"
                for s in (payloads[a]["results"][m]["sanity"]["similarity"] for a in archs)
            )
            paper = "/".join(f"{v:.2f}" for v in PAPER_SANITY[m]) if m in PAPER_SANITY else "–"
            lines.append(f"| {label} | {cells} | {paper} |")
        lines.append("")
        for a in archs:
            ours = {
                m: payloads[a]["results"][m]["sanity"]["similarity"]["ssim"][-1]
                for m in args.methods
            }
            paper = {m: v[1] for m, v in PAPER_SANITY.items()}
            lines.append(
                f"- SSIM after randomising all layers, {a} (lowest first): "
                + _ordering(ours, paper, True)
            )
        lines.append("")
    lines += [
        (
            "**Caveats.** (1) ROAR retrains on a small random subset for a few epochs, so the retrained "
            "models are far weaker than the targets (see the unperturbed row) and one seed with "
            f"{args.roar_test_limit} test images leaves a standard error of about "
            f"±{100 * math.sqrt(0.25 / args.roar_test_limit):.1f} accuracy points at 50 %: "
            "differences of a few points, and non-monotone curves, are noise. (2) Fashion-MNIST images "
            "are zero-padded with black, while removed pixels get the data-set mean (a mid grey): "
            "removing background pixels adds grey patches, and the removal mask itself traces the "
            "garment's outline, which a retrained model can learn from (a known ROAR leak); both favour "
            "maps that put relevance on the object. (3) Sanity numbers average only "
            f"{first['config']['sanity_samples']} images; SSIM is on signed max-abs maps normalised to "
            "[-1, 1]. (4) The paper ran CIFAR-10 and ImageNet models; only orderings are comparable."
        ),
        "",
    ]
    lines.append(
        "Seconds per image to compute each map (shared CPU, batch "
        f"{args.batch_size}): "
        + "; ".join(
            f"{a}: "
            + ", ".join(
                f"{METHODS.get(m, m)} {payloads[a]['results'][m].get('seconds_per_image', float('nan')):.4f}"
                for m in args.methods
            )
            for a in archs
        )
        + "."
    )
    lines.append("")
    lines.append(
        "Per-architecture tables, curves (`perturbation_curves.png`), ROAR (`roar.png`) and "
        f"sanity plots (`sanity_ssim.png`) are in `{args.work_dir}/<arch>/`; wall time "
        + ", ".join(f"{a} {payloads[a]['wall_time_s']:.0f} s" for a in archs)
        + "."
    )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (nothing runs)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="vgg11,alexnet")
    parser.add_argument(
        "--limit", type=int, default=200, help="test images for LeRF/MoRF/deletion/insertion"
    )
    parser.add_argument("--sanity-limit", type=int, default=20)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--roar-train-limit", type=int, default=1500)
    parser.add_argument("--roar-test-limit", type=int, default=300)
    parser.add_argument("--roar-epochs", type=int, default=2)
    parser.add_argument(
        "--target-epochs", type=int, default=2, help="epochs when a target must be trained"
    )
    parser.add_argument("--batch-size", type=int, default=125)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--roar-archs", default="vgg11,alexnet", help="architectures to run ROAR on"
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="method specs (default: all seven)"
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated metrics to leave out (e.g. roar)"
    )
    parser.add_argument(
        "--runs", default="runs", help="folder holding vgg11-fmnist/ and alexnet-fmnist/"
    )
    parser.add_argument("--work-dir", default="runs/attribution-quality")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/results.md")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.skip = [s for s in args.skip.split(",") if s]
    args.methods = [m for m in args.methods.split(",") if m]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    command = " ".join(
        shlex.quote(a)
        for a in [
            ".venv/bin/python",
            "benchmarks/attribution_quality.py",
            *(argv if argv is not None else sys.argv[1:]),
        ]
    )
    base = [m for m in ("lerf", "morf", "deletion", "insertion", "sanity") if m not in args.skip]
    roar_archs = [] if "roar" in args.skip else [a for a in args.roar_archs.split(",") if a]
    payloads: dict[str, dict[str, Any]] = {}
    body = ""
    for arch in args.archs.split(","):
        # write after every stage: a run cut short still leaves its finished results
        for stage in ("base", "roar") if arch in roar_archs else ("base",):
            if stage == "base":
                payloads[arch] = run_arch(arch, args, base)
            else:
                payloads[arch] = merge(payloads[arch], run_arch(arch, args, ["roar"]))
            body = render(payloads, args, command)
            if not args.no_write:
                write_section(args.results, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
