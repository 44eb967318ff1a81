"""``neuralpath train``: train a target model; ``neuralpath info``: describe a checkpoint."""

from __future__ import annotations

import argparse
from typing import Any

from neuralpath.cli import add_device_arg, add_seed_arg, print_json


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``train`` and ``info`` commands."""
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

    info = subparsers.add_parser(
        "info",
        help="describe a checkpoint",
        description="Print a checkpoint's metadata and its default gated layers.",
    )
    info.add_argument("checkpoint", help="checkpoint directory")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=run_info)


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


def describe_checkpoint(path: str) -> dict[str, Any]:
    """Metadata, parameter count and default gated layers (``{name, units}``) of a checkpoint."""
    from neuralpath.checkpoint import load_target
    from neuralpath.gating import discover_sites

    target = load_target(path)
    sites = discover_sites(target.model, target.example_input())
    return {
        "checkpoint": path,
        **target.meta.to_dict(),
        "num_parameters": sum(p.numel() for p in target.model.parameters()),
        "layers": [{"name": site.name, "units": site.units} for site in sites],
    }


def run_info(args: argparse.Namespace) -> int:
    info = describe_checkpoint(args.checkpoint)
    if args.json:
        print_json(info)
        return 0
    accuracy = info["test_accuracy"]
    accuracy_text = "unknown" if accuracy is None else f"{100 * accuracy:.2f} % (test)"
    shape = "x".join(map(str, info["input_shape"]))
    arch_args = ", ".join(f"{key} {value}" for key, value in info["arch_args"].items())
    layers = info["layers"]
    units = sum(layer["units"] for layer in layers)
    listed = ", ".join(f"{layer['name']} ({layer['units']})" for layer in layers)
    lines = [
        f"checkpoint  {info['checkpoint']}",
        f"arch        {info['arch']} ({arch_args}), {info['num_parameters']:,} parameters",
        f"data        {info['data']}: input {shape}, {info['num_classes']} classes",
        f"accuracy    {accuracy_text}, {info['epochs']} epochs, seed {info['seed']}",
        f"layers      {len(layers)} gated, {units} units: {listed}",
        f"created by  {info['created_by']}",
    ]
    print("\n".join(lines))
    return 0
