"""Batched DGR vs the one-image-at-a-time loop, and DGR's cost in forward-pass equivalents.

On the VGG-11 Fashion-MNIST target (``runs/vgg11-fmnist``; a same-architecture model with random
weights when the checkpoint is absent: timing does not depend on the weights), one batch of 64
test images (random inputs when the data set is missing), for each thread count (default: one
core, then every core of the machine):

* ``forward``: the plain forward of the batch (no grad, the model's own NCHW layout);
* ``batched``: ``DGR.optimise`` on the whole batch (released defaults, T = 30; channels-last, the
  default ``memory_format="auto"``);
* ``batched NCHW``: the same with ``memory_format="contiguous"``, to show what the layout buys;
* ``loop``: ``DGR.optimise`` on each image alone, 64 calls (same defaults);

repeats interleaved, medians reported. Throughput ratio = loop / batched; cost per batch in
forward-equivalents = batched / forward. The target (batched ≥ 10× the loop) is judged with every
core in use, torch's default. Writes the ``## DGR speed`` section of ``docs/results.md``.

    .venv/bin/python benchmarks/speed_dgr.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

from neuralpath.gating import GatedModel, channels_last
from neuralpath.methods.dgr import DGR, DGRConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    command_line,
    load_batch,
    load_model,
    median_seconds,
    write_section,
)

SECTION = "## DGR speed"
TARGET_RATIO = 10.0


def forward_flops(model: torch.nn.Module, images: torch.Tensor) -> int:
    """Multiply-adds of the convolutions and linear layers of one forward of ``images``, × 2."""
    macs = 0

    def count(module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, torch.nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            macs += output.numel() * kernel * module.in_channels // module.groups
        elif isinstance(module, torch.nn.Linear):
            macs += output.numel() * module.in_features

    handles = [m.register_forward_hook(count) for m in model.modules()]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return 2 * macs


def matmul_gflops() -> float:
    """Single-precision 1024² matrix-multiply rate, the machine's practical compute ceiling."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return 2 * 1024**3 / median_seconds(lambda: a @ b, 20) / 1e9


