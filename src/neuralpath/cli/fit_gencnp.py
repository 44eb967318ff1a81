"""``neuralpath fit-gencnp``: train a GEN-CNP pathway generator for a target checkpoint."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from neuralpath.cli import (
    add_data_args,
    add_model_args,
    add_run_args,
    load_data,
    open_gated,
    print_json,
)

if TYPE_CHECKING:
    from neuralpath.methods.gencnp import FitConfig
    from neuralpath.methods.gencnp.train import DistEnv


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``fit-gencnp`` command."""
    fit = subparsers.add_parser(
        "fit-gencnp",
        help="train a GEN-CNP pathway generator for a target",
        description="Train a GEN-CNP generator (KD + alpha * l2 sparsity, optionally swap and "
        "blank penalties) on the training split, its masks applied under --ablation, "
        "checkpointing every epoch into --out (generator.safetensors, train_state.safetensors, "
        "meta.json); print a JSON summary. For DDP run it under torchrun: "
        "`torchrun --nproc_per_node=N $(which neuralpath) fit-gencnp ...` (gloo on CPU, nccl on "
        "CUDA; --batch-size is the global batch).",
    )
    add_model_args(fit)
    add_data_args(fit)
    fit.add_argument("--out", required=True, help="generator directory to write")
    fit.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    fit.add_argument("--alpha", type=float, default=0.3, help="sparsity weight alpha >= 0 (0.3)")
    fit.add_argument("--temperature", type=float, default=1.0, help="KD temperature T (1.0)")
    fit.add_argument("--batch-size", type=int, default=64, help="global batch size (64)")
    fit.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (3e-3)")
    fit.add_argument("--limit", type=int, help="train on a seeded subset of N training images")
    fit.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the training images held out for validation (0.1)",
    )
    fit.add_argument(
        "--schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="learning-rate schedule (cosine to 0 over all epochs; constant allows "
        "adding epochs on --resume)",
    )
    fit.add_argument(
        "--stop-after",
        type=int,
        help="end this session after epoch N (continue later with --resume)",
    )
    _add_knobs(fit)
    fit.add_argument(
        "--rfe",
        choices=("conv", "mlp", "token"),
        default="conv",
        help="RFE variant: conv (paper; token sites pooled over tokens), mlp (ablation), token "
        "(conv on conv sites, the token RFE on a transformer's token and head sites)",
    )
    fit.add_argument("--pdn", choices=("shared", "per-layer"), default="shared", help="PDN variant")
    fit.add_argument("--width", type=int, default=64, help="generator token width D (64)")
    fit.add_argument("--resolution", type=int, default=4, help="RFE common resolution S (4)")
    fit.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    add_run_args(fit)
    fit.set_defaults(handler=run_fit)


def _add_knobs(fit: argparse.ArgumentParser) -> None:
    """The training knobs that keep pathways input-dependent [ours]."""
    fit.add_argument(
        "--distillation",
        choices=("kl", "ce"),
        default="kl",
        help="kl: KL to the target's softmax (the paper's); ce: cross-entropy to the "
        "target's predicted class (DGR's form) [ours]",
    )
    fit.add_argument(
        "--swap-weight",
        type=float,
        default=0.0,
        help="weight >= 0 of the swap penalty: an input run through the masks of a sample of "
        "another class must not predict that class (0: off) [ours]",
    )
    fit.add_argument(
        "--blank-weight",
        type=float,
        default=0.0,
        help="weight >= 0 of the blank penalty: the reference mean image run through a "
        "sample's masks must not predict its class (0: off) [ours]",
    )


def run_fit(args: argparse.Namespace) -> int:
    import os

    from neuralpath.cli import open_intervention
    from neuralpath.methods.gencnp import fit_gencnp
    from neuralpath.methods.gencnp.checkpoint import read_meta
    from neuralpath.methods.gencnp.train import distributed, main_process_first

    config = _config(args)
    device = args.device
    if device == "auto" and "LOCAL_RANK" in os.environ:
        import torch

        device = f"cuda:{os.environ['LOCAL_RANK']}" if torch.cuda.is_available() else "cpu"
    target, gated = open_gated(args, device)
    dataset = load_data(args, target, "train", limit=args.limit, seed=args.seed)
    with distributed(gated.device) as env:
        baseline = None
        if args.ablation != "zero" or args.blank_weight > 0:
            with main_process_first(env):  # rank 0 computes and stores the reference first
                gated, reference = open_intervention(_on_rank(args, env), target, gated)
            baseline = reference.statistics.input_mean
        generator = fit_gencnp(
            gated,
            dataset,
            config,
            out_dir=args.out,
            resume=args.resume,
            progress=not args.no_progress,
            data_name=args.data,
            target_meta=target.meta.to_dict(),
            stop_after=args.stop_after,
            baseline=baseline,
        )
        if env.main:
            meta = read_meta(args.out)
            print_json(
                {
                    "generator": args.out,
                    "ablation": args.ablation,
                    "distillation": config.distillation,
                    "swap_weight": config.swap_weight,
                    "blank_weight": config.blank_weight,
                    "blank_baseline": meta.get("blank_baseline", "zeros"),
                    "epochs_done": meta["epochs_done"],
                    "parameters": sum(p.numel() for p in generator.parameters()),
                    "history": meta["history"],
                }
            )
    return 0


def _on_rank(args: argparse.Namespace, env: DistEnv) -> argparse.Namespace:
    """``args`` for this torchrun process: only rank 0 recomputes the reference and shows
    progress."""
    if env.main:
        return args
    return argparse.Namespace(**{**vars(args), "recompute_reference": False, "no_progress": True})


def _config(args: argparse.Namespace) -> FitConfig:
    """The training config of the command's options (negative loss weights are refused)."""
    from neuralpath.errors import InputError
    from neuralpath.methods.gencnp import FitConfig, GeneratorConfig

    for flag in ("alpha", "swap_weight", "blank_weight"):
        if getattr(args, flag) < 0:
            name = "--" + flag.replace("_", "-")
            raise InputError(f"{name} must be >= 0 (a loss weight), got {getattr(args, flag)}")
    return FitConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        alpha=args.alpha,
        temperature=args.temperature,
        seed=args.seed,
        val_fraction=args.val_fraction,
        schedule=args.schedule,
        distillation=args.distillation,
        swap_weight=args.swap_weight,
        blank_weight=args.blank_weight,
        generator=GeneratorConfig(
            width=args.width, resolution=args.resolution, rfe=args.rfe, pdn=args.pdn
        ),
    )
