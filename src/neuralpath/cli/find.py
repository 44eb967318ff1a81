"""``neuralpath find``: pathways of a data split by any registered method, with their metrics."""

from __future__ import annotations

import argparse

from neuralpath.cli import (
    add_finder_args,
    open_finder,
    parse_settings,
    print_json,
    target_provenance,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``find`` command."""
    find = subparsers.add_parser(
        "find",
        help="find pathways for a data split and report their faithfulness",
        description="Find a pathway per sample with METHOD, write them to --out (safetensors, "
        "bit-packed) and print one JSON object: method, ablation, n, kept_fraction_mean/std, "
        "agreement, accuracy, mic, mdc, aciou, the leakage controls (blank_agreement, "
        "blank_agreement_plain, swap_follows_input, swap_follows_mask, swap_n, "
        "input_attributable_confidence), seconds_per_image, forward_equivalents.",
    )
    add_finder_args(find, "explain the first N samples only")
    find.add_argument("--out", required=True, help="pathway file to write (.safetensors)")
    find.set_defaults(handler=run_find)


def run_find(args: argparse.Namespace) -> int:
    from neuralpath.runner import run_finder

    _target, dataset, finder, reference = open_finder(args, args.device)
    run = run_finder(
        finder,
        dataset,
        batch_size=args.batch_size,
        limit=args.limit,
        progress=not args.no_progress,
        method=args.method,
        internal_batch_size=args.internal_batch_size,
        baseline=reference.statistics.input_mean,
        seed=args.seed,
    )
    summary = run.summary()
    run.pathway.metadata.update(
        **target_provenance(args),
        data=args.data,
        data_split=dataset.split_info,
        split=args.split,
        sparsity=finder.sparsity,
        seed=args.seed,
        settings=parse_settings(args.settings),
        ablation=summary["ablation"],
        intervention=run.ablation,
        summary=summary,
        labels=run.labels.tolist(),
        predictions=run.outcome.prediction.tolist(),
    )
    run.pathway.save(args.out)
    run.warn_if_leaking()
    run.warn_if_disconnected()
    print_json(summary)
    return 0
