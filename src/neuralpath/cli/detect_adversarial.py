"""``neuralpath detect-adversarial``: detect FGSM/PGD images from their DGR routing paths.

Attacks ``--limit`` test images, computes the continuous DGR gates of the clean and attacked
images, fits a 50-tree random forest on part of the pairs and reports ROC-AUC on the rest
(:func:`neuralpath.adversarial.detect_adversarial`). Writes ``results.json`` into ``--out`` and
prints it. The fitted forest is not saved (that would need pickle); only metrics are reported.
"""

from __future__ import annotations

import argparse

from neuralpath.cli import (
    add_data_args,
    add_model_args,
    add_run_args,
    load_data,
    open_gated,
    print_json,
    target_provenance,
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``detect-adversarial`` command."""
    parser = subparsers.add_parser(
        "detect-adversarial",
        help="detect adversarial images from their DGR routing paths (ROC-AUC)",
        description="Attack test images (FGSM or PGD, L-inf, eps in pixel units of [0, 1]), "
        "compute DGR gates of clean and attacked images, train a 50-tree random forest on a "
        "split of the image pairs and report ROC-AUC, accuracy, attack success rate and n as "
        "JSON (also written to OUT/results.json).",
    )
    add_model_args(parser)
    add_data_args(parser)
    parser.add_argument("--attack", choices=("fgsm", "pgd"), required=True)
    parser.add_argument(
        "--eps", type=float, required=True, help="L-inf budget in pixel units, e.g. 0.1"
    )
    parser.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    parser.add_argument(
        "--limit", type=int, default=500, help="clean test images to attack (default 500)"
    )
    parser.add_argument("--iterations", type=int, default=30, help="DGR iterations (default 30)")
    parser.add_argument(
        "--init",
        choices=("ones", "uniform"),
        default="ones",
        help="DGR gate start: ones (DGR) or uniform (DGR-R)",
    )
    parser.add_argument(
        "--pair-test-fraction",
        type=float,
        default=0.3,
        help="fraction of (clean, attacked) image pairs held out for the ROC-AUC (default 0.3; "
        "--test-fraction splits an image folder)",
    )
    parser.add_argument(
        "--include-failed",
        action="store_true",
        help="also use pairs whose attack did not change a correct prediction",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", required=True, help="output directory (results.json)")
    add_run_args(parser, ablation=False)
    parser.set_defaults(handler=run_detect)


def run_detect(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from neuralpath.adversarial import Attack, detect_adversarial
    from neuralpath.errors import InputError
    from neuralpath.io import write_json_atomic
    from neuralpath.methods.dgr import DGR, DGRConfig

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    torch.manual_seed(args.seed)
    target, gated = open_gated(args, args.device)
    dataset = load_data(args, target, "test", limit=args.limit, seed=args.seed)
    finder = DGR(gated, DGRConfig(iterations=args.iterations, init=args.init, seed=args.seed))
    attack = Attack(args.attack, args.eps, dataset.mean, dataset.std, args.steps, args.seed)
    result = detect_adversarial(
        finder, dataset.images, dataset.labels, attack, test_fraction=args.pair_test_fraction,
        only_successful=not args.include_failed, batch_size=args.batch_size,
        progress=not args.no_progress,
    )  # fmt: skip
    payload = {
        **result.to_dict(),
        **target_provenance(args),
        "data": args.data,
        "data_split": dataset.split_info,
        "seed": args.seed,
        "dgr_iterations": args.iterations,
        "dgr_init": args.init,
        "pgd_steps": args.steps if args.attack == "pgd" else None,
        "classifier": "RandomForestClassifier(n_estimators=50), not saved",
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", payload)
    print_json(payload)
    return 0
