"""Pathway Gradient driven by each pathway finder: LeRF/MoRF, deletion/insertion, sanity checks.

The Pathway Gradient paper drives PG with NeuronMCT and NeuronIntGrad (``attribution_quality.py``
measures those, element units). Here every finder drives it, on channel pathways (the unit
DGR and GEN-CNP work in): ``cp-mct``, ``cp-intgrad``, ``dgr``, ``dgr-r``, ``gencnp`` (the
generator's own instance-specific masks), ``random`` (a control) and ``active`` (every unit
with a positive activation), with plain gradients as the no-pathway reference. Finders with a
sparsity knob run at GEN-CNP's mean dropped fraction on the same images (matched sparsity, as in
the demo study).

Needs the demo's targets and generators (``make demo`` writes them to ``runs/``):

    .venv/bin/python benchmarks/pathway_gradient_finders.py

Writes ``--work-dir/<arch>/{results.json,results.md,*.png}`` and the
``## Pathway Gradient by finder`` section of ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Pathway Gradient by finder"
FINDERS = ("cp-mct", "cp-intgrad", "dgr", "dgr-r", "gencnp", "random", "active")
ARCHS = ("vgg11", "alexnet")
PER_SAMPLE = ("gencnp", "active")  # finders without a sparsity knob
DEFAULT_SPARSITY = 0.9  # the CLI's --sparsity default


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (nothing runs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs", help="the demo's output directory (runs)")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--finders", nargs="+", default=list(FINDERS))
    parser.add_argument("--limit", type=int, default=100, help="test images (100)")
    parser.add_argument("--sanity-limit", type=int, default=10, help="images for sanity (10)")
    parser.add_argument("--steps", type=int, default=10, help="deletion/insertion steps (10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--work-dir", default="runs/pathway-gradient-finders")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    parser.add_argument("--no-write", action="store_true", help="print, do not touch --doc")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def matched_sparsity(target: Any, generator: Path, images: torch.Tensor) -> float:
    """1 − GEN-CNP's mean kept fraction of channels on ``images``."""
    from neuralpath.gating import GatedModel
    from neuralpath.methods import FinderOptions, build_finder

    gated = GatedModel.discover(target.model, target.example_input())
    finder = build_finder("gencnp", gated, FinderOptions(generator=str(generator)))
    return float(1.0 - finder.find(images).kept_fraction().mean())


def zero_maps_at(
    model: torch.nn.Module, images: torch.Tensor, finders: list[str], sparsity: float, seed: int
) -> dict[str, int]:
    """Per finder with a sparsity knob: all-zero channel-pathway PG maps at ``sparsity``, by
    column label; finders with the connecting repair also without it (``<name>, connect=false``)."""
    import dataclasses
    import warnings

    from neuralpath.attribution import make_explainer, pathway_options, zero_maps
    from neuralpath.errors import ZeroMapsWarning
    from neuralpath.gating import GatedModel
    from neuralpath.methods import build_finder

    gated = GatedModel.discover(model, images[:1])
    options = pathway_options(sparsity=sparsity, granularity="channel", seed=seed)
    counts = {}
    for name in finders:
        finder = build_finder(name, gated, options)
        variants = {name: finder}
        config = getattr(finder, "config", None)
        if config is not None and "connect" in {f.name for f in dataclasses.fields(config)}:
            off = dataclasses.replace(options, settings={"connect": False})
            variants = {f"{name}, connect=false": build_finder(name, gated, off), **variants}
        for label, variant in variants.items():
            explain = make_explainer("pathway-gradient", gated, variant)
            with warnings.catch_warnings():  # counted here instead
                warnings.simplefilter("ignore", ZeroMapsWarning)
                counts[label] = int(zero_maps(explain(images, None)).sum())  # type: ignore[arg-type]
    return counts


