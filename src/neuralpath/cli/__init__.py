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
from collections.abc import Sequence
from typing import Any

from neuralpath import __version__
from neuralpath.errors import NeuralpathError

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
