"""Target models: the two classifiers every other section explains, and what training them costs.

For VGG-11 and AlexNet on Fashion-MNIST (``--archs``): trains the target with
:func:`neuralpath.train.train_target` (the recipe and defaults of ``neuralpath train``, ``--epochs``,
``--seed``) into ``--runs/<arch>-fmnist`` unless a checkpoint is already there (``--retrain``
trains it again), and saves the training summary (per-epoch test accuracy, wall time) as
``--runs/targets/<arch>-fmnist.json``. Then, always, a micro-benchmark: the median time of one
training step (AdamW, batch ``--batch-size``, random inputs) at each width of ``--widths`` in
both memory layouts. Writes the ``## Target models`` section of ``docs/results.md`` from the
checkpoints, the saved summaries and the micro-benchmark; a checkpoint this script did not train
has no summary, and the section says so instead of showing its history.

    .venv/bin/python benchmarks/targets.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from neuralpath.checkpoint import load_target
from neuralpath.data import load_dataset
from neuralpath.errors import DataError
from neuralpath.gating import GatedModel
from neuralpath.io import write_json_atomic
from neuralpath.models import ALEXNET_CONFIG, VGG11_CONFIG, build_model, default_width
from neuralpath.train import DEFAULT_LR, WEIGHT_DECAY, count_parameters

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _common import command_line, shown, write_section  # noqa: E402

SECTION = "## Target models"
DATA = "fashion-mnist"
CONFIGS = {"vgg11": VGG11_CONFIG, "alexnet": ALEXNET_CONFIG}
NAMES = {"vgg11": "VGG-11 (BN)", "alexnet": "AlexNet"}


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark (built without running anything)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["vgg11", "alexnet"], choices=list(CONFIGS))
    parser.add_argument("--runs", type=Path, default=ROOT / "runs", help="checkpoint folder")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--retrain", action="store_true", help="train again even when a checkpoint exists"
    )
    parser.add_argument(
        "--widths",
        type=float,
        nargs="+",
        default=[0.25, 0.5],
        help="widths whose training step is timed (default 0.25 0.5)",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (10)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for the step timings (default 1)"
    )
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser


def ensure_trained(arch: str, args: argparse.Namespace) -> tuple[Path, dict[str, Any] | None]:
    """The checkpoint of ``arch`` and its saved training summary (``None`` when this script did
    not train it)."""
    from neuralpath.train import train_target

    checkpoint = args.runs / f"{arch}-fmnist"
    summary_path = args.runs / "targets" / f"{arch}-fmnist.json"
    if args.retrain or not (checkpoint / "meta.json").exists():
        result = train_target(
            arch,
            DATA,
            epochs=args.epochs,
            seed=args.seed,
            device="cpu",
            batch_size=args.batch_size,
            out_dir=checkpoint,
            progress=False,
        )
        summary = {**result.summary(), "load_average_1min": round(os.getloadavg()[0], 2)}
        write_json_atomic(summary_path, summary)
    if not summary_path.exists():
        return checkpoint, None
    summary = json.loads(summary_path.read_text())
    meta = json.loads((checkpoint / "meta.json").read_text())
    # a summary describes the checkpoint only while the checkpoint is the one it was written for
    same = meta.get("test_accuracy") == summary.get("test_accuracy") and meta.get(
        "epochs"
    ) == summary.get("epochs")
    return checkpoint, summary if same else None


def step_ms(arch: str, width: float, channels_last: bool, args: argparse.Namespace) -> float:
    """Median CPU milliseconds of this process for one training step (forward, backward, AdamW)
    on random inputs: with one thread, the work the step does, whatever other jobs share the
    machine (they inflate wall-clock times at random)."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, in_channels=1, input_size=32, width=width).train()
    images = torch.randn(args.batch_size, 1, 32, 32)
    labels = torch.randint(0, 10, (args.batch_size,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=DEFAULT_LR, weight_decay=WEIGHT_DECAY)
    times = []
    for step in range(args.steps + 2):  # two warm-up steps
        start = time.process_time()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 2:
            times.append(time.process_time() - start)
    return 1e3 * statistics.median(times)


def describe(checkpoint: Path) -> dict[str, Any]:
    """Width, parameters, gated layers and test accuracy of a checkpoint."""
    target = load_target(checkpoint, "cpu")
    gated = GatedModel.discover(target.model, target.example_input())
    classifier = getattr(target.model, "classifier", None)
    return {
        "width": target.meta.arch_args.get("width"),
        "parameters": count_parameters(target.model),
        "sites": [s.units for s in gated.sites],
        "test_accuracy": target.meta.test_accuracy,
        "epochs": target.meta.epochs,
        "seed": target.meta.seed,
        "mean": target.meta.mean,
        "std": target.meta.std,
        "classifier": [] if classifier is None else [layer_text(m) for m in classifier],
    }


def layer_text(module: torch.nn.Module) -> str:
    """``Linear(128, 10)``, ``ReLU``, ``Dropout(0.5)``: one classifier layer, briefly."""
    if isinstance(module, torch.nn.Linear):
        return f"Linear({module.in_features}, {module.out_features})"
    if isinstance(module, torch.nn.Dropout):
        return f"Dropout({module.p:g})"
    return type(module).__name__


def target_row(arch: str, facts: dict[str, Any], summary: dict[str, Any] | None) -> str:
    sites = facts["sites"]
    layers = f"{len(sites)} conv ReLUs, {sum(sites)} ({'-'.join(map(str, sites))})"
    if summary is None:
        history = f"**{100 * facts['test_accuracy']:.2f} %** (per epoch: not recorded)"
        wall = epoch = "not recorded"
    else:
        accs = [100 * h["test_accuracy"] for h in summary["history"]]
        history = " / ".join(f"{a:.2f}" for a in accs[:-1])
        history = (history + " / " if history else "") + f"**{accs[-1]:.2f} %**"
        seconds = summary["wall_time_s"]
        wall = f"{int(seconds // 60)} min {seconds % 60:02.0f} s"
        if "load_average_1min" in summary:
            wall += f" (load {summary['load_average_1min']})"
        epoch = " / ".join(f"{h['seconds']:.1f}" for h in summary["history"]) + " s"
    return (
        f"| {NAMES[arch]}, `{facts['checkpoint']}` | {facts['width']:g} | "
        f"{facts['parameters']:,} | {layers} | {history} | {wall} | {epoch} |"
    )


def data_text(facts: dict[str, Any]) -> str:
    """Sizes of the data set's splits, when it is installed."""
    try:
        sizes = [len(load_dataset(DATA, split)) for split in ("train", "test")]
    except DataError:
        return "Fashion-MNIST"
    mean = ", ".join(f"{m:.4f}" for m in facts["mean"])
    std = ", ".join(f"{s:.4f}" for s in facts["std"])
    return (
        f"Fashion-MNIST ({sizes[0]:,} train / {sizes[1]:,} test), 28×28 images zero-padded to "
        f"32×32 and normalised with mean {mean}, std {std}"
    )


def report(
    targets: dict[str, dict[str, Any]],
    timings: dict[str, dict[str, dict[str, float]]],
    args: argparse.Namespace,
    argv: list[str] | None,
) -> str:
    first = next(iter(targets.values()))
    cores = os.cpu_count() or 1
    commands = [
        f"neuralpath train --arch {arch} --data {DATA} --epochs {facts['epochs']} "
        f"--out {facts['checkpoint']} --seed {facts['seed']}"
        for arch, facts in targets.items()
    ]
    lines = [
        f"{SECTION}\n",
        f"Command: `{command_line(__file__, argv)}` (trains a target only when its checkpoint is "
        "absent or with `--retrain`, with the recipe of the equivalent `neuralpath train` "
        f"commands below; CPU, {cores} cores, torch {torch.__version__}, "
        f"{args.threads} thread(s) for the step timings).\n",
        "```",
        *commands,
        "```",
        "",
        f"The two target models every other section explains, trained with the default recipe of "
        f"`neuralpath.train`: AdamW (weight decay {WEIGHT_DECAY:g}), one-cycle learning rate "
        f"peaking at {DEFAULT_LR:g}, batch {args.batch_size}, cross-entropy, no augmentation, "
        f"channels-last. Data: {data_text(first)}.",
        "",
        "| model | width | parameters | gated layers (channels) | test acc. after each epoch | "
        "wall time | seconds per epoch |",
        "|---|---:|---:|---|---|---:|---:|",
        *(target_row(arch, facts, facts["summary"]) for arch, facts in targets.items()),
    ]
    if any(facts["summary"] is None for facts in targets.values()):
        lines += [
            "",
            "Per-epoch accuracies and wall times are recorded only when this script trains the "
            f"target (regenerate with: `{command_line(__file__, [*(argv or []), '--retrain'])}`).",
        ]
    widths = sorted({w for per_arch in timings.values() for w in per_arch})
    lines += [
        "",
        f"One training step (batch {args.batch_size}, median of {args.steps} after 2 warm-up "
        f"steps, random inputs, {args.threads} thread(s)): CPU time of this process "
        "(`time.process_time`, which other jobs on the machine do not inflate; 1-minute load "
        f"average {os.getloadavg()[0]:.2f} when written), ms, channels-last / NCHW, with the "
        "parameter count:",
        "",
        "| model | " + " | ".join(f"width {w:g}" for w in widths) + " |",
        "|---|" + "---:|" * len(widths),
    ]
    for arch, per_width in timings.items():
        cells = [
            f"{t['channels_last']:.1f} / {t['nchw']:.1f} ({t['parameters']:,})"
            for _, t in sorted(per_width.items())
        ]
        lines.append(f"| {NAMES[arch]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Architectures (`neuralpath.models`): torchvision's module layout (`features`, `avgpool`, "
        "`classifier`), 3×3 convolutions, every conv followed by an `nn.ReLU` module, 2×2 max "
        "pools with `ceil_mode` (so 28 px inputs also work), channels multiplied by the width.",
    ]
    for arch, facts in targets.items():
        plan = "-".join(map(str, CONFIGS[arch]))
        lines.append(
            f"- **{NAMES[arch]}**: {plan} at width 1"
            + (", with BatchNorm" if arch == "vgg11" else ", no BatchNorm")
            + f"; classifier at width {facts['width']:g}: `{' → '.join(facts['classifier'])}`."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    targets: dict[str, dict[str, Any]] = {}
    for arch in args.archs:
        checkpoint, summary = ensure_trained(arch, args)
        targets[arch] = {**describe(checkpoint), "checkpoint": shown(checkpoint)}
        targets[arch]["summary"] = summary
    timings: dict[str, dict[str, dict[str, float]]] = {}
    for arch in args.archs:
        timings[arch] = {}
        for width in sorted({*args.widths, default_width(arch)}):
            model = build_model(arch, num_classes=10, in_channels=1, input_size=32, width=width)
            timings[arch][width] = {
                "channels_last": step_ms(arch, width, True, args),
                "nchw": step_ms(arch, width, False, args),
                "parameters": count_parameters(model),
            }
    print(json.dumps({"targets": targets, "timings": timings}, indent=2, default=str))
    body = report(targets, timings, args, argv)
    print(body)
    if not args.no_write:
        write_section(args.results, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