def run_arch(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    from neuralpath.checkpoint import load_target
    from neuralpath.data import load_dataset
    from neuralpath.evaluation import (
        EvaluationConfig,
        evaluate_attribution,
        markdown_table,
        plot_results,
    )
    from neuralpath.io import write_bytes_atomic, write_json_atomic

    runs = Path(args.runs)
    checkpoint, generator = runs / f"{arch}-fmnist", runs / f"gencnp-{arch}-fmnist"
    for needed in (checkpoint / "meta.json", generator / "meta.json"):
        if not needed.exists():
            sys.exit(f"{needed} is missing: run `make demo` (it writes {runs}/) first")
    target = load_target(checkpoint, "cpu")
    test_set = load_dataset(
        "fashion-mnist",
        "test",
        limit=args.limit,
        seed=args.seed,
        image_size=target.meta.input_shape[1],
    )
    sparsity = matched_sparsity(target, generator, test_set.images)
    methods = [f"pathway-gradient:{finder}" for finder in args.finders] + ["gradient"]
    config = EvaluationConfig(
        metrics=("lerf", "morf", "deletion", "insertion", "sanity"),
        steps=args.steps,
        batch_size=args.limit,
        sparsity=sparsity,
        granularity="channel",
        seed=args.seed,
        sanity_limit=args.sanity_limit,
        progress=False,
        generator=str(generator),
    )
    started = time.perf_counter()
    payload = evaluate_attribution(target.model, test_set, methods, config)
    payload["wall_seconds"] = time.perf_counter() - started
    payload["test_accuracy"] = target.meta.test_accuracy
    knobs = [f for f in args.finders if f not in PER_SAMPLE]
    payload["zero_maps_at_default"] = zero_maps_at(
        target.model, test_set.images, knobs, DEFAULT_SPARSITY, args.seed
    )
    out = Path(args.work_dir) / arch
    out.mkdir(parents=True, exist_ok=True)
    payload["plots"] = [str(p) for p in plot_results(payload, out)]
    write_json_atomic(out / "results.json", payload)
    write_bytes_atomic(out / "results.md", markdown_table(payload).encode())
    return payload


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def section(payloads: dict[str, dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    lines = [
        SECTION,
        "",
        f"Command: `{command}` (CPU, {args.threads} thread(s); shared machine).",
        "",
        f"Fashion-MNIST test split, {args.limit} seeded images (seed {args.seed}); the demo's "
        f"targets and GEN-CNP generators in `{args.runs}/`. Pathway Gradient on **channel** "
        "pathways; finders with a sparsity knob (cp-mct, cp-intgrad, dgr, dgr-r, random) drop "
        "GEN-CNP's mean dropped fraction on these images (matched sparsity, per target below); "
        "gencnp and active choose per sample (their column shows `per sample`). Maps explain "
        "the prediction; removed pixels are set to 0 in normalised space; sanity: cascading "
        f"randomisation of every conv/linear layer on {args.sanity_limit} images (GEN-CNP's "
        "generator is verified on the trained target, then applied to the randomised copies). "
        "LeRF ↓ = |p − p′|/p after removing the least relevant pixels; MoRF ↑ the same for the "
        "most relevant; deletion AUC ↓ / insertion AUC ↑ of p over "
        f"{args.steps} steps; SSIM ↓ to the trained model's map after randomising the last "
        "layer / all layers; zero maps: how many images get an all-zero map from the trained "
        "target, and how many sanity images from the fully randomised model (a pathway that "
        "empties a layer passes no gradient; SSIM between a map and an all-zero map is not 0, "
        "since both are mostly flat background).",
    ]
    for arch, payload in payloads.items():
        results = payload["results"]
        accuracy = payload["test_accuracy"]
        lines += [
            "",
            f"### {arch} (test accuracy "
            f"{'unknown' if accuracy is None else f'{100 * accuracy:.2f} %'}; matched sparsity "
            f"{100 * payload['config']['sparsity']:.1f} %)",
            "",
            "| method | sparsity | LeRF 1% ↓ | LeRF 5% ↓ | LeRF 10% ↓ | MoRF 10% ↑ | del. AUC ↓ "
            "| ins. AUC ↑ | SSIM last ↓ | SSIM all ↓ | zero maps: trained, all random | s / image |",
            "|---" * 12 + "|",
        ]
        for method, row in results.items():
            finder_sparsity = row.get("finder_sparsity", "n/a")
            shown = (
                "n/a"
                if finder_sparsity == "n/a"
                else ("per sample" if finder_sparsity is None else f"{finder_sparsity:.3f}")
            )
            lerf = dict(zip(row["lerf"]["fractions"], row["lerf"]["curve"], strict=True))
            morf = dict(zip(row["morf"]["fractions"], row["morf"]["curve"], strict=True))
            ssim = row["sanity"]["similarity"]["ssim"]
            cells = [
                shown,
                *(_fmt(lerf.get(q)) for q in (0.01, 0.05, 0.1)),
                _fmt(morf.get(0.1)),
                _fmt(row["deletion"]["area"]),
                _fmt(row["insertion"]["area"]),
                _fmt(ssim[0]),
                _fmt(ssim[-1]),
                f"{row['zero_maps']} / {args.limit}, {row['sanity']['zero_maps'][-1]} / "
                f"{args.sanity_limit}",
                _fmt(row["seconds_per_image"], 4),
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(
            f"Wall time {payload['wall_seconds']:.0f} s; curves and sanity plots in "
            f"`{args.work_dir}/{arch}/`."
        )
    knobs = list(next(iter(payloads.values()))["zero_maps_at_default"])
    lines += [
        "",
        f"### All-zero maps at the CLI's default sparsity {DEFAULT_SPARSITY} with channel units",
        "",
        "One global threshold over all channels (the paper's rule) at 90 % can empty whole "
        "layers or leave dead ends, and such a pathway passes no gradient; the connecting repair "
        "(on by default for cp-mct, cp-intgrad, dgr, dgr-r; `connect=false` columns without it) "
        "widens exactly those pathways. All-zero maps out of "
        f"{args.limit}, on the same images:",
        "",
        "| target | " + " | ".join(knobs) + " |",
        "|---" * (len(knobs) + 1) + "|",
        *(
            f"| {arch} | " + " | ".join(str(p["zero_maps_at_default"][f]) for f in knobs) + " |"
            for arch, p in payloads.items()
        ),
        "",
        *reading(payloads),
    ]
    return "\n".join(lines) + "\n"


def reading(payloads: dict[str, dict[str, Any]]) -> list[str]:
    """Generated, so it always matches the tables: where each finder ranks on LeRF and sanity."""
    out = ["**Reading** (generated from the tables above):"]
    active_matches = True
    for arch, payload in payloads.items():
        results = payload["results"]
        pathway = {m: r for m, r in results.items() if m.startswith("pathway-gradient:")}
        lerf = sorted(pathway, key=lambda m: _at(pathway[m]["lerf"], 0.1))
        ssim = sorted(pathway, key=lambda m: pathway[m]["sanity"]["similarity"]["ssim"][-1])
        gradient = results["gradient"]
        beat = [m for m in lerf if _at(pathway[m]["lerf"], 0.1) < _at(gradient["lerf"], 0.1)]
        same = [
            _short(m)
            for m in pathway
            if all(
                pathway[m][k]["curve"] == gradient[k]["curve"]
                for k in ("lerf", "morf", "deletion", "insertion")
            )
        ]
        zero = [_short(m) for m in pathway if pathway[m]["sanity"]["zero_maps"][-1] > 0]
        zero_trained = [
            f"{_short(m)} ({pathway[m]['zero_maps']})" for m in pathway if pathway[m]["zero_maps"]
        ]
        active_matches = active_matches and "active" in same
        out.append(
            f"- {arch}: LeRF at 10 % (best first): {', '.join(_short(m) for m in lerf)}; "
            f"{len(beat)} of {len(lerf)} finders beat plain gradients "
            f"({_at(gradient['lerf'], 0.1):.3f}). SSIM after randomising all layers (lowest "
            f"first): {', '.join(_short(m) for m in ssim)}. Curves identical to plain "
            f"gradients: {', '.join(same) or 'none'}. All-zero maps from the trained target: "
            f"{', '.join(zero_trained) or 'none'} (their pathways empty a layer; such maps rank "
            f"pixels by ties only, which weighs on LeRF/MoRF); from the fully randomised model: "
            f"{', '.join(zero) or 'none'}."
        )
    if active_matches:
        out.append(
            "- `active` keeps exactly the channels with a positive activation; in a ReLU network the "
            "others pass neither signal nor gradient, so its Pathway Gradient must equal the plain "
            "gradient: the identical curves above are that check, end to end."
        )
    return out


def _at(metric: dict[str, Any], fraction: float) -> float:
    for q, value in zip(metric["fractions"], metric["curve"], strict=True):
        if abs(q - fraction) < 1e-9:
            return float(value)
    raise KeyError(fraction)


def _short(method: str) -> str:
    return method.split(":", 1)[1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = shlex.join([".venv/bin/python", "benchmarks/pathway_gradient_finders.py", *argv])
    payloads = {arch: run_arch(arch, args) for arch in args.archs}
    text = section(payloads, args, command)
    print(text)
    if not args.no_write:
        write_section(Path(args.doc), text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
