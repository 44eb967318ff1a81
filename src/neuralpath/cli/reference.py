"""``neuralpath reference``: compute (or check) the reference statistics stored beside a target."""

from __future__ import annotations

import argparse

from neuralpath.cli import (
    add_data_args,
    add_model_args,
    add_reference_size_arg,
    add_run_args,
    open_gated,
    print_json,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``reference`` command."""
    cmd = subparsers.add_parser(
        "reference",
        help="compute the reference statistics of a target (mean ablation, blank baseline)",
        description="Compute the per-unit mean activations and the mean image of N training "
        "images of --data (a seeded subset) and store them in the reference directory (the "
        "checkpoint directory, or for --model a cache keyed by the weights' digest), where "
        "every command with --ablation finds them; an existing file is checked against the "
        "target's weights and reused unless --recompute. Prints the file's path, the number of "
        "images, the weights' digest and the layers as JSON.",
    )
    add_model_args(cmd)
    add_data_args(cmd)
    add_reference_size_arg(cmd)
    cmd.add_argument(
        "--recompute",
        dest="recompute_reference",
        action="store_true",
        help="recompute a stored reference",
    )
    add_run_args(cmd, ablation=False)
    cmd.set_defaults(handler=run_reference)


def run_reference(args: argparse.Namespace) -> int:
    from neuralpath.cli import open_target_reference
    from neuralpath.reference import reference_path

    target, gated = open_gated(args, args.device)
    statistics = open_target_reference(args, target, gated).statistics
    print_json(
        {
            "path": str(reference_path(target.reference_dir(args.reference_dir), gated)),
            "count": statistics.count,
            "target_digest": statistics.target_digest,
            "source": statistics.source,
            "layers": list(statistics.means),
        }
    )
    return 0
