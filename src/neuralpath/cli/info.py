"""``neuralpath info``: what a target takes, predicts and what will be gated."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from neuralpath.cli import add_device_arg, add_model_args, open_gated, print_json, target_provenance

if TYPE_CHECKING:
    from neuralpath.checkpoint import Target
    from neuralpath.gating import GatedModel


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``info`` command."""
    cmd = subparsers.add_parser(
        "info",
        help="describe a target: input, normalisation, classes, gate sites",
        description="Open a checkpoint (DIR or --checkpoint) or your own model (--model) as "
        "every other command does and print where it came from, its metadata (input shape, "
        "normalisation mean/std, resize, classes), its parameter count and the gate sites "
        "pathways are found over (name, module, kind, units, activation shape per sample). "
        "--layers (or --units) and --include-fc change the sites as they do in every command.",
    )
    cmd.add_argument("path", nargs="?", metavar="DIR", help="checkpoint directory")
    add_model_args(cmd, required=False)
    cmd.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_device_arg(cmd)
    cmd.set_defaults(handler=run_info, device="cpu")


def run_info(args: argparse.Namespace) -> int:
    from neuralpath.errors import InputError

    if args.path is not None and (args.checkpoint is not None or args.model is not None):
        raise InputError("give the checkpoint as DIR or --checkpoint, not with --model")
    args.checkpoint = args.checkpoint or args.path
    if args.checkpoint is None and args.model is None:
        raise InputError("info needs a checkpoint directory (DIR, --checkpoint) or --model")
    target, gated = open_gated(args, args.device)
    info = describe(args, target, gated)
    if args.json:
        print_json(info)
    else:
        print(_text(info))
    return 0


def describe(args: argparse.Namespace, target: Target, gated: GatedModel) -> dict[str, Any]:
    """The target's provenance, metadata, parameter count and gate sites (``layers``)."""
    sites = [
        {
            "name": site.name,
            "units": site.units,
            "module": site.module_name,
            "kind": site.kind,
            "shape": list(site.shape),
            "elements": site.numel,
        }
        for site in gated.sites
    ]
    return {
        **target_provenance(args),
        **target.meta.to_dict(),
        "num_parameters": sum(p.numel() for p in target.model.parameters()),
        "layers": sites,
        "units": sum(site.units for site in gated.sites),
        "elements": sum(site.numel for site in gated.sites),
    }


def _text(info: dict[str, Any]) -> str:
    """The human-readable view of :func:`describe`'s dict."""
    accuracy = info["test_accuracy"]
    accuracy_text = "unknown" if accuracy is None else f"{100 * accuracy:.2f} % (test)"
    training = (
        f"{accuracy_text}, {info['epochs']} epochs, seed {info['seed']}"
        if info["epochs"] is not None
        else f"{accuracy_text} (not trained by neuralpath)"
    )
    shape = "x".join(map(str, info["input_shape"]))
    arch_args = ", ".join(f"{key} {value}" for key, value in info["arch_args"].items())
    names = info["class_names"]
    classes = ", ".join(names[:10]) + (f", ... (+{len(names) - 10})" if len(names) > 10 else "")
    origin = info.get("checkpoint") or f"{info['model']} (weights {info['weights']})"
    lines = [
        f"target      {origin}",
        f"arch        {info['arch']} ({arch_args}), {info['num_parameters']:,} parameters",
        f"data        {info['data'] or 'none named'}: input {shape}, resize {info['resize']}",
        f"normalise   mean {info['mean']}, std {info['std']}",
        f"classes     {info['num_classes']}: {classes}",
        f"accuracy    {training}",
        f"layers      {len(info['layers'])} gated, {info['units']} units, "
        f"{info['elements']} elements:",
        *(
            f"  {site['name']} ({site['units']})  {site['kind']} {site['module']}, "
            f"shape {site['shape']}"
            for site in info["layers"]
        ),
        f"created by  {info['created_by']}",
    ]
    return "\n".join(lines)