def measure(
    gated: GatedModel, images: torch.Tensor, threads: int, repeats: int, flops: int
) -> dict:
    """Timings of one thread count (interleaved repeats, medians)."""
    torch.set_num_threads(threads)
    finder = DGR(gated, DGRConfig())
    finder_nchw = DGR(gated, DGRConfig(memory_format="contiguous"))
    finder.optimise(images[:2])  # warm-up
    finder_nchw.optimise(images[:2])

    images_cl = channels_last(images)

    def forward() -> None:
        with torch.no_grad():
            gated.forward(images)

    def forward_cl() -> None:
        with torch.no_grad():
            gated.forward(images_cl)

    def loop() -> None:
        for i in range(images.shape[0]):
            finder.optimise(images[i : i + 1])

    runs = []
    for _ in range(repeats):
        runs.append(
            (
                median_seconds(forward, 5),
                median_seconds(forward_cl, 5),
                median_seconds(lambda: finder.optimise(images), 1),
                median_seconds(lambda: finder_nchw.optimise(images), 1),
                median_seconds(loop, 1),
            )
        )
    t_forward, t_forward_cl, t_batched, t_nchw, t_loop = (
        statistics.median(c) for c in zip(*runs, strict=True)
    )
    batch = images.shape[0]
    return {
        "threads": threads,
        "forward_ms": round(1e3 * t_forward, 2),
        "forward_cl_ms": round(1e3 * t_forward_cl, 2),
        "forward_cl_gflops": round(flops / t_forward_cl / 1e9, 1),
        "matmul_gflops": round(matmul_gflops(), 1),
        "batched_s": round(t_batched, 3),
        "batched_nchw_s": round(t_nchw, 3),
        "loop_s": round(t_loop, 3),
        "throughput_ratio": round(t_loop / t_batched, 2),
        "throughput_ratios": [round(r[4] / r[2], 2) for r in runs],
        "channels_last_speedup": round(t_nchw / t_batched, 2),
        "images_per_s_batched": round(batch / t_batched, 1),
        "images_per_s_loop": round(batch / t_loop, 1),
        "forward_equivalents_measured": round(t_batched / t_forward, 1),
        "ms_per_image_iteration_loop": round(1e3 * t_loop / (batch * finder.config.iterations), 2),
        "ms_per_image_iteration_batched": round(
            1e3 * t_batched / (batch * finder.config.iterations), 3
        ),
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark (built without running anything)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "vgg11-fmnist")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    cores = os.cpu_count() or 1
    parser.add_argument(
        "--threads", type=int, nargs="+", default=sorted({1, cores}), help="thread counts"
    )
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cores = os.cpu_count() or 1

    model, model_source = load_model(args.checkpoint)
    images, data_source = load_batch(args.batch)
    gated = GatedModel.discover(model, images[:1])
    flops = forward_flops(model, images)
    rows = [measure(gated, images, threads, args.repeats, flops) for threads in args.threads]
    judged = max(rows, key=lambda row: row["threads"])
    fastest_loop = min(rows, key=lambda row: row["loop_s"])
    fastest_batch = min(rows, key=lambda row: row["batched_s"])
    best_ratio = round(fastest_loop["loop_s"] / fastest_batch["batched_s"], 2)
    met = "met" if min(judged["throughput_ratio"], best_ratio) >= TARGET_RATIO else "NOT met"
    result = {
        "model": model_source,
        "data": data_source,
        "batch": args.batch,
        "repeats": args.repeats,
        "cores": cores,
        "rows": rows,
        "forward_gflop": round(flops / 1e9, 3),
        "forward_equivalents_nominal": DGR(gated).forward_equivalents(),
        "fastest_vs_fastest_ratio": best_ratio,
        "target": met,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result, indent=2))
    if args.no_write:
        return 0
    table = [
        "| threads | forward of the batch, NCHW / channels-last (GFLOP/s of the latter; "
        "1024² matmul GFLOP/s) "
        "| batched DGR (channels-last) | batched DGR (NCHW) "
        "| per-image loop | **throughput ratio batched / loop** | ms per image "
        "and iteration (loop / batch) | cost per batch in forward-equivalents |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        table.append(
            f"| {row['threads']} | {row['forward_ms']} / {row['forward_cl_ms']} ms "
            f"({row['forward_cl_gflops']}; {row['matmul_gflops']}) | {row['batched_s']} s "
            f"({row['images_per_s_batched']} img/s) | {row['batched_nchw_s']} s "
            f"(channels-last {row['channels_last_speedup']}× faster) | {row['loop_s']} s "
            f"({row['images_per_s_loop']} img/s) | **{row['throughput_ratio']}×** "
            f"(per repeat {', '.join(map(str, row['throughput_ratios']))}) "
            f"| {row['ms_per_image_iteration_loop']} / {row['ms_per_image_iteration_batched']} "
            f"| {row['forward_equivalents_measured']} |"
        )
    threads_flag = " ".join(map(str, args.threads))
    config = DGRConfig()
    shape = "×".join(map(str, images.shape[1:]))
    by_threads = sorted(rows, key=lambda row: row["threads"])
    ratios = [row["throughput_ratio"] for row in by_threads]
    if len(rows) < 2:
        trend = ""
    elif all(a < b for a, b in zip(ratios, ratios[1:], strict=False)):
        trend = (
            " More cores speed up the compute-bound batch more than the overhead-bound loop: the "
            f"ratio grows with the thread count here ({' → '.join(map(str, ratios))}×)."
        )
    else:
        trend = (
            " The ratio does not grow with the thread count in this run "
            f"({' → '.join(map(str, ratios))}×)."
        )
    body = (
        f"{SECTION}\n\n"
        f"Command: `{command_line(__file__, argv)}` (CPU with {cores} cores; thread "
        f"counts {threads_flag}; medians of {args.repeats} interleaved repeats, forward: median of "
        f"5 per repeat; 1-minute load average {result['load_average_1min']} at the end).\n"
        f"Model: {model_source}; inputs: {args.batch} {data_source}, {shape}. DGR with the "
        f"released defaults ({config.granularity} gates, T = {config.iterations}, "
        f"γ = {config.gamma:g}, lr {config.lr:g}, momentum {config.momentum:g}, clamp "
        f"[0, {config.clamp_max:g}]); "
        'batch and loop both run the library\'s default `memory_format="auto"` '
        "(channels-last).\n\n" + "\n".join(table) + "\n\n"
        f"**Target (batched ≥ {TARGET_RATIO:.0f}× the per-image loop): {met}.** With torch's "
        f"default of all {judged['threads']} threads for both: {judged['throughput_ratio']}×; "
        f"each at its own fastest thread count (loop: {fastest_loop['threads']}, batch: "
        f"{fastest_batch['threads']}): {best_ratio}×; the verdict takes the smaller. "
        "Nominal cost per batch 3T = "
        f"{result['forward_equivalents_nominal']:.0f} forward-equivalents (teacher forward + T "
        "gated forwards + T − 1 backwards counted as 2 forwards each + the binary pathway's "
        "forward, `DGR.forward_equivalents`); the measured cost, "
        "counted against the plain NCHW forward, is "
        f"{judged['forward_equivalents_measured']} at {judged['threads']} threads"
        + (
            " (lower: the backward computes no weight gradients).\n\n"
            if judged["forward_equivalents_measured"] < result["forward_equivalents_nominal"]
            else ".\n\n"
        )
        + f"The forward does {result['forward_gflop']} GFLOP per batch; the second column compares "
        "the channels-last forward's rate with a 1024² single-precision matrix multiply, the "
        "practical compute ceiling. "
        f"At batch {args.batch} the batch is compute-bound, so the ratio is set by the per-image "
        "overhead of a batch-1 call (operator dispatch, hooks, Python bookkeeping)."
        f"{trend} Running the optimisation channels-last (the default) avoids "
        "PyTorch's slow NCHW max-pool kernel on CPU; torch's own "
        "`contiguous(memory_format=channels_last)` is a no-op for one input channel, so the "
        "inputs are copied with `neuralpath.gating.channels_last`.\n"
    )
    write_section(args.results, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
