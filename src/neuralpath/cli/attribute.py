"""``neuralpath attribute``: saliency maps of a checkpoint on a data set (maps + PNG overlays)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from neuralpath.cli import (
    add_data_args,
    add_model_args,
    add_run_args,
    add_settings_arg,
    load_data,
    open_gated,
    open_intervention,
    parse_settings,
    print_json,
    target_provenance,
)

if TYPE_CHECKING:
    from neuralpath.checkpoint import Target
    from neuralpath.data import ImageDataset
    from neuralpath.gating import GatedModel
    from neuralpath.methods import PathwayFinder

METHODS = (
    "pathway-gradient",
    "pathway-grad-cam",
    "gradient",
    "input-x-gradient",
    "integrated-gradients",
    "guided-backprop",
    "grad-cam",
    "attention-rollout",
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``attribute`` command."""
    parser = subparsers.add_parser(
        "attribute",
        help="compute saliency maps (Pathway Gradient or a Captum baseline)",
        description="Explain images of a data set with Pathway Gradient (Khakzar et al. 2021), "
        "Grad-CAM on the pathway model, or a Captum method. Writes maps.safetensors "
        "(maps [N, C, H, W], display [N, H, W], targets, labels, predictions), meta.json and "
        "one PNG overlay per image into --out, and prints a JSON summary (zero_maps counts the "
        "maps that are zero everywhere, e.g. when a pathway drops a whole layer).",
    )
    add_model_args(parser)
    parser.add_argument("--method", required=True, choices=METHODS, help="attribution method")
    parser.add_argument(
        "--finder",
        default="cp-mct",
        help="pathway finder of the pathway methods: cp-mct (default), cp-intgrad, greedy, "
        "random, active, dgr, ...",
    )
    parser.add_argument(
        "--sparsity", type=float, help="fraction of units dropped (default: the finder's own)"
    )
    parser.add_argument(
        "--granularity",
        choices=("element", "channel"),
        help="pathway units (default: the finder's own, element for critical pathways as in the "
        "paper, channel for DGR and GEN-CNP); maps left all zero are counted as zero_maps",
    )
    parser.add_argument("--generator", help="GEN-CNP generator directory (finder gencnp)")
    add_settings_arg(parser)
    parser.add_argument(
        "--layer",
        help="gate site for Grad-CAM (default: the last conv site; on a vision transformer "
        "the last MLP or head site before the last block, CAM over its patch tokens)",
    )
    add_data_args(parser, required=True)
    parser.add_argument("--split", choices=("train", "test"), default="test", help="(default test)")
    parser.add_argument(
        "--limit",
        type=int,
        default=16,
        help="explain this many images, a seeded random subset (default 16)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    parser.add_argument(
        "--explain",
        choices=("prediction", "label"),
        default="prediction",
        help="class explained: the model's prediction (default) or the true label",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--no-png", action="store_true", help="skip the PNG overlays")
    add_run_args(parser)
    parser.set_defaults(handler=run_attribute)


def run_attribute(args: argparse.Namespace) -> int:
    import warnings
    from pathlib import Path

    from neuralpath.attribution import attribute_dataset, make_explainer, save_overlays
    from neuralpath.errors import ZeroMapsWarning

    _target, dataset, gated = _open(args)
    finder_settings = parse_settings(args.settings)
    finder = _finder(args, gated, finder_settings)
    explain = make_explainer(args.method, gated, finder, layer=args.layer)  # built once
    settings = {**_settings(args, gated, finder, finder_settings), "data_split": dataset.split_info}
    with warnings.catch_warnings():  # counted once below, not warned per batch
        warnings.simplefilter("ignore", ZeroMapsWarning)
        run = attribute_dataset(
            gated,
            explain,
            dataset,
            name=args.method,
            batch_size=args.batch_size,
            explain=args.explain,
            progress=not args.no_progress,
        )
    zero = run.zero_map_count()
    if zero:
        hint = " (see --granularity, --sparsity)" if _pathway_method(args) else ""
        warnings.warn(
            f"{zero} of {run.labels.numel()} maps are all zero{hint}", ZeroMapsWarning, stacklevel=1
        )
    out = Path(args.out)
    pngs = []
    if not args.no_png:
        names = dataset.class_names
        titles = [
            f"{args.method}: explains {names[int(t)]} (label {names[int(y)]}, pred {names[int(p)]})"
            for t, y, p in zip(run.targets, run.labels, run.predictions, strict=True)
        ]
        pixels = dataset.denormalize(dataset.images[: run.labels.numel()])
        pngs = save_overlays(pixels, run.display(), out / "overlays", titles)
    run.save(out, {**settings, "overlays": [str(p.relative_to(out)) for p in pngs]})
    print_json(
        {
            "method": args.method,
            **settings,
            "n": int(run.labels.numel()),
            "seconds_per_image": run.seconds / max(1, run.labels.numel()),
            "zero_maps": zero,
            "out": str(out),
            "overlays": len(pngs),
        }
    )
    return 0


def _finder(
    args: argparse.Namespace, gated: GatedModel, finder_settings: dict[str, Any]
) -> PathwayFinder | None:
    """The pathway method's finder, built once for the whole run (bad settings and a generator
    trained for other weights fail here, before any output); None for Captum's methods."""
    from neuralpath.attribution import pathway_options
    from neuralpath.errors import InputError
    from neuralpath.methods import build_finder

    if not _pathway_method(args):
        if finder_settings or args.generator:
            raise InputError(
                f"{args.method!r} has no pathway finder to take settings or a generator"
            )
        return None
    options = pathway_options(
        sparsity=args.sparsity,
        granularity=args.granularity,
        seed=args.seed,
        generator=args.generator,
        settings=finder_settings,
    )
    return build_finder(args.finder, gated, options)


def _pathway_method(args: argparse.Namespace) -> bool:
    method: str = args.method
    return method.startswith("pathway-")


def _open(args: argparse.Namespace) -> tuple[Target, ImageDataset, GatedModel]:
    """The target, the images to explain and the gated model under ``--ablation``."""
    import torch

    from neuralpath.errors import InputError
    from neuralpath.interventions import check_ablation

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}")
    if check_ablation(args.ablation) != "zero" and not _pathway_method(args):
        raise InputError(f"{args.method!r} has no pathway model for --ablation to act on")
    torch.manual_seed(args.seed)
    target, gated = open_gated(args, args.device)
    dataset = load_data(args, target, args.split, limit=args.limit, seed=args.seed)
    if args.ablation != "zero":  # zero ablation needs no reference statistics
        gated, _ = open_intervention(args, target, gated)
    return target, dataset, gated


def _settings(
    args: argparse.Namespace,
    gated: GatedModel,
    finder: PathwayFinder | None,
    finder_settings: dict[str, Any],
) -> dict[str, Any]:
    """What the maps were made with (``meta.json`` and the printed summary); ``sparsity``: the
    fraction the finder drops by construction (None: decided per sample)."""
    pathway = finder is not None
    return {
        **target_provenance(args),
        "data": args.data,
        "split": args.split,
        "explain": args.explain,
        "seed": args.seed,
        "finder": args.finder if pathway else None,
        "sparsity": finder.sparsity if finder is not None else None,
        "granularity": getattr(getattr(finder, "config", None), "granularity", args.granularity)
        if pathway
        else None,
        "generator": args.generator if pathway else None,
        "finder_settings": finder_settings if pathway else None,
        "ablation": args.ablation if pathway else None,
        "intervention": gated.intervention.describe() if pathway else None,
        "layers": gated.site_names,
    }
