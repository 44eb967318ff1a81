"""Shared by the benchmark scripts: the docs/results.md section writer, timing, models, inputs."""

from __future__ import annotations

import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from neuralpath.checkpoint import load_target
from neuralpath.data import load_dataset
from neuralpath.errors import DataError
from neuralpath.gating import GatedModel
from neuralpath.io import write_bytes_atomic
from neuralpath.models import build_model
from neuralpath.pathway import Pathway


def write_section(path: Path, section: str) -> None:
    """Replace the section of ``path`` whose ``## Title`` line starts ``section``, or append it.

    The section runs to the next ``## `` heading; other sections are kept as they are; the file
    is written atomically.
    """
    heading = section.lstrip().splitlines()[0].rstrip()
    if not heading.startswith("## "):
        raise ValueError(f"a section must start with a '## ' heading, got {heading!r}")
    text = path.read_text() if path.exists() else "# Results\n"
    body = section.strip() + "\n"
    pattern = re.compile(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + body
    write_bytes_atomic(path, text.encode("utf-8"))


ROOT = Path(__file__).resolve().parents[1]


def shown(path: Path) -> str:
    """``path`` relative to the repository when inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(
    variants: dict[str, Callable[[], object]], repeats: int
) -> dict[str, float]:
    """Median seconds of each variant, timed once per round, rounds interleaved (one warm-up
    call of each first)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def load_model(checkpoint: Path) -> tuple[torch.nn.Module, str]:
    """The target at ``checkpoint``, or a same-architecture VGG-11 with random weights when the
    checkpoint is absent (timings do not depend on the weights); with a description."""
    if (checkpoint / "meta.json").exists():
        return load_target(checkpoint, "cpu").model, f"checkpoint {shown(checkpoint)}"
    torch.manual_seed(0)
    model = build_model("vgg11", num_classes=10, in_channels=1, input_size=32, width=0.25).eval()
    return model, "VGG-11 (width 0.25) with random weights (checkpoint absent)"


def load_batch(count: int) -> tuple[torch.Tensor, str]:
    """``count`` Fashion-MNIST test images (random inputs if the data set is absent)."""
    try:
        return load_dataset(
            "fashion-mnist", "test", limit=count, seed=0
        ).images, "Fashion-MNIST test images"
    except DataError:
        noise = torch.randn(count, 1, 32, 32, generator=torch.Generator().manual_seed(0))
        return noise, "random inputs"


def command_line(script: str, argv: Sequence[str] | None = None, env: str = "") -> str:
    """The command line that runs ``benchmarks/<script>`` with ``argv`` (``sys.argv[1:]`` when
    None), as the section printed beside its numbers shows it: ``env`` (e.g.
    ``"OMP_NUM_THREADS=1"``) first, then ``.venv/bin/python benchmarks/<script>`` and the
    arguments, shell-quoted. tests/test_results_doc.py checks that it parses."""
    args = list(sys.argv[1:] if argv is None else argv)
    words = [env] if env else []
    words += [".venv/bin/python", f"benchmarks/{Path(script).name}", *map(shlex.quote, args)]
    return " ".join(words)


def in_repository(path: Path) -> bool:
    """Whether ``path`` lies inside the repository (figures the docs link to must)."""
    return path.resolve().is_relative_to(ROOT)


def constant_logits(gated: GatedModel, images: torch.Tensor, pathway: Pathway) -> bool:
    """Whether the one-sample ``pathway``, applied to every image of ``images`` ``[N, ...]`` (one
    image per forward, so that no batch position rounds differently), gives bit-identical
    logits: a check that a pathway found disconnected (:mod:`neuralpath.metrics.connectivity`)
    does not depend on the input."""
    with torch.no_grad():
        logits = torch.cat([gated.forward(image.unsqueeze(0), pathway) for image in images])
    return bool((logits == logits[:1]).all())
