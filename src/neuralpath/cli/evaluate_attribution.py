"""``neuralpath evaluate-attribution``: score saliency methods with LeRF/MoRF, deletion/insertion,
ROAR, sanity checks and localisation; write ``results.json``, ``results.md`` and plots.

The work is done by :func:`neuralpath.evaluation.evaluate_attribution`; the command only loads
the checkpoint and data and writes the report.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from neuralpath.cli import (
    add_data_args,
    add_model_args,
    add_run_args,
    add_settings_arg,
    load_data,
    open_gated,
    open_intervention,
    parse_method_settings,
    print_json,
    target_provenance,
)
from neuralpath.evaluation import DEFAULT_METHODS, METRICS

if TYPE_CHECKING:
    from neuralpath.checkpoint import Target
    from neuralpath.data import ImageDataset
    from neuralpath.evaluation import EvaluationConfig


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``evaluate-attribution`` command."""
    parser = subparsers.add_parser(
        "evaluate-attribution",
        help="score saliency methods (LeRF/MoRF, deletion/insertion, ROAR, sanity, localisation)",
        description="Evaluate attribution methods on a target checkpoint; writes results.json, "
        "results.md and PNG plots into --out. With --ablation mean or resample, the pathway "
        "methods' pathway model replaces dropped units accordingly; the sanity check's "
        "randomised models get per-unit means recomputed for each of them over the same "
        "reference images (mean) or donor activations from themselves (resample).",
    )
    add_model_args(parser)
    _add_method_args(parser)
    _add_metric_args(parser)
    _add_roar_args(parser)
    parser.add_argument("--out", required=True, help="output directory")
    add_run_args(parser)
    parser.set_defaults(handler=run_evaluate_attribution)


def _add_method_args(parser: argparse.ArgumentParser) -> None:
    """The methods, their pathway finders' settings, and the images they explain."""
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma-separated method specs, e.g. pathway-gradient:cp-intgrad,gradient "
        f"(default: {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument(
        "--sparsity", type=float, help="pathway sparsity (default: the finder's own)"
    )
    parser.add_argument(
        "--granularity",
        choices=("element", "channel"),
        help="pathway units (default: the finder's own); results count all-zero maps as zero_maps",
    )
    parser.add_argument("--generator", help="GEN-CNP generator directory (finder gencnp)")
    add_settings_arg(parser, per_method=True)
    add_data_args(parser)
    parser.add_argument("--split", default="test", help="split to evaluate on (default test)")
    parser.add_argument("--limit", type=int, default=200, help="images to evaluate (default 200)")
    parser.add_argument(
        "--target",
        choices=("prediction", "label"),
        default="prediction",
        help="class each map explains (default: the model's prediction)",
    )
    parser.add_argument("--batch-size", type=int, default=64)


def _add_metric_args(parser: argparse.ArgumentParser) -> None:
    """The metrics and their settings (ROAR's apart)."""
    parser.add_argument(
        "--metrics",
        default="lerf,morf,deletion,insertion,sanity",
        help=f"comma-separated subset of {','.join(METRICS)} (default without roar, localisation)",
    )
    parser.add_argument(
        "--percentages", default="1,2,3,4,5,6,7,8,9,10", help="LeRF/MoRF q values in %%"
    )
    parser.add_argument(
        "--steps", type=int, default=20, help="deletion/insertion steps (default 20)"
    )
    parser.add_argument(
        "--reduction", default="sum-abs", help="channel reduction of maps (default sum-abs)"
    )
    parser.add_argument(
        "--removal",
        choices=("baseline", "noisy-linear"),
        default="baseline",
        help="how LeRF/MoRF, deletion/insertion and ROAR remove pixels: set them to the data-set "
        "mean, or ROAD's noisy linear imputation from their neighbours (default baseline)",
    )
    parser.add_argument(
        "--sanity-limit", type=int, default=50, help="images for the sanity check (default 50)"
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.0, help="pointing-game tolerance in pixels"
    )


