"""Batched DGR vs the one-image-at-a-time loop, and DGR's cost in forward-pass equivalents.

On the VGG-11 Fashion-MNIST target (``runs/vgg11-fmnist``; a same-architecture model with random
weights when the checkpoint is absent: timing does not depend on the weights), one batch of 64
test images (random inputs when the data set is missing):

* ``forward``: the plain forward of the batch (no grad);
* ``batched``: ``DGR.optimise`` on the whole batch (T = 30);
* ``loop``: ``DGR.optimise`` on each image alone, 64 calls;

each timed ``--repeats`` times, medians reported. Throughput ratio = loop / batched; cost per
batch in forward-equivalents = batched / forward. Writes the ``## DGR speed`` section of
``docs/results.md``.

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

from neuralpath.gating import GatedModel
from neuralpath.methods.dgr import DGR, DGRConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _common import load_batch, load_model, median_seconds, write_section  # noqa: E402

SECTION = "## DGR speed"
TARGET_RATIO = 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "vgg11-fmnist")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    model, model_source = load_model(args.checkpoint)
    images, data_source = load_batch(args.batch)
    gated = GatedModel.discover(model, images[:1])
    finder = DGR(gated, DGRConfig())  # released defaults: T = 30, channel gates
    finder.optimise(images[:2])  # warm-up

    def forward() -> None:
        with torch.no_grad():
            gated.forward(images)

    def batched() -> None:
        finder.optimise(images)

    def loop() -> None:
        for i in range(images.shape[0]):
            finder.optimise(images[i : i + 1])

    # Interleaved repeats, so a change in machine load hits all three alike; medians reported.
    runs = []
    for _ in range(args.repeats):
        t_forward = median_seconds(forward, 5)
        t_batched = median_seconds(batched, 1)
        t_loop = median_seconds(loop, 1)
        runs.append((t_forward, t_batched, t_loop, t_loop / t_batched))
    t_forward, t_batched, t_loop, ratio = (statistics.median(column) for column in zip(*runs))
    result = {
        "model": model_source,
        "data": data_source,
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "forward_ms": round(1e3 * t_forward, 2),
        "batched_s": round(t_batched, 3),
        "loop_s": round(t_loop, 3),
        "throughput_ratio": round(ratio, 2),
        "throughput_ratios": [round(r[3], 2) for r in runs],
        "images_per_s_batched": round(args.batch / t_batched, 1),
        "images_per_s_loop": round(args.batch / t_loop, 1),
        "forward_equivalents_measured": round(t_batched / t_forward, 1),
        "forward_equivalents_nominal": finder.forward_equivalents(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    met = "met" if ratio >= TARGET_RATIO else "NOT met"

    def per_step(seconds: float) -> float:
        return 1e3 * seconds / (args.batch * finder.config.iterations)

    print(json.dumps(result, indent=2))
    if not args.no_write:
        cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speed_dgr.py" + (
            f" --threads {args.threads}" if args.threads != 1 else ""
        )
        body = (
            f"{SECTION}\n\n"
            f"Command: `{cmd}` (CPU, {args.threads} thread(s), medians of {args.repeats} runs; "
            "repeats interleaved, forward: median of 5 per repeat; machine shared, 1-minute load "
            f"average {result['load_average_1min']} on 2 cores at the end).\n"
            f"Model: {model_source}; inputs: {args.batch} {data_source}, 1×32×32. "
            "DGR with the released defaults (channel gates, T = 30, γ = 0.05, lr 0.1, "
            "momentum 0.9, clamp [0, 5]).\n\n"
            "| measurement | value |\n|---|---|\n"
            f"| forward of the batch | {result['forward_ms']} ms |\n"
            f"| batched DGR (one call, batch {args.batch}) | {result['batched_s']} s "
            f"({result['images_per_s_batched']} img/s) |\n"
            f"| per-image loop ({args.batch} calls) | {result['loop_s']} s "
            f"({result['images_per_s_loop']} img/s) |\n"
            f"| **throughput ratio batched / loop** | **{result['throughput_ratio']}×** "
            f"(per repeat: {', '.join(map(str, result['throughput_ratios']))}; "
            f"target ≥ {TARGET_RATIO:.0f}×: {met}) |\n"
            f"| cost per batch (= per image), measured | "
            f"{result['forward_equivalents_measured']} forward-equivalents |\n"
            f"| cost per batch, nominal 3T − 1 "
            f"| {result['forward_equivalents_nominal']:.0f} |\n\n"
            "Nominal: teacher forward + T gated forwards + T − 1 backwards counted as 2 forwards "
            "each. The measured cost is lower because the backward computes no weight gradients "
            "(the spec's reference on this machine: ≈ 77 forwards for T = 30).\n"
            f"Per image and iteration: {per_step(t_loop):.2f} ms alone vs "
            f"{per_step(t_batched):.2f} ms in the batch. The batched run is compute-bound (the "
            "forward with max-pool indices and the input-gradient backward), so the ratio is set "
            "by how much more a batch-1 call costs per image (operator and Python overhead, "
            "non-blocked convolutions) than a batch-64 call.\n"
        )
        write_section(args.results, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
