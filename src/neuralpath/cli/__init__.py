"""Command-line interface: ``neuralpath <command> ...``.

Each command lives in a module of :data:`COMMAND_MODULES` exposing ``register(subparsers)``,
which adds its subparser(s) and sets ``handler`` (``fn(args) -> int``) with ``set_defaults``.
Command modules import torch and the library inside their handlers, so building the parser
(and ``neuralpath --help``) stays fast. Errors raised as :class:`NeuralpathError` become
``neuralpath: error: <message>`` on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from neuralpath import __version__
from neuralpath.cli.model_args import (
    add_data_args,
    add_model_args,
    load_data,
    open_gated,
    target_provenance,
)
from neuralpath.errors import (
    DisconnectedWarning,
    InputError,
    LeakageWarning,
    NeuralpathError,
    ZeroMapsWarning,
)

if TYPE_CHECKING:
    from neuralpath.checkpoint import Target
    from neuralpath.data import ImageDataset
    from neuralpath.gating import GatedModel
    from neuralpath.methods import FinderConfig, PathwayFinder
    from neuralpath.runner import Reference

__all__ = [
    "ABLATION_HELP",
    "COMMAND_MODULES",
    "EXIT_ERROR",
    "add_ablation_args",
    "add_data_args",
    "add_device_arg",
    "add_finder_args",
    "add_model_args",
    "add_reference_size_arg",
    "add_run_args",
    "add_seed_arg",
    "add_settings_arg",
    "build_parser",
    "finder_config",
    "load_data",
    "main",
    "open_finder",
    "open_gated",
    "open_intervention",
    "open_target_reference",
    "parse_method_settings",
    "parse_settings",
    "print_json",
    "reference_size",
    "target_provenance",
]
"""The helpers command modules import (those of :mod:`neuralpath.cli.model_args` included)."""

COMMAND_MODULES: tuple[str, ...] = (
    "neuralpath.cli.train",
    "neuralpath.cli.find",
    "neuralpath.cli.compare",
    "neuralpath.cli.extract",
    "neuralpath.cli.fit_gencnp",
    "neuralpath.cli.class_pathways",
    "neuralpath.cli.detect_adversarial",
    "neuralpath.cli.attribute",
    "neuralpath.cli.evaluate_attribution",
    "neuralpath.cli.reference",
    "neuralpath.cli.info",
)
"""Modules whose ``register(subparsers)`` adds commands, in help order."""

EXIT_ERROR = 2


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """``--device``: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda:0``, ..."""
    parser.add_argument(
        "--device", default="auto", help="torch device: auto (default), cpu, cuda, cuda:1, ..."
    )


def add_seed_arg(parser: argparse.ArgumentParser, default: int = 0) -> None:
    """``--seed``: the seed of every random choice the command makes."""
    parser.add_argument(
        "--seed", type=int, default=default, help=f"random seed (default {default})"
    )


class _WithSettings(str):
    """Help text whose ``{settings}`` becomes every finder's settings with their types and
    defaults (:func:`~neuralpath.methods.base.settings_help`, generated from the config
    dataclasses) when argparse formats it: only when help is shown, since listing them imports
    every finder (and torch), which building the parser must not."""

    def __mod__(self, params: Any) -> str:
        from neuralpath.methods.base import settings_help

        text: str = str(self).replace("{settings}", settings_help().replace("%", "%%")) % params
        return text


def add_settings_arg(parser: argparse.ArgumentParser, per_method: bool = False) -> None:
    """``--set KEY=VALUE`` (repeatable), or ``--set METHOD.KEY=VALUE`` with ``per_method``."""
    if per_method:
        parser.add_argument(
            "--set",
            dest="settings",
            action="append",
            default=[],
            metavar="METHOD.KEY=VALUE",
            help=_WithSettings(
                "a setting of one pathway finder, repeatable, e.g. dgr.gamma=0.01; each "
                "method's defaults and keys: {settings}"
            ),
        )
        return
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=_WithSettings(
            "a pathway-finder setting, repeatable; VALUE is read as JSON when it parses (0.01, "
            "100, true, null), else as text. Each method's defaults and keys: {settings}"
        ),
    )


ABLATION_HELP = (
    "what a dropped unit becomes in the pathway model: zero (multiplied by 0, the papers' rule), "
    "mean (its mean activation over training images), resample (its activation on a training "
    "image drawn with --seed); the leakage controls (blank agreement, swap test) are printed "
    "beside the faithfulness they qualify"
)


def add_reference_size_arg(parser: argparse.ArgumentParser) -> None:
    """``--reference-size``: training images behind the reference statistics and donors."""
    parser.add_argument(
        "--reference-size",
        type=int,
        metavar="N",
        help="training images (a seeded subset) the reference statistics (per-unit means, "
        "mean image) and resample donors come from (default 2000); the statistics are stored "
        "in the reference directory (--reference-dir) and reused",
    )


def reference_size(args: argparse.Namespace) -> int:
    """``--reference-size``, or :data:`~neuralpath.runner.DEFAULT_REFERENCE_SIZE` when not given."""
    from neuralpath.runner import DEFAULT_REFERENCE_SIZE

    return DEFAULT_REFERENCE_SIZE if args.reference_size is None else int(args.reference_size)


def add_ablation_args(parser: argparse.ArgumentParser, several: bool = False) -> None:
    """``--ablation``, ``--reference-size``, ``--recompute-reference``: how the pathway model
    replaces dropped units; :func:`open_intervention` turns them into an intervened model.
    ``several``: ``--ablation`` takes a comma-separated list (``compare``)."""
    if several:
        parser.add_argument(
            "--ablation",
            default="zero,mean",
            metavar="A,B",
            help=f"comma-separated ablations, each method runs under each (default zero,mean): "
            f"{ABLATION_HELP}",
        )
    else:
        parser.add_argument(
            "--ablation",
            default="zero",
            metavar="{zero,mean,resample}",
            help=f"{ABLATION_HELP} (default zero)",
        )
    add_reference_size_arg(parser)
    parser.add_argument(
        "--recompute-reference",
        action="store_true",
        help="recompute the stored reference statistics instead of reusing them",
    )


def open_intervention(
    args: argparse.Namespace, target: Target, gated: GatedModel
) -> tuple[GatedModel, Reference]:
    """``(gated under --ablation, the target's reference)`` from the options of
    :func:`add_ablation_args` (reference from :func:`open_target_reference`)."""
    from neuralpath.interventions import check_ablation

    ablation = check_ablation(args.ablation)
    reference = open_target_reference(args, target, gated)
    return gated.with_intervention(reference.intervention(ablation, args.seed)), reference


def open_target_reference(args: argparse.Namespace, target: Target, gated: GatedModel) -> Reference:
    """The target's reference: statistics over a seeded subset of ``--reference-size`` images of
    the training split of ``--data`` (computed and stored in its reference directory on first
    use or with ``--recompute-reference``, see
    :meth:`~neuralpath.checkpoint.Target.reference_dir`), resample donors from it."""
    from neuralpath.runner import open_reference

    size = reference_size(args)
    if size < 1:
        raise InputError(f"the reference set needs at least one image, got size {size}")
    train = load_data(args, target, "train", limit=size, seed=args.seed)
    return open_reference(
        target.reference_dir(args.reference_dir), gated, train, size=size, seed=args.seed,
        recompute=args.recompute_reference, progress=not args.no_progress,
        source={"data": args.data, "split": "train"},
    )  # fmt: skip


def add_finder_args(parser: argparse.ArgumentParser, limit_help: str) -> None:
    """The options shared by commands that run one pathway finder over a data split
    (``find``, ``extract``); :func:`open_finder` turns them into a finder and its data."""
    add_model_args(parser)
    parser.add_argument(
        "--method",
        required=True,
        help="cp-mct, cp-intgrad, greedy, random, active, dgr, dgr-r, gencnp",
    )
    parser.add_argument(
        "--sparsity",
        type=float,
        help="fraction of units dropped, for methods with a sparsity knob (default: the "
        "method's own, listed under --set)",
    )
    parser.add_argument(
        "--granularity",
        choices=("channel", "element"),
        help="pathway units (default: the method's own, listed under --set)",
    )
    parser.add_argument("--generator", help="GEN-CNP generator directory (method gencnp)")
    add_settings_arg(parser)
    add_data_args(parser)
    parser.add_argument("--split", choices=("train", "test"), default="test")
    parser.add_argument("--limit", type=int, help=limit_help)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--internal-batch-size",
        type=int,
        help="find pathways for at most this many images at a time (bounds memory)",
    )
    add_run_args(parser)


def add_run_args(parser: argparse.ArgumentParser, ablation: bool = True) -> None:
    """``--no-progress``, (with ``ablation``) the options of :func:`add_ablation_args`,
    ``--seed`` and ``--device``: the tail every target command shares."""
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    if ablation:
        add_ablation_args(parser)
    add_seed_arg(parser)
    add_device_arg(parser)


def open_finder(
    args: argparse.Namespace, device: str
) -> tuple[Target, ImageDataset, PathwayFinder, Reference]:
    """``(target, dataset, finder, reference)`` from the options of :func:`add_finder_args`;
    the finder works on the target's gated model under ``--ablation``."""
    import torch

    from neuralpath.interventions import check_ablation
    from neuralpath.methods import build_finder

    config = finder_config(args)
    check_ablation(args.ablation)
    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}")
    torch.manual_seed(args.seed)
    target, gated = open_gated(args, device)
    dataset = load_data(args, target, args.split)
    intervened, reference = open_intervention(args, target, gated)
    return target, dataset, build_finder(args.method, intervened, config), reference


