"""``neuralpath compare``: every method on the same samples; results.json, results.md, report.html."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from neuralpath.cli import (
    add_ablation_args,
    add_run_args,
    add_settings_arg,
    parse_method_settings,
    print_json,
    reference_size,
)
from neuralpath.cli.model_args import (
    add_data_args,
    add_model_args,
    data_name,
    folder_split,
    layer_names,
    open_model,
    unit_types,
)

if TYPE_CHECKING:
    from neuralpath.study import StudyConfig


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``compare`` command."""
    compare = subparsers.add_parser(
        "compare",
        help="run several pathway methods on the same samples and write a report",
        description="Run every method under every --ablation on the same samples and write "
        "RDIR/results.json, RDIR/results.md, RDIR/report.html (self-contained) and "
        "RDIR/pathways/<method>.safetensors (first ablation; the others in "
        "RDIR/pathways/<ablation>/). results.json keeps 'methods' and 'transfer' for the first "
        "ablation and adds 'ablations' and 'interventions' (ablation -> methods, transfer).",
    )
    add_model_args(compare)
    _add_method_args(compare)
    add_data_args(compare)
    compare.add_argument("--split", choices=("train", "test"), default="test")
    compare.add_argument("--limit", type=int, default=500, help="evaluation samples (default 500)")
    compare.add_argument("--batch-size", type=int, default=64)
    _add_report_args(compare)
    add_settings_arg(compare, per_method=True)
    add_ablation_args(compare, several=True)
    compare.add_argument("--out", required=True, help="results directory to write")
    add_run_args(compare, ablation=False)
    compare.set_defaults(handler=run_compare)


def _add_method_args(compare: argparse.ArgumentParser) -> None:
    """The methods, their generators, sparsity and granularity."""
    compare.add_argument(
        "--generator",
        action="append",
        default=[],
        metavar="[ABLATION=]GDIR",
        help="GEN-CNP generator directory (needed for gencnp); repeatable as ABLATION=GDIR to "
        "use, under that ablation, a generator trained under it (fit-gencnp --ablation)",
    )
    compare.add_argument(
        "--methods", help="comma-separated methods (default: all; gencnp only with --generator)"
    )
    compare.add_argument(
        "--sparsity",
        type=float,
        help="fraction of units dropped by methods with "
        "a sparsity knob (default: GEN-CNP's mean when it runs, else each method's own)",
    )
    compare.add_argument(
        "--granularity",
        choices=("channel", "element"),
        help="pathway units of every method (default: the methods' own default, listed under "
        "--set, when they share one, else channel)",
    )


def _add_report_args(compare: argparse.ArgumentParser) -> None:
    """Class pathways (the transfer experiment) and the report's panels and frontier."""
    compare.add_argument(
        "--j",
        type=int,
        default=20,
        dest="per_class",
        help="training samples per class for class pathways (default 20)",
    )
    compare.add_argument(
        "--instances",
        choices=("correct", "all"),
        default="correct",
        help="class pathways from correctly predicted samples only (default) or "
        "from all, grouped by prediction",
    )
    compare.add_argument("--theta", type=float, default=0.5, help="class pathway threshold (0.5)")
    compare.add_argument("--panels", type=int, default=4, help="samples shown in the report (4)")
    compare.add_argument(
        "--frontier",
        help="JSON list of GEN-CNP alpha-sweep points to plot "
        "(default: GDIR/frontier.json when present)",
    )


def run_compare(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from neuralpath.io import read_json
    from neuralpath.report import build_report
    from neuralpath.study import run_study, write_results

    config = _config(args)  # checked before the target is opened
    target = open_model(args, args.device)
    config = dataclasses.replace(config, data=data_name(args, target))
    first = config.generator_for(config.ablations[0])
    frontier_file = args.frontier or (
        str(Path(first) / "frontier.json")
        if first and (Path(first) / "frontier.json").is_file()
        else None
    )
    frontier = read_json(frontier_file) if frontier_file else None
    out = Path(args.out)
    result, gated, evaluation = run_study(
        target,
        config,
        device=args.device,
        progress=not args.no_progress,
        pathway_dir=out / "pathways",
        recompute_reference=args.recompute_reference,
        reference_dir=args.reference_dir,
    )
    results_path = write_results(result, out)
    md_path, html_path = build_report(
        result, gated, evaluation, out, panel_samples=args.panels, frontier=frontier
    )
    summary = result.to_json()
    print_json(
        {
            "results": str(results_path),
            "tables": str(md_path),
            "report": str(html_path),
            **{key: summary[key] for key in ("methods", "transfer", "ablations", "interventions")},
        }
    )
    return 0


def _config(args: argparse.Namespace) -> StudyConfig:
    """The study the options ask for (checked by :class:`StudyConfig`)."""
    from neuralpath.errors import InputError
    from neuralpath.study import DEFAULT_METHODS, StudyConfig

    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    else:
        methods = tuple(m for m in DEFAULT_METHODS if args.generator or m != "gencnp")
    generator, generators = _generators(args.generator)
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}")
    return StudyConfig(
        settings=parse_method_settings(args.settings),
        methods=methods,
        sparsity=args.sparsity,
        granularity=args.granularity,
        generator=generator,
        generators=generators,
        data=args.data or "",
        data_root=args.data_root,
        split=args.split,
        limit=args.limit,
        batch_size=args.batch_size,
        seed=args.seed,
        transfer_per_class=args.per_class,
        theta=args.theta,
        instances=args.instances,
        ablations=tuple(a.strip() for a in args.ablation.split(",") if a.strip()),
        reference_size=reference_size(args),
        layers=None if (layers := layer_names(args)) is None else tuple(layers),
        include_fc=args.include_fc,
        unit_types=None if (units := unit_types(args)) is None else tuple(units),
        folder=folder_split(args),
    )


def _generators(values: list[str]) -> tuple[str | None, dict[str, str]]:
    """``--generator`` values -> (the common generator, {ablation: generator})."""
    from neuralpath.errors import InputError
    from neuralpath.interventions import ABLATIONS

    common: str | None = None
    by_ablation: dict[str, str] = {}
    for value in values:
        ablation, sep, path = value.partition("=")
        if sep and ablation in ABLATIONS:
            if ablation in by_ablation:
                raise InputError(f"--generator {ablation}=... given twice")
            by_ablation[ablation] = path
        elif common is not None:
            raise InputError("--generator GDIR given twice; use ABLATION=GDIR for one per ablation")
        else:
            common = value
    return common, by_ablation
