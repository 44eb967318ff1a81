"""``neuralpath train``: train a target model."""

from __future__ import annotations

import argparse

from neuralpath.cli import add_device_arg, add_seed_arg, print_json


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``train`` command."""
    train = subparsers.add_parser(
        "train",
        help="train a target classifier and save a checkpoint",
        description="Train a target classifier, save it as a checkpoint directory "
        "(model.safetensors + meta.json) and print a JSON summary.",
    )
    train.add_argument(
        "--arch", default="vgg11", help="alexnet, vgg11 (ours), or a torchvision classifier name"
    )
    train.add_argument(
        "--data",
        default="fashion-mnist",
        help="fashion-mnist (default), mnist, cifar10, synthetic, or an image folder",
    )
    train.add_argument("--data-root", help="folder holding a user copy of the data set")
    train.add_argument(
        "--download", action="store_true", help="let torchvision download the data into --data-root"
    )
    train.add_argument("--out", required=True, help="checkpoint directory to write")
    train.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    train.add_argument(
        "--width", type=float, help="width multiplier of alexnet/vgg11 (default per arch)"
    )
    train.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    train.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    train.add_argument("--limit", type=int, help="use at most N images per split (quick runs)")
    train.add_argument("--image-size", type=int, help="image side in pixels (default per data set)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_seed_arg(train)
    add_device_arg(train)
    train.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from neuralpath.train import train_target

    result = train_target(
        args.arch,
        args.data,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        width=args.width,
        batch_size=args.batch_size,
        lr=args.lr,
        out_dir=args.out,
        data_root=args.data_root,
        download=args.download,
        limit=args.limit,
        image_size=args.image_size,
        progress=not args.no_progress,
    )
    print_json(result.summary())
    return 0
