"""``neuralpath reference``: compute (or check) the reference statistics stored beside a target."""

from __future__ import annotations

import argparse

from neuralpath.cli import (
    add_device_arg,
    add_reference_size_arg,
    add_seed_arg,
    print_json,
    reference_size,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``reference`` command."""
    cmd = subparsers.add_parser(
        "reference",
        help="compute the reference statistics of a target (mean ablation, blank baseline)",
        description="Compute the per-unit mean activations and the mean image of N training "
        "images of --data (a seeded subset) and store them in the checkpoint directory, where "
        "every command with --ablation finds them; an existing file is checked against the "
        "target's weights and reused unless --recompute. Prints the file's path, the number of "
        "images, the weights' digest and the layers as JSON.",
    )
    cmd.add_argument("--checkpoint", required=True, help="target checkpoint directory")
    cmd.add_argument("--data", help="data set name or image folder (default: the checkpoint's)")
    cmd.add_argument("--data-root", help="folder holding a user copy of the data set")
    add_reference_size_arg(cmd)
    cmd.add_argument("--recompute", action="store_true", help="recompute a stored reference")
    cmd.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_seed_arg(cmd)
    add_device_arg(cmd)
    cmd.set_defaults(handler=run_reference)


def run_reference(args: argparse.Namespace) -> int:
    from neuralpath.reference import reference_path
    from neuralpath.runner import open_target, open_training_reference

    target, gated = open_target(args.checkpoint, args.device)
    reference = open_training_reference(
        args.checkpoint,
        gated,
        args.data or target.meta.data,
        args.data_root,
        size=reference_size(args),
        seed=args.seed,
        recompute=args.recompute,
        progress=not args.no_progress,
    )
    statistics = reference.statistics
    print_json(
        {
            "path": str(reference_path(args.checkpoint, gated)),
            "count": statistics.count,
            "target_digest": statistics.target_digest,
            "source": statistics.source,
            "layers": list(statistics.means),
        }
    )
    return 0