def finder_config(args: argparse.Namespace) -> FinderConfig:
    """``--method``'s config from the options of :func:`add_finder_args`: ``--sparsity``,
    ``--granularity``, ``--seed``, ``--generator`` (None: the method's default) and the ``--set``
    pairs, checked by name and type before any work."""
    from neuralpath.methods import COMMON_KEYS, config_from_settings

    common = {key: getattr(args, key) for key in COMMON_KEYS}
    return config_from_settings(args.method, common, parse_settings(args.settings))


def parse_settings(pairs: list[str]) -> dict[str, Any]:
    """``["gamma=0.01", "binarize=positive"]`` -> ``{"gamma": 0.01, "binarize": "positive"}``;
    values are JSON when they parse, text otherwise."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set takes KEY=VALUE, got {pair!r}")
        if key.strip() in settings:
            raise InputError(f"--set {key.strip()} given twice")
        try:
            settings[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            settings[key.strip()] = text
    return settings


def parse_method_settings(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``["dgr.gamma=0.01"]`` -> ``{"dgr": {"gamma": 0.01}}`` (values as in :func:`parse_settings`)."""
    settings: dict[str, dict[str, Any]] = {}
    for key, value in parse_settings(pairs).items():
        method, dot, name = key.partition(".")
        if not dot or not method or not name:
            raise InputError(f"--set takes METHOD.KEY=VALUE here, got {key!r}")
        settings.setdefault(method, {})[name] = value
    return settings


