"""The target and data options every command shares.

The target is a neuralpath checkpoint (``--checkpoint DIR``) or the user's own model (``--model
SPEC`` with ``--weights``, ``--model-card`` and the card flags; see
:mod:`neuralpath.model_source`); ``--layers`` (or, for a transformer, ``--units``) and
``--include-fc`` choose its gate sites. The
data options name a data set or an image folder and how a folder is split; every data path
applies the target's own input shape, resize and normalisation
(:meth:`~neuralpath.checkpoint.TargetMeta.preprocessing`).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from neuralpath.checkpoint import Target
    from neuralpath.data import FolderSplit, ImageDataset
    from neuralpath.gating import GatedModel, UnitType
    from neuralpath.model_source import ModelCard

CARD_FLAGS = ("input_shape", "mean", "std", "class_names", "num_classes", "resize")
"""Options that declare a user model's card (also settable in ``--model-card``)."""


def add_model_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--checkpoint DIR`` or ``--model SPEC`` (one of them ``required``) with the model's
    weights, card and gate-site choice, and ``--reference-dir``; :func:`open_gated` opens them."""
    group = parser.add_argument_group(
        "target model", "a neuralpath checkpoint, or your own model (--model with --weights, "
        "--model-card or the card flags)"
    )  # fmt: skip
    which = group.add_mutually_exclusive_group(required=required)
    which.add_argument("--checkpoint", help="neuralpath target checkpoint directory")
    which.add_argument(
        "--model",
        metavar="SPEC",
        help="your model: package.module:function or path/to/file.py:function (a factory "
        "returning an nn.Module), or torchvision:NAME",
    )
    group.add_argument(
        "--weights",
        metavar="FILE",
        help="weights of --model: a .safetensors file, a state dict for "
        "torch.load(weights_only=True), or a torchvision weights enum (ResNet18_Weights."
        "IMAGENET1K_V1) whose file is in torch's hub cache",
    )
    group.add_argument(
        "--model-card", metavar="FILE", help="JSON or TOML model card of --model (fields: "
        "input_shape, mean, std, class_names, num_classes, resize, data); flags override it"
    )  # fmt: skip
    group.add_argument("--input-shape", metavar="C,H,W", help="input shape of --model")
    group.add_argument("--mean", metavar="M,...", help="per-channel normalisation mean")
    group.add_argument("--std", metavar="S,...", help="per-channel normalisation std")
    group.add_argument("--class-names", metavar="A,B,...", help="class names, one per output")
    group.add_argument(
        "--num-classes", type=int, help="outputs of --model (default: from one forward)"
    )
    group.add_argument(
        "--resize",
        type=int,
        metavar="N",
        help="resize images to shorter side N, then centre-crop to H x W (default: max(H, W))",
    )
    _add_site_args(group)


def _add_site_args(group: argparse._ArgumentGroup) -> None:
    """``--layers``, ``--units``, ``--include-fc`` (which gate sites) and ``--reference-dir``."""
    group.add_argument(
        "--layers",
        metavar="NAME,...",
        help="gate these modules' outputs (see `neuralpath info`) instead of the default sites",
    )
    group.add_argument(
        "--units",
        metavar="TYPE,...",
        help="vision transformers: gate these unit types instead of --layers: heads (each "
        "attention head's output before the output projection) and/or mlp (each block's MLP "
        "neurons), e.g. heads,mlp",
    )
    group.add_argument(
        "--include-fc",
        action="store_true",
        help="also gate the activations after hidden fully connected layers (as the reference "
        "code of Khakzar et al. does); default: conv activations only",
    )
    group.add_argument(
        "--reference-dir",
        metavar="DIR",
        help="where the reference statistics are stored (default: the checkpoint directory; "
        "for --model, $NEURALPATH_CACHE or ~/.cache/neuralpath keyed by the weights' digest)",
    )


def open_model(args: argparse.Namespace, device: str) -> Target:
    """The target of the options of :func:`add_model_args` on ``device``."""
    from neuralpath.checkpoint import load_target
    from neuralpath.errors import InputError
    from neuralpath.model_source import open_model as open_user_model

    if args.checkpoint is not None:
        given = [f"--{k.replace('_', '-')}" for k in ("weights", "model_card", *CARD_FLAGS)]
        stray = [flag for flag in given if getattr(args, flag[2:].replace("-", "_")) is not None]
        if stray:
            raise InputError(f"{', '.join(stray)} only apply to --model, not to --checkpoint")
        return load_target(args.checkpoint, device)
    return open_user_model(args.model, weights=args.weights, card=model_card(args), device=device)


def open_gated(args: argparse.Namespace, device: str) -> tuple[Target, GatedModel]:
    """``(target, its gated model)``: :func:`open_model` with the sites of ``--layers`` or
    ``--units``, and ``--include-fc``. Where the command has ``--data`` and it is not given, it
    becomes the target's data set (an error when the target names none)."""
    from neuralpath.runner import open_target

    layers, units = layer_names(args), unit_types(args)
    target, gated = open_target(
        open_model(args, device), layers=layers, include_fc=args.include_fc, unit_types=units
    )
    if "data" in args:
        args.data = data_name(args, target)
    return target, gated


