"""``neuralpath class-pathways``: build class-relevant pathways and test their transfer."""

from __future__ import annotations

import argparse
from typing import Any

from neuralpath.cli import (
    add_data_args,
    add_model_args,
    add_run_args,
    load_data,
    open_gated,
    open_intervention,
    print_json,
    target_provenance,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``class-pathways`` command."""
    cmd = subparsers.add_parser(
        "class-pathways",
        help="build class pathways from instance pathways and evaluate their transfer",
        description="Aggregate the pathways of the first J instances of every class of "
        "--build-split (firing frequency >= THETA), save them to DIR/class_pathways.safetensors, "
        "then explain --eval-split samples with the class pathway of their predicted class and "
        "compare with their instance pathways, under --ablation; the transfer adds the leakage "
        "controls of the class pathways and transfer_specificity (share of samples another "
        "class's pathway forces into that class; lower is better). Writes DIR/results.json and "
        "prints it.",
    )
    add_model_args(cmd)
    cmd.add_argument("--method", default="gencnp", help="pathway finder (default gencnp)")
    cmd.add_argument("--generator", help="GEN-CNP generator directory (method gencnp)")
    cmd.add_argument(
        "--sparsity",
        type=float,
        help="fraction of units dropped, for methods with a sparsity knob (default: the "
        "method's own; see `neuralpath find --help`, --set)",
    )
    cmd.add_argument(
        "--granularity",
        choices=("channel", "element"),
        help="pathway units (default: the method's own)",
    )
    add_data_args(cmd)
    cmd.add_argument("--build-split", choices=("train", "test"), default="train")
    cmd.add_argument("--j", type=int, default=50, help="instances per class (50)")
    cmd.add_argument("--theta", type=float, default=0.5, help="firing-frequency threshold (0.5)")
    cmd.add_argument(
        "--instances",
        choices=("correct", "all"),
        default="correct",
        help="aggregate only correctly predicted instances (default) or all",
    )
    cmd.add_argument(
        "--build-limit",
        type=int,
        help="read at most N samples of --build-split (default: until J per class)",
    )
    cmd.add_argument("--eval-split", choices=("train", "test"), default="test")
    cmd.add_argument("--limit", type=int, help="evaluate the first N samples of --eval-split")
    cmd.add_argument("--batch-size", type=int, default=64)
    cmd.add_argument("--out", required=True, help="output directory")
    add_run_args(cmd)
    cmd.set_defaults(handler=run_class_pathways)


def run_class_pathways(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from neuralpath.errors import InputError
    from neuralpath.io import write_json_atomic
    from neuralpath.methods import FinderOptions, build_finder
    from neuralpath.runner import warn_if_disconnected, warn_if_leaking
    from neuralpath.transfer import build_class_pathways, evaluate_transfer

    if not 0.0 < args.theta <= 1.0:
        raise InputError(f"--theta must be in (0, 1], got {args.theta}")
    if args.j < 1:  # before the reference statistics are computed
        raise InputError(f"--j (instances per class) must be >= 1, got {args.j}")
    torch.manual_seed(args.seed)
    target, gated = open_gated(args, args.device)
    build_set = load_data(args, target, args.build_split)
    eval_set = load_data(args, target, args.eval_split)
    gated, reference = open_intervention(args, target, gated)
    options = FinderOptions(args.sparsity, args.granularity, args.generator, args.seed)
    finder = build_finder(args.method, gated, options)
    classes = build_class_pathways(
        finder,
        build_set,
        target.meta.num_classes,
        j=args.j,
        theta=args.theta,
        instances=args.instances,
        batch_size=args.batch_size,
        max_samples=args.build_limit,
        class_names=list(target.meta.class_names),
        progress=not args.no_progress,
    )
    out = Path(args.out)
    classes.save(out / "class_pathways.safetensors")
    result = evaluate_transfer(
        finder,
        classes,
        eval_set,
        limit=args.limit,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        method=args.method,
        baseline=reference.statistics.input_mean,
        seed=args.seed,
    )
    warn_if_leaking(result.instance, args.method)
    warn_if_disconnected(result.instance, args.method)
    payload = {
        **_settings(args),
        "data_split": eval_set.split_info,
        "class_instances": classes.counts.tolist(),
        "class_kept_fraction": classes.pathway.kept_fraction().tolist(),
        "class_pathways": str(out / "class_pathways.safetensors"),
        **result.to_dict(),
    }
    write_json_atomic(out / "results.json", payload)
    print_json(payload)
    return 0


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """What the command was run with, for ``results.json``."""
    keys = ("method", "data", "build_split", "j", "theta", "instances", "eval_split", "ablation")
    return {**target_provenance(args), **{key: getattr(args, key) for key in keys}}