def _add_roar_args(parser: argparse.ArgumentParser) -> None:
    """ROAR's retraining and its resumable cache."""
    parser.add_argument("--roar-percentages", default="10,30,50,70,90")
    parser.add_argument("--roar-epochs", type=int, default=1)
    parser.add_argument("--roar-train-limit", type=int, help="training images for ROAR retraining")
    parser.add_argument(
        "--roar-test-limit", type=int, help="test images for ROAR (default: --limit)"
    )
    parser.add_argument("--roar-work-dir", help="resumable ROAR cache (default OUT/roar)")


def _numbers(text: str, name: str) -> list[float]:
    from neuralpath.errors import InputError

    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise InputError(f"{name} must be comma-separated numbers, got {text!r}") from exc


def run_evaluate_attribution(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    import torch

    from neuralpath.errors import InputError
    from neuralpath.evaluation import evaluate_attribution, markdown_table, plot_results
    from neuralpath.interventions import check_ablation
    from neuralpath.io import write_bytes_atomic, write_json_atomic

    check_ablation(args.ablation)
    if "roar" in _metrics(args) and args.checkpoint is None:
        raise InputError(
            "ROAR retrains the architecture from scratch, which needs a neuralpath checkpoint "
            "(--checkpoint); drop roar from --metrics for --model"
        )
    torch.manual_seed(args.seed)
    target, gated = open_gated(args, args.device)
    config = _config(args, target.meta.arch)
    test_set, roar_test_set, train_set = _datasets(args, target)
    reference_images = None
    if args.ablation != "zero":  # zero ablation needs no reference statistics
        gated, reference = open_intervention(args, target, gated)
        reference_images = reference.images
    started = time.perf_counter()
    payload = evaluate_attribution(
        gated,
        test_set,
        [m.strip() for m in args.methods.split(",") if m.strip()],
        config,
        reference_images=reference_images,
        train_set=train_set,
        arch=target.meta.arch,
        arch_args=target.meta.arch_args,
        roar_test_set=roar_test_set,
    )
    payload["wall_time_s"] = round(time.perf_counter() - started, 2)
    payload["data_split"] = test_set.split_info
    out = Path(args.out)
    payload["plots"] = [str(p) for p in plot_results(payload, out)]
    write_json_atomic(out / "results.json", payload)
    write_bytes_atomic(out / "results.md", markdown_table(payload).encode())
    print_json({"out": str(out), "wall_time_s": payload["wall_time_s"], "plots": payload["plots"]})
    return 0


def _metrics(args: argparse.Namespace) -> list[str]:
    return [m.strip() for m in args.metrics.split(",") if m.strip()]


def _config(args: argparse.Namespace, arch: str) -> EvaluationConfig:
    """The :class:`EvaluationConfig` the options describe."""
    from pathlib import Path

    from neuralpath.evaluation import EvaluationConfig

    return EvaluationConfig(
        metrics=_metrics(args),
        percentages=_numbers(args.percentages, "--percentages"),
        steps=args.steps,
        reduction=args.reduction,
        removal=args.removal,
        target=args.target,
        batch_size=args.batch_size,
        sparsity=args.sparsity,
        granularity=args.granularity,
        seed=args.seed,
        sanity_limit=args.sanity_limit,
        tolerance=args.tolerance,
        roar_percentages=_numbers(args.roar_percentages, "--roar-percentages"),
        roar_epochs=args.roar_epochs,
        roar_train_limit=args.roar_train_limit,
        roar_work_dir=args.roar_work_dir or str(Path(args.out) / "roar"),
        progress=not args.no_progress,
        generator=args.generator,
        finder_settings=parse_method_settings(args.settings),
        extra={**target_provenance(args), "arch": arch},
    )


def _datasets(
    args: argparse.Namespace, target: Target
) -> tuple[ImageDataset, ImageDataset, ImageDataset | None]:
    """``(test set, ROAR's test set, ROAR's training set or None)``: seeded subsets."""
    from neuralpath.data import subset

    roar_limit = args.roar_test_limit or args.limit
    full = load_data(args, target, args.split, limit=max(args.limit, roar_limit), seed=args.seed)
    train_set = None
    if "roar" in _metrics(args):
        train_set = load_data(args, target, "train", limit=args.roar_train_limit, seed=args.seed)
    return subset(full, args.limit, args.seed), subset(full, roar_limit, args.seed), train_set
