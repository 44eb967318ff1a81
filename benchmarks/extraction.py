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
from _common import command_line, write_section  # noqa: E402

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


def record_columns(store: str) -> tuple[float, list[str]]:
    """Bytes per sample of the first shard's columns besides the packed pathway, and their
    names (read from the store just written, so the text follows the store format)."""
    from safetensors import safe_open

    first = sorted(Path(store).glob("shard-*.safetensors"))[0]
    with safe_open(str(first), "pt") as shard:
        rows = shard.get_slice("packed").get_shape()[0]
        # safe_open has keys() but is not iterable itself.
        names = [key for key in shard.keys() if key != "packed"]  # noqa: SIM118
        size = sum(t.numel() * t.element_size() for t in map(shard.get_tensor, names))
    return size / max(1, rows), names


SHARD_SIZE = 1024
BATCH_SIZE = 128
SPARSITY = 0.9


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark (built without running anything)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="runs/vgg11-fmnist")
    parser.add_argument("--generator", help="GEN-CNP generator of the target (adds gencnp)")
    parser.add_argument("--limit", type=int, help="samples (default: the whole split)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
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
                str(SPARSITY),
                "--data",
                "fashion-mnist",
                "--split",
                "test",
                "--no-progress",
                "--device",
                "cpu",
                "--shard-size",
                str(SHARD_SIZE),
                "--batch-size",
                str(BATCH_SIZE),
            ]
            if args.generator:
                argv += ["--generator", args.generator]
            if args.limit:
                argv += ["--limit", str(args.limit)]
            one_s, one = _run([*argv, "--out", f"{tmp}/{method}-1"], 1)
            two_s, two = _run([*argv, "--out", f"{tmp}/{method}-2"], 2)
            identical = store_digest(f"{tmp}/{method}-1") == store_digest(f"{tmp}/{method}-2")
            columns = record_columns(f"{tmp}/{method}-1")
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
    cores = os.cpu_count() or 1
    lines = [
        f"Command: `{command_line(__file__, argv)}` (CPU, OMP_NUM_THREADS=1 per process, shards of "
        f"{SHARD_SIZE}, batch {BATCH_SIZE}, sparsity {SPARSITY} for cp-mct; the {cores}-core "
        "machine may have been shared with other jobs, so throughputs are indicative).",
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
    column_bytes, column_names = columns
    lines += [
        "",
        "Bytes per sample count the whole shard files: the bit-packed pathway "
        f"(units / 8 bytes) plus {len(column_names)} per-sample columns "
        f"({', '.join(f'`{name}`' for name in column_names)}: {column_bytes:.0f} bytes) and the "
        "safetensors header. Wall times include process start-up and model loading.",
    ]
    write_section(ROOT / "docs" / "results.md", "## Extraction\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