def print_json(payload: Any) -> None:
    """Print ``payload`` as indented JSON on stdout (paths and other objects as strings)."""
    print(json.dumps(payload, indent=2, default=str))


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command of :data:`COMMAND_MODULES` registered."""
    parser = argparse.ArgumentParser(
        prog="neuralpath",
        description="Explain PyTorch image classifiers through neural pathways.",
    )
    parser.add_argument("--version", action="version", version=f"neuralpath {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit code (0 ok, 2 usage or input error)."""
    parser = build_parser()
    with warnings.catch_warnings():  # restores the warning display on the way out
        warnings.showwarning = _one_line_warnings(warnings.showwarning)
        try:
            args = parser.parse_args(argv)
            return int(args.handler(args) or 0)
        except SystemExit as exc:  # argparse: --help, --version, usage errors
            return exc.code if isinstance(exc.code, int) else EXIT_ERROR
        except KeyboardInterrupt:
            print("neuralpath: error: interrupted", file=sys.stderr)
        except (NeuralpathError, OSError) as exc:
            print(f"neuralpath: error: {exc}", file=sys.stderr)
    return EXIT_ERROR


def _one_line_warnings(show: Any) -> Any:
    """``warnings.showwarning`` printing our own warnings as ``neuralpath: warning: ...``."""

    def display(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, (ZeroMapsWarning, LeakageWarning, DisconnectedWarning)):
            print(f"neuralpath: warning: {message}", file=sys.stderr)
        else:
            show(message, category, *args, **kwargs)

    return display
