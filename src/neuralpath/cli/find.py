"""``neuralpath find``: pathways of a data split by any registered method, with their metrics."""

from __future__ import annotations

import argparse

from neuralpath.cli import add_device_arg, add_seed_arg, print_json


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``find`` command."""
    find = subparsers.add_parser(
        "find",
        help="find pathways for a data split and report their faithfulness",
        description="Find a pathway per sample with METHOD, write them to --out (safetensors, "
        "bit-packed) and print one JSON object: method, n, kept_fraction_mean/std, agreement, "
        "accuracy, mic, mdc, aciou, seconds_per_image.",
    )
    find.add_argument("--checkpoint", required=True, help="target checkpoint directory")
    find.add_argument("--method", required=True, help="cp-mct, cp-intgrad, greedy, random, "
                      "active, dgr, dgr-r, gencnp")
    find.add_argument("--sparsity", type=float, default=0.9,
                      help="fraction of units dropped, for methods with a sparsity knob (0.9)")
    find.add_argument("--granularity", choices=("channel", "element"), default="channel")
    find.add_argument("--generator", help="GEN-CNP generator directory (method gencnp)")
    find.add_argument("--data", default="fashion-mnist", help="data set name or image folder")
    find.add_argument("--data-root", help="folder holding a user copy of the data set")
    find.add_argument("--split", choices=("train", "test"), default="test")
    find.add_argument("--limit", type=int, help="explain the first N samples only")
    find.add_argument("--batch-size", type=int, default=64)
    find.add_argument("--out", required=True, help="pathway file to write (.safetensors)")
    find.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    find.add_argument("--internal-batch-size", type=int,
                        help="find pathways for at most this many images at a time (bounds memory)")
    add_seed_arg(find)
    add_device_arg(find)
    find.set_defaults(handler=run_find)


def run_find(args: argparse.Namespace) -> int:
    import torch

    from neuralpath.data import load_dataset
    from neuralpath.methods import FinderOptions, build_finder
    from neuralpath.pathway import Pathway, check_sparsity
    from neuralpath.runner import open_target, run_finder

    check_sparsity(args.sparsity)
    torch.manual_seed(args.seed)
    target, gated = open_target(args.checkpoint, args.device)
    dataset = load_dataset(args.data, args.split, args.data_root,
                           image_size=target.meta.input_shape[-1])
    options = FinderOptions(args.sparsity, args.granularity, args.generator, args.seed)
    finder = build_finder(args.method, gated, options)
    run = run_finder(finder, dataset, batch_size=args.batch_size, limit=args.limit,
                     progress=not args.no_progress, method=args.method,
                     internal_batch_size=args.internal_batch_size)
    summary = run.summary()
    provenance = {"checkpoint": str(args.checkpoint), "data": args.data, "split": args.split,
                  "sparsity": args.sparsity, "seed": args.seed, "summary": summary,
                  "labels": run.labels.tolist(), "predictions": run.outcome.prediction.tolist()}
    Pathway(dict(run.pathway.items()), run.pathway.granularity, provenance).save(args.out)
    print_json(summary)
    return 0
