"""Gate discovery across torchvision: which classification architectures neuralpath supports.

Runs ``tests/test_torchvision_sweep.py`` on every architecture of
``torchvision.models.list_models(module=torchvision.models)``, its ``slow`` giants included (the
test suite leaves those out), and writes ``## Gate discovery across torchvision`` of
docs/results.md: the count of supported architectures out of the total (supported: the test
passes: sites found, an all-ones channel pathway reproduces the logits exactly, an all-zeros one
changes them, the model comes back unchanged), the unsupported ones with their reasons (the
test's xfail reason, or its failure), and per architecture the gate sites by kind and the
seconds the check took (random weights, one thread: about 2 minutes in all).

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/torchvision_sweep.py
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torchvision

from _common import ROOT, write_section

SWEEP = ROOT / "tests" / "test_torchvision_sweep.py"
COMMAND = "OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/torchvision_sweep.py"


@dataclass
class Outcome:
    """One architecture's result: ``status`` is passed, xfailed or failed."""

    name: str
    status: str
    seconds: float
    sites: int | None = None
    kinds: str = ""
    reason: str = ""


class Collector:
    """A pytest plugin keeping one :class:`Outcome` per architecture (its call phase, or the
    phase that failed)."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        match = re.search(r"\[(.+)\]$", report.nodeid)
        if match is None or (report.when != "call" and report.passed):
            return
        name = match.group(1)
        properties = dict(report.user_properties)
        if hasattr(report, "wasxfail"):
            status, reason = "xfailed", str(report.wasxfail)
        elif report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            status, reason = "failed", crash.message if crash else str(report.longrepr)
        else:
            status, reason = "passed", ""
        self.outcomes[name] = Outcome(
            name,
            status,
            report.duration,
            properties.get("sites"),  # type: ignore[arg-type]
            str(properties.get("kinds", "")),
            reason.splitlines()[0] if reason else "",
        )


def section(outcomes: list[Outcome]) -> str:
    """The markdown of ``## Gate discovery across torchvision``."""
    supported = [o for o in outcomes if o.status == "passed"]
    unsupported = [o for o in outcomes if o.status != "passed"]
    lines = [
        "## Gate discovery across torchvision",
        "",
        f"`{COMMAND}` (runs `tests/test_torchvision_sweep.py` on every architecture, its `slow` "
        f"ones included; torch {torch.__version__}, torchvision {torchvision.__version__}, CPU).",
        "",
        f"**Supported: {len(supported)} / {len(outcomes)}** classification architectures of "
        "`torchvision.models.list_models(module=torchvision.models)`: built with random weights "
        "and 10 classes at their smallest valid input, discovery finds gate sites, an all-ones "
        "channel pathway reproduces the logits exactly (`torch.equal`), an all-zeros one "
        "changes them, and the model comes back unchanged.",
        "",
        "Unsupported: "
        + (
            "none."
            if not unsupported
            else "; ".join(f"`{o.name}` ({o.reason})" for o in unsupported)
        ),
        "",
        "Site kinds: `conv`, an activation after a conv (units: channels of `[C, H, W]`); "
        "`token`, a hidden MLP activation after a token-wise linear (units on the last "
        "dimension of `[T, D]`, or of channels-last `[H, W, C]` in Swin, ConvNeXt and MaxViT); "
        "`conv output`, the functional fallback (activations applied with `F.relu`).",
        "",
        "| architecture | gate sites | kinds | seconds |",
        "|---|---:|---|---:|",
    ]
    for o in outcomes:
        sites = "" if o.sites is None else str(o.sites)
        kinds = o.kinds if o.status == "passed" else f"{o.status}: {o.reason}"
        lines.append(f"| `{o.name}` | {sites} | {kinds} | {o.seconds:.1f} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (nothing runs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    collector = Collector()
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-m", "", str(SWEEP)], plugins=[collector])
    outcomes = sorted(collector.outcomes.values(), key=lambda o: o.name)
    expected = torchvision.models.list_models(module=torchvision.models)
    if sorted(o.name for o in outcomes) != sorted(expected):
        print(f"the sweep did not report every architecture (pytest exit code {code})")
        return 1
    write_section(args.results, section(outcomes))
    print(section(outcomes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
