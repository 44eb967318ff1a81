"""``neuralpath evaluate-attribution``: score saliency methods with LeRF/MoRF, deletion/insertion,
ROAR, sanity checks and localisation; write ``results.json``, ``results.md`` and plots.

The work is done by :func:`neuralpath.evaluation.evaluate_attribution`; the command only loads
the checkpoint and data and writes the report.
"""

from __future__ import annotations

import argparse

from neuralpath.cli import (
    add_device_arg,
    add_seed_arg,
    add_settings_arg,
    parse_method_settings,
    print_json,
)
from neuralpath.evaluation import DEFAULT_METHODS, METRICS


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``evaluate-attribution`` command."""
    parser = subparsers.add_parser(
        "evaluate-attribution",
        help="score saliency methods (LeRF/MoRF, deletion/insertion, ROAR, sanity, localisation)",
        description="Evaluate attribution methods on a target checkpoint; writes results.json, "
        "results.md and PNG plots into --out.",
    )
    parser.add_argument("--checkpoint", required=True, help="target checkpoint directory")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma-separated method specs, e.g. pathway-gradient:cp-intgrad,gradient "
        f"(default: {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument(
        "--metrics",
        default="lerf,morf,deletion,insertion,sanity",
        help=f"comma-separated subset of {','.join(METRICS)} (default without roar, localisation)",
    )
    parser.add_argument("--data", help="data set (default: the checkpoint's)")
    parser.add_argument("--data-root", help="folder holding a user copy of the data set")
    parser.add_argument("--split", default="test", help="split to evaluate on (default test)")
    parser.add_argument("--limit", type=int, default=200, help="images to evaluate (default 200)")
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
        "--target",
        choices=("prediction", "label"),
        default="prediction",
        help="class each map explains (default: the model's prediction)",
    )
    parser.add_argument(
        "--sparsity", type=float, default=0.9, help="pathway sparsity (default 0.9)"
    )
    parser.add_argument(
        "--granularity",
        choices=("element", "channel"),
        default="element",
        help="pathway units (default element); results count all-zero maps as zero_maps",
    )
    parser.add_argument("--generator", help="GEN-CNP generator directory (finder gencnp)")
    add_settings_arg(parser, per_method=True)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--sanity-limit", type=int, default=50, help="images for the sanity check (default 50)"
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.0, help="pointing-game tolerance in pixels"
    )
    parser.add_argument("--roar-percentages", default="10,30,50,70,90")
    parser.add_argument("--roar-epochs", type=int, default=1)
    parser.add_argument("--roar-train-limit", type=int, help="training images for ROAR retraining")
    parser.add_argument(
        "--roar-test-limit", type=int, help="test images for ROAR (default: --limit)"
    )
    parser.add_argument("--roar-work-dir", help="resumable ROAR cache (default OUT/roar)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--no-progress", action="store_true")
    add_seed_arg(parser)
    add_device_arg(parser)
    parser.set_defaults(handler=run_evaluate_attribution)


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

    from neuralpath.checkpoint import load_target
    from neuralpath.data import load_dataset
    from neuralpath.evaluation import (
        EvaluationConfig,
        evaluate_attribution,
        markdown_table,
        plot_results,
    )
    from neuralpath.io import write_bytes_atomic, write_json_atomic
    from neuralpath.metrics.roar import subset

    torch.manual_seed(args.seed)
    target = load_target(args.checkpoint, args.device)
    data = args.data or target.meta.data
    size = target.meta.input_shape[1]
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    roar_limit = args.roar_test_limit or args.limit
    full = load_dataset(
        data,
        args.split,
        args.data_root,
        limit=max(args.limit, roar_limit),
        seed=args.seed,
        image_size=size,
    )
    test_set = subset(full, args.limit, args.seed)
    train_set = None
    if "roar" in metrics:
        train_set = load_dataset(
            data,
            "train",
            args.data_root,
            limit=args.roar_train_limit,
            seed=args.seed,
            image_size=size,
        )
    out = Path(args.out)
    config = EvaluationConfig(
        metrics=metrics,
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
        roar_work_dir=args.roar_work_dir or str(out / "roar"),
        progress=not args.no_progress,
        generator=args.generator,
        finder_settings=parse_method_settings(args.settings),
        extra={"checkpoint": args.checkpoint, "arch": target.meta.arch},
    )
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    started = time.perf_counter()
    payload = evaluate_attribution(
        target.model,
        test_set,
        methods,
        config,
        train_set=train_set,
        arch=target.meta.arch,
        arch_args=target.meta.arch_args,
        roar_test_set=subset(full, roar_limit, args.seed),
    )
    payload["wall_time_s"] = round(time.perf_counter() - started, 2)
    payload["plots"] = [str(p) for p in plot_results(payload, out)]
    write_json_atomic(out / "results.json", payload)
    write_bytes_atomic(out / "results.md", markdown_table(payload).encode())
    print_json({"out": str(out), "wall_time_s": payload["wall_time_s"], "plots": payload["plots"]})
    return 0
