"""evaluate-attribution with GEN-CNP and DGR maps: rebuilt per call (before issue 14) vs built once.

On the VGG-11 Fashion-MNIST target (``runs/vgg11-fmnist``; a same-architecture model with random
weights when the checkpoint is absent), the command's defaults: ``--limit`` test images explained
in batches of ``--batch-size`` by Pathway Gradient on channel pathways, LeRF/MoRF at 1..10 %,
deletion/insertion in 20 steps, and the cascading-randomisation sanity check on
``--sanity-limit`` images. Two paths compute the same numbers, timed phase by phase:

* **old**, the path before issue 14, rebuilt here from the public pieces: one finder built up
  front only to validate it (GEN-CNP: the generator loaded and the target's weights hashed), then
  for every batch and every sanity step a fresh ``GatedModel.discover`` + ``build_finder``
  (GEN-CNP: the generator reloaded from disk, ``verify_weights=False``) + ``PathwayGradient``;
  the metrics' forwards on the plain model (NCHW);
* **new**, what ``evaluate_attribution`` runs: ``build_methods`` once (the finder and its
  generator built and checked once), maps by the built explainer, the metrics' forwards
  channels-last (``FastLayout``), the sanity check's randomised copies explained through the
  method's ``ExplainerFactory`` (the copy's gated model from the same sites, the finder
  rebound, nothing reloaded).

Each phase is timed ``--repeats`` times, the paths alternating; medians. The whole
``evaluate_attribution`` call is timed too, as a check of the new path's total, and the two
paths' curves are compared (they differ by float rounding only). The generator is
``--generator`` when it fits the target, else a freshly initialised one saved to a temporary
directory (the same cost). Writes the ``## evaluate-attribution speed`` section of
``docs/results.md``.

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/evaluate_attribution_speed.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from neuralpath.attribution import PathwayGradient, pathway_options
from neuralpath.errors import CheckpointError, ZeroMapsWarning
from neuralpath.evaluation import (
    EvaluationConfig,
    build_methods,
    curve_metrics,
    evaluate_attribution,
)
from neuralpath.gating import GatedModel
from neuralpath.methods import build_finder
from neuralpath.methods.gencnp import GeneratorConfig, PathwayGenerator, load_generator
from neuralpath.methods.gencnp.checkpoint import save_checkpoint, target_identity
from neuralpath.metrics.perturbation import FastLayout, explain_in_batches, resolve_targets
from neuralpath.metrics.sanity import CascadingRandomisation

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _common import command_line, load_model, shown, write_section  # noqa: E402

SECTION = "## evaluate-attribution speed"
PHASES = ("build", "maps", "curves", "sanity")
Timed = dict[str, list[float]]


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark (built without running anything)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "vgg11-fmnist")
    parser.add_argument(
        "--generator", type=Path, default=ROOT / "runs" / "gencnp-vgg11-fmnist",
        help="its GEN-CNP generator (default: the one `make demo` writes)",
    )  # fmt: skip
    parser.add_argument("--finders", nargs="+", default=["gencnp", "dgr"])
    parser.add_argument("--limit", type=int, default=200, help="test images (200, as the CLI)")
    parser.add_argument("--batch-size", type=int, default=64, help="(64, as the CLI)")
    parser.add_argument("--sanity-limit", type=int, default=50, help="(50, as the CLI)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser


def test_images(limit: int) -> tuple[Tensor, str]:
    """``limit`` seeded Fashion-MNIST test images at 32×32 (random inputs when absent)."""
    from neuralpath.data import load_dataset
    from neuralpath.errors import DataError

    try:
        data = load_dataset("fashion-mnist", "test", limit=limit, seed=0, image_size=32)
        return data.images, "Fashion-MNIST test images"
    except DataError:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(limit, 1, 32, 32, generator=generator), "random inputs"


def generator_dir(path: Path, gated: GatedModel, scratch: Path) -> tuple[str, str]:
    """``(directory, description)``: ``path`` when it fits the target, else a freshly initialised
    generator of the default configuration saved into ``scratch``."""
    try:
        load_generator(path, gated)
        return str(path), f"trained generator {shown(path)}"
    except CheckpointError:
        torch.manual_seed(0)
        config = GeneratorConfig()
        generator = PathwayGenerator(gated.sites, config)
        meta = {"generator_config": config.to_dict(), "target": target_identity(gated)}
        save_checkpoint(scratch, generator, meta)
        return str(scratch), "freshly initialised generator, default config (no trained one fits)"


def timed(times: Timed, phase: str, work: Callable[[], Any]) -> Any:
    """Run ``work``, append its wall time to ``times[phase]``, return its result."""
    started = time.perf_counter()
    result = work()
    times.setdefault(phase, []).append(time.perf_counter() - started)
    return result


def old_path(
    model: nn.Module, images: Tensor, finder: str, config: EvaluationConfig, times: Timed
) -> dict[str, Any]:
    """The pre-issue-14 evaluation of ``pathway-gradient:FINDER``: rebuilt on every call."""
    options = dict(sparsity=config.sparsity, granularity="channel", generator=config.generator)
    every_call = pathway_options(**options, verify_weights=False)  # as the old explainer did

    def explain(on: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        gated = GatedModel.discover(on, inputs[:1].detach())
        return PathwayGradient(gated, build_finder(finder, gated, every_call)).attribute(
            inputs, targets
        )

    def validate() -> None:  # the second finder, built up front only to check it
        build_finder(finder, GatedModel.discover(model, images[:1]), pathway_options(**options))

    timed(times, "build", validate)
    targets = resolve_targets(model, images, None)
    maps = timed(times, "maps", lambda: explain_in_batches(
        lambda x, t: explain(model, x, t), images, targets, config.batch_size))  # fmt: skip
    curves = timed(times, "curves", lambda: {
        name: metric(model, images, targets, maps).summary()
        for name, metric in curve_metrics(config).items()})  # fmt: skip
    count = config.sanity_limit
    timed(times, "sanity", lambda: CascadingRandomisation(seed=config.seed)(
        model, images[:count], targets[:count],
        lambda on: lambda x, t: explain(on, x, t)))  # fmt: skip
    return curves


def new_path(
    model: nn.Module, images: Tensor, spec: str, config: EvaluationConfig, times: Timed
) -> dict[str, Any]:
    """What ``evaluate_attribution`` runs for ``spec``, phase by phase."""
    gated = GatedModel.discover(model, images[:1])
    method = timed(times, "build", lambda: build_methods(gated, [spec], config)[spec])
    fast = FastLayout(gated)
    targets = resolve_targets(fast, images, None)
    maps = timed(times, "maps", lambda: explain_in_batches(
        method.explain, images, targets, config.batch_size))  # fmt: skip
    curves = timed(times, "curves", lambda: {
        name: metric(fast, images, targets, maps).summary()
        for name, metric in curve_metrics(config).items()})  # fmt: skip
    count = config.sanity_limit
    sanity = CascadingRandomisation(seed=config.seed, batch_size=config.batch_size)
    timed(times, "sanity", lambda: sanity(
        model, images[:count], targets[:count], method.for_model))  # fmt: skip
    return curves


def compare(
    model: nn.Module, images: Tensor, finder: str, config: EvaluationConfig, repeats: int
) -> dict[str, Any]:
    """Medians per phase of both paths and of the whole ``evaluate_attribution`` call."""
    from neuralpath.data import ImageDataset

    spec = f"pathway-gradient:{finder}"
    data = ImageDataset(
        images, torch.zeros(len(images), dtype=torch.long), "fashion-mnist", "test",
        [str(k) for k in range(10)], (0.0,), (1.0,),
    )  # fmt: skip
    old: Timed = {}
    new: Timed = {}
    whole: Timed = {}
    for _ in range(repeats):
        old_curves = old_path(model, images, finder, config, old)
        new_curves = new_path(model, images, spec, config, new)
        timed(whole, "evaluate", lambda: evaluate_attribution(model, data, [spec], config))
    gap = max(
        abs(a - b)
        for name in old_curves
        for a, b in zip(old_curves[name]["curve"], new_curves[name]["curve"], strict=True)
    )
    row = {p: (statistics.median(old[p]), statistics.median(new[p])) for p in PHASES}
    return {
        "phases": row,
        "old_total": sum(o for o, _ in row.values()),
        "new_total": sum(n for _, n in row.values()),
        "evaluate_attribution": statistics.median(whole["evaluate"]),
        "largest_curve_difference": gap,
    }


def section(results: dict[str, dict[str, Any]], setup: dict[str, Any], command: str) -> str:
    """The Markdown section of ``docs/results.md``."""
    lines = [
        SECTION,
        "",
        f"Command: `{command}` (CPU, {setup['threads']} thread(s), shared machine; medians of "
        f"{setup['repeats']} runs per phase, the two paths alternating).",
        "",
        f"Model: {setup['model']}; GEN-CNP: {setup['generator']}; {setup['limit']} "
        f"{setup['data']} in batches of {setup['batch_size']}, sanity on "
        f"{setup['sanity_limit']}: the defaults of `neuralpath evaluate-attribution`, one method "
        f"`pathway-gradient:FINDER` on channel pathways (sparsity {setup['sparsity']}; `gencnp` "
        "keeps its own per-sample masks), metrics lerf, morf, deletion, insertion, sanity. "
        "**old**: the path before issue 14, rebuilt from the public pieces (a finder built up "
        "front only to validate it; per batch and per sanity step a fresh gate discovery, "
        "finder and, for GEN-CNP, the generator reloaded from disk; metric forwards NCHW). "
        "**new**: `evaluate_attribution`'s (everything built once, the sanity check's "
        "randomised copies explained through a rebound finder, metric forwards channels-last). "
        "build: up-front finder construction and checks; maps: the test images' maps; curves: "
        "LeRF/MoRF/deletion/insertion; sanity: the cascading randomisation, maps included.",
        "",
        "| finder | phase | old (s) | new (s) | old / new |",
        "|---|---|---|---|---|",
    ]
    for finder, result in results.items():
        for phase, (old, new) in result["phases"].items():
            ratio = f"{old / new:.2f}×" if min(old, new) >= 0.001 else "– (under 1 ms)"
            lines.append(f"| {finder} | {phase} | {old:.3f} | {new:.3f} | {ratio} |")
        old, new = result["old_total"], result["new_total"]
        lines.append(
            f"| {finder} | **total** | **{old:.2f}** | **{new:.2f}** | **{old / new:.2f}×** |"
        )
    lines += ["", "Checks (generated from the runs above):", ""]
    for finder, result in results.items():
        lines.append(
            f"- {finder}: the whole `evaluate_attribution` call took "
            f"{result['evaluate_attribution']:.2f} s (the new phases sum to "
            f"{result['new_total']:.2f} s); the two paths' curves differ by at most "
            f"{result['largest_curve_difference']:.1e} (float rounding of the channels-last "
            "forwards)."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", ZeroMapsWarning)  # all-zero maps do not change the timing
    model, model_source = load_model(args.checkpoint)
    images, data_source = test_images(args.limit)
    with tempfile.TemporaryDirectory() as scratch:
        generator, generator_source = generator_dir(
            args.generator, GatedModel.discover(model, images[:1]), Path(scratch)
        )
        config = EvaluationConfig(
            batch_size=args.batch_size, sparsity=args.sparsity, granularity="channel",
            sanity_limit=args.sanity_limit, progress=False, generator=generator,
        )  # fmt: skip
        results = {f: compare(model, images, f, config, args.repeats) for f in args.finders}
    setup = {
        "model": model_source, "generator": generator_source, "data": data_source,
        "limit": args.limit, "batch_size": args.batch_size, "sanity_limit": args.sanity_limit,
        "sparsity": args.sparsity, "repeats": args.repeats, "threads": args.threads,
    }  # fmt: skip
    print(json.dumps({"setup": setup, "results": results}, indent=2))
    if not args.no_write:
        command = command_line(__file__, argv, env="OMP_NUM_THREADS=1 nice")
        write_section(args.results, section(results, setup, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