def data_name(args: argparse.Namespace, target: Target) -> str:
    """``--data``, else the target's data set; :class:`InputError` when neither names one."""
    from neuralpath.errors import InputError

    if args.data is not None:
        return str(args.data)
    if not target.meta.data:
        raise InputError("--data is needed: the model card names no data set (field data)")
    return target.meta.data


def layer_names(args: argparse.Namespace) -> list[str] | None:
    """``--layers`` as a list (None: the default sites)."""
    if not args.layers:
        return None
    return [name.strip() for name in args.layers.split(",") if name.strip()]


def unit_types(args: argparse.Namespace) -> list[UnitType] | None:
    """``--units`` as a list of :data:`~neuralpath.gating.UNIT_TYPES` (None: not given);
    :class:`InputError` for an unknown type, an empty list, or ``--units`` with ``--layers``."""
    from neuralpath.errors import InputError
    from neuralpath.gating import UNIT_TYPES

    if args.units is None:
        return None
    if args.layers:
        raise InputError("--units and --layers both choose the gate sites: give one of them")
    names = [name.strip() for name in args.units.split(",") if name.strip()]
    if not names:
        raise InputError(f"--units takes unit types from {', '.join(UNIT_TYPES)}, got nothing")
    unknown = [name for name in names if name not in UNIT_TYPES]
    if unknown:
        raise InputError(
            f"--units: unknown unit type(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(UNIT_TYPES)}"
        )
    if len(set(names)) != len(names):
        raise InputError(f"--units lists a unit type twice: {args.units!r}")
    return [unit for unit in UNIT_TYPES if unit in names]


def model_card(args: argparse.Namespace) -> ModelCard:
    """The card of ``--model-card`` with the card flags over it."""
    from neuralpath.errors import InputError
    from neuralpath.model_source import ModelCard

    card = ModelCard.read(args.model_card) if args.model_card else ModelCard()
    lists = {"input_shape": int, "mean": float, "std": float, "class_names": str}
    flags: dict[str, Any] = {}
    for key, kind in lists.items():
        text = getattr(args, key)
        if text is not None:
            try:
                flags[key] = [kind(v.strip()) for v in text.split(",") if v.strip()]
            except ValueError as exc:
                flag = "--" + key.replace("_", "-")
                raise InputError(f"{flag} takes comma-separated values, got {text!r}") from exc
    for key in ("num_classes", "resize"):
        if getattr(args, key) is not None:
            flags[key] = getattr(args, key)
    if "input_shape" in flags and len(flags["input_shape"]) != 3:
        raise InputError(f"--input-shape takes C,H,W, got {args.input_shape!r}")
    merged: ModelCard = card.merged(ModelCard.from_mapping(flags, "model card flags"))
    return merged


def target_provenance(args: argparse.Namespace) -> dict[str, Any]:
    """What the target was, for results files: the checkpoint, or the model and its weights."""
    if args.checkpoint is not None:
        return {"checkpoint": str(args.checkpoint)}
    return {"model": args.model, "weights": args.weights}


def add_data_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """``--data``, ``--data-root`` and how an image folder is split (``--test-fraction``,
    ``--split-seed``, ``--test-folder``, ``--skip-unreadable``); :func:`load_data` reads them."""
    parser.add_argument(
        "--data",
        required=required,
        help="fashion-mnist, mnist, cifar10, synthetic or an image folder (class subfolders)"
        + ("" if required else "; default: the target's data set"),
    )
    parser.add_argument("--data-root", help="folder holding a user copy of the data set")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="image folders without train/ and test/ subfolders: share of each class held out "
        "as the test split (default 0.2, stratified, drawn with --split-seed)",
    )
    parser.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of an image folder's train/test split (default 0; kept apart from --seed so "
        "that every command sees the same split)",
    )
    parser.add_argument("--test-folder", help="a separate image folder holding the test split")
    parser.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="skip image files that cannot be read (counted in the output) instead of failing",
    )


def folder_split(args: argparse.Namespace) -> FolderSplit:
    """The image-folder split of the options of :func:`add_data_args`."""
    from neuralpath.data import FolderSplit

    return FolderSplit(args.test_fraction, args.split_seed, args.test_folder, args.skip_unreadable)


def load_data(
    args: argparse.Namespace,
    target: Target,
    split: str,
    *,
    limit: int | None = None,
    seed: int = 0,
) -> ImageDataset:
    """``split`` of ``--data`` at the target's own input shape, resize and normalisation
    (a seeded subset of ``limit`` images; :class:`DataError` when its images have another
    number of channels). Skipped unreadable files are reported on stderr."""
    import sys

    from neuralpath.data import load_dataset

    dataset = load_dataset(
        args.data, split, args.data_root, limit=limit, seed=seed,
        preprocessing=target.meta.preprocessing(), folder=folder_split(args),
    )  # fmt: skip
    if dataset.skipped:
        print(
            f"neuralpath: skipped {dataset.skipped} unreadable image(s) of the {split} split",
            file=sys.stderr,
        )
    return dataset
