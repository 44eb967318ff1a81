"""GEN-CNP inference cost vs one target forward and vs DGR's 30-iteration optimisation.

On the VGG-11 Fashion-MNIST target (``runs/vgg11-fmnist``; a same-architecture model with random
weights when the checkpoint is absent: timing does not depend on the weights), one batch of
``--batch`` test images, each timed ``--repeats`` times in one run (medians):

* ``forward``: the plain target forward of the batch (no grad);
* ``gencnp``: ``finder.find`` of the ``gencnp`` finder = clean recorded forward + generator;
* ``dgr``: ``finder.find`` of the ``dgr`` finder (released defaults, T = 30).

The generator is read from ``--generator`` (default: the VGG-11 generator that ``make demo``
writes); when absent or trained for other weights, a freshly initialised generator of the default
configuration is timed (same architecture, so the same cost). Claims checked: gencnp / forward
<= 2 and dgr / gencnp >= 30. Writes the
``## GEN-CNP speed`` section of ``docs/results.md``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed_gencnp.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from neuralpath.errors import CheckpointError
from neuralpath.gating import GatedModel
from neuralpath.methods import FinderOptions, build_finder
from neuralpath.methods.dgr import DGRConfig
from neuralpath.methods.gencnp import (
    GenCNPFinder,
    GeneratorConfig,
    PathwayGenerator,
    load_generator,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    command_line,
    load_batch,
    load_model,
    median_seconds,
    shown,
    write_section,
)

SECTION = "## GEN-CNP speed"


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark (built without running anything)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=ROOT / "runs" / "vgg11-fmnist",
        help="target checkpoint (default runs/vgg11-fmnist, as `make demo` writes it)",
    )
    parser.add_argument(
        "--generator",
        type=Path,
        default=ROOT / "runs" / "gencnp-vgg11-fmnist",
        help="its GEN-CNP generator (default runs/gencnp-vgg11-fmnist, as `make demo` writes it)",
    )
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    torch.set_num_threads(args.threads)
    model, model_source = load_model(args.checkpoint)
    images, data_source = load_batch(args.batch)
    gated = GatedModel.discover(model, images[:1])
    try:
        generator = load_generator(args.generator, gated).generator
        generator_source = f"trained generator {shown(args.generator)}"
    except CheckpointError:  # absent, or trained for other weights: same cost either way
        torch.manual_seed(0)
        generator = PathwayGenerator(gated.sites, GeneratorConfig()).eval()
        generator_source = "freshly initialised generator, default config (no trained one fits)"
    gencnp = GenCNPFinder(gated, generator)
    dgr = build_finder("dgr", gated, FinderOptions(sparsity=0.9))
    gencnp.find(images[:2])  # warm-up
    dgr.find(images[:2])

    def forward() -> None:
        with torch.no_grad():
            gated.model(images)

    t_forward = median_seconds(forward, 4 * args.repeats)
    t_gencnp = median_seconds(lambda: gencnp.find(images), 4 * args.repeats)
    t_dgr = median_seconds(lambda: dgr.find(images), args.repeats)
    result = {
        "model": model_source,
        "generator": generator_source,
        "data": data_source,
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "forward_ms": round(1e3 * t_forward, 2),
        "gencnp_ms": round(1e3 * t_gencnp, 2),
        "dgr_ms": round(1e3 * t_dgr, 1),
        "gencnp_over_forward": round(t_gencnp / t_forward, 2),
        "dgr_over_gencnp": round(t_dgr / t_gencnp, 1),
        "gencnp_forward_equivalents_flops": round(gencnp.forward_equivalents(), 3),
        "generator_parameters": sum(p.numel() for p in generator.parameters()),
    }
    result["claims"] = {
        "gencnp <= 2 forwards": result["gencnp_over_forward"] <= 2.0,
        "dgr >= 30x gencnp": result["dgr_over_gencnp"] >= 30.0,
    }
    print(json.dumps(result, indent=2))
    if not args.no_write:
        cmd = command_line(__file__, argv, env="OMP_NUM_THREADS=1")
        iterations = getattr(getattr(dgr, "config", None), "iterations", DGRConfig().iterations)
        body = (
            f"{SECTION}\n\n"
            f"Command: `{cmd}` (CPU, {args.threads} thread(s); medians of {4 * args.repeats} runs "
            f"for forward and GEN-CNP, {args.repeats} for DGR, all in one run).\n"
            f"Model: {model_source}; {generator_source}; inputs: {args.batch} {data_source}. "
            "Both finders run the model channels-last, their default on CPU "
            "(`GatedModel.fast_layout`); the forward is the model's plain NCHW forward.\n\n"
            "| measurement | value |\n|---|---|\n"
            f"| target forward of the batch | {result['forward_ms']} ms |\n"
            f"| GEN-CNP pathways (clean forward + generator) | {result['gencnp_ms']} ms |\n"
            f"| DGR pathways (T = {iterations}) | {result['dgr_ms']} ms |\n"
            f"| **GEN-CNP / forward** (claim <= 2) | **{result['gencnp_over_forward']}×** |\n"
            f"| **DGR / GEN-CNP** (claim >= 30) | **{result['dgr_over_gencnp']}×** |\n"
            f"| GEN-CNP cost by FLOPs (1 + generator / target) | {result['gencnp_forward_equivalents_flops']} |\n"
            f"| generator parameters | {result['generator_parameters']:,} |\n"
        )
        write_section(args.results, body)
    return 0 if all(result["claims"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
