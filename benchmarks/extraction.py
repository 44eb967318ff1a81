"""Data-set-wide extraction: the whole Fashion-MNIST test split into a pathway store.

For each method: store size in bytes per sample, throughput (images/s) with one process, and
a 2-process ``torchrun`` extraction whose shards must be byte-identical to the single process.
Writes the ``## Extraction`` section of docs/results.md.

    .venv/bin/python benchmarks/extraction.py [--target runs/vgg11-fmnist] [--generator GDIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str], processes: int) -> tuple[float, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = (
        [sys.executable, "-m", "neuralpath"]
        if processes == 1
        else [
            str(Path(sys.executable).with_name("torchrun")),
            "--standalone",
            f"--nproc_per_node={processes}",
            "-m",
            "neuralpath",
        ]
    )
    started = time.perf_counter()
    result = subprocess.run(
        [*launcher, *argv], env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"extraction failed:\n{result.stderr[-3000:]}")
    return seconds, json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="runs/vgg11-fmnist")
    parser.add_argument("--generator", help="GEN-CNP generator of the target (adds gencnp)")
    parser.add_argument("--limit", type=int, help="samples (default: the whole split)")
    args = parser.parse_args()
    from neuralpath.store import store_digest

    methods = ["cp-mct"] + (["gencnp"] if args.generator else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            argv = [
                "extract",
                "--checkpoint",
                args.target,
                "--method",
                method,
                "--sparsity",
                "0.9",
                "--data",
                "fashion-mnist",
                "--split",
                "test",
                "--no-progress",
                "--device",
                "cpu",
                "--shard-size",
                "1024",
                "--batch-size",
                "128",
            ]
            if args.generator:
                argv += ["--generator", args.generator]
            if args.limit:
                argv += ["--limit", str(args.limit)]
            one_s, one = _run([*argv, "--out", f"{tmp}/{method}-1"], 1)
            two_s, two = _run([*argv, "--out", f"{tmp}/{method}-2"], 2)
            identical = store_digest(f"{tmp}/{method}-1") == store_digest(f"{tmp}/{method}-2")
            rows.append(
                (
                    method,
                    one["n"],
                    one["bytes_per_sample"],
                    one["n"] / one["seconds"],
                    one_s,
                    two_s,
                    one["kept_fraction_mean"],
                    identical,
                )
            )
            print(rows[-1], flush=True)
    lines = [
        f"Command: `.venv/bin/python benchmarks/extraction.py --target {args.target}"
        + (f" --generator {args.generator}" if args.generator else "")
        + "` (CPU, OMP_NUM_THREADS=1 per "
        "process, shards of 1024, batch 128, sparsity 0.9 for cp-mct; the 2-core machine was shared "
        "with other jobs, so throughputs are indicative).",
        "",
        "| method | samples | bytes / sample | images/s (extraction, 1 process) | wall s, 1 process | "
        "wall s, torchrun ×2 | kept fraction | 2 processes byte-identical |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for method, n, size, rate, one_s, two_s, kept, same in rows:
        lines.append(
            f"| {method} | {n} | {size:.1f} | {rate:.0f} | {one_s:.1f} | {two_s:.1f} | "
            f"{kept:.3f} | {'yes' if same else 'NO'} |"
        )
    lines += [
        "",
        "Bytes per sample count the whole shard files: the bit-packed pathway "
        "(units / 8 bytes) plus id, label, prediction and kept fraction (28 bytes) and the "
        "safetensors header. Wall times include process start-up and model loading.",
    ]
    write_section(ROOT / "docs" / "results.md", "## Extraction\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
