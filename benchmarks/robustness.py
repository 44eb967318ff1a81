"""Robustness figures for docs/results.md: bad inputs tried, faults injected, runs resumed.

Runs the robustness and fault-injection suites (tests/test_robustness.py, tests/test_faults.py,
and the resume tests of the store and GEN-CNP) and writes the ``## Robustness`` section with
the counts taken from the test tables themselves.

    .venv/bin/python benchmarks/robustness.py
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))
from _common import write_section  # noqa: E402

SUITES = [
    "tests/test_robustness.py",
    "tests/test_faults.py",
    "tests/test_store.py::test_killed_extraction_resumes_without_loss_or_duplication",
    "tests/test_store.py::test_torchrun_two_processes_write_identical_store",
    "tests/test_gencnp.py::test_resume_equals_uninterrupted",
    "tests/test_gating.py::test_bad_inputs_are_clear_errors",
]


def main() -> None:
    import test_robustness as table

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    summary = result.stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    failed = int(m.group(1)) if (m := re.search(r"(\d+) failed", summary)) else 0
    print(summary)
    commands = sorted({argv[0] for _, argv, _ in table.CLI_CASES})
    lines = [
        "## Robustness",
        "",
        "Command: `.venv/bin/python benchmarks/robustness.py` (runs "
        + ", ".join(f"`{s}`" for s in SUITES)
        + f"). Result: **{passed} passed, {failed} failed**.",
        "",
        "| what | count | checked |",
        "|---|---:|---|",
        f"| bad CLI invocations | {len(table.CLI_CASES)} | over {len(commands)} commands "
        f"({', '.join(commands)}): exit code 2, one `neuralpath: error:` line naming the problem, no "
        "traceback, no output written, inputs untouched, the pickle checkpoint never executed |",
        f"| bad library calls | {len(table.LIBRARY_CASES)} | every registered finder × NaN/Inf/empty/"
        "wrong shape/integer dtype/meta device/out-of-range, negative, mis-sized and float targets, "
        "plus masks, sparsity, class pathways, data sets, foreign files: a `NeuralpathError`, "
        "model bit-identical with no hook left |",
        "| write faults simulated | 2 | disk full (ENOSPC) and read-only file system (EROFS) during "
        "the atomic replace: clear error, previous output byte-identical, no temporary file left |",
        "| processes killed with SIGKILL | 3 | extraction killed after shard 2 and again after shard 4, "
        "GEN-CNP training killed 40 images into epoch 2 |",
        "| runs resumed | 5 | the killed extraction (twice), an extraction interrupted in process, the "
        "killed GEN-CNP training and a GEN-CNP training stopped after epoch 1: shards byte-identical "
        "(SHA-256) to an uninterrupted run, generator weights bit-identical; nothing lost, nothing "
        "duplicated |",
        "| memory loop | 150 | `find` + `attribute` calls: resident memory grows < 25 MiB |",
    ]
    write_section(ROOT / "docs" / "results.md", "\n".join(lines))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
