"""Robustness figures for docs/results.md: bad inputs tried, faults injected, runs resumed.

Runs the robustness and fault-injection suites (tests/test_robustness.py, tests/test_faults.py,
and the resume tests of the store and GEN-CNP) and writes the ``## Robustness`` section. Every
count comes from the run or from the committed tests themselves: the case tables of
``tests/test_robustness.py``, the parametrised write faults that passed, the SIGKILL exits the
fault tests assert, the loop length and memory bound of the memory test, and the resume tests
that passed.

    .venv/bin/python benchmarks/robustness.py
"""

from __future__ import annotations

import argparse
import inspect
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(ROOT / "tests"))
from _common import command_line, write_section  # noqa: E402

SUITES = [
    "tests/test_robustness.py",
    "tests/test_faults.py",
    "tests/test_store.py::test_killed_extraction_resumes_without_loss_or_duplication",
    "tests/test_store.py::test_torchrun_two_processes_write_identical_store",
    "tests/test_gencnp.py::test_resume_equals_uninterrupted",
    "tests/test_gating.py::test_bad_inputs_are_clear_errors",
]
WRITE_FAULTS = "tests/test_robustness.py::test_write_faults_leave_previous_output_intact"
MEMORY_TEST = "test_memory_does_not_grow_over_many_calls"
KILL_TESTS = {
    "tests/test_faults.py::test_extraction_killed_twice_then_resumed_equals_uninterrupted": (
        "extraction killed twice, then resumed"
    ),
    "tests/test_faults.py::test_gencnp_training_killed_mid_epoch_resumes_to_the_same_generator": (
        "GEN-CNP training killed mid-epoch, then resumed"
    ),
}
RESUME_TESTS = {
    **KILL_TESTS,
    "tests/test_store.py::test_killed_extraction_resumes_without_loss_or_duplication": (
        "extraction interrupted in process, then resumed"
    ),
    "tests/test_gencnp.py::test_resume_equals_uninterrupted": (
        "GEN-CNP training stopped after epoch 1, then resumed"
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The command line of this benchmark (built without running anything)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    return parser


def passed_tests(stdout: str) -> set[str]:
    """Node ids reported ``PASSED`` by ``pytest -rA``."""
    return set(re.findall(r"^PASSED (\S+)", stdout, re.M))


def test_source(node: str) -> str:
    """The source of the test function a node id names (committed test code)."""
    path, name = node.split("::")
    return inspect.getsource(getattr(__import__(Path(path).stem), name.split("[")[0]))


def sigkill_exits(node: str) -> int:
    """How many SIGKILL exits the test asserts (each is a process killed without clean-up)."""
    return len(re.findall(r"returncode == -signal\.SIGKILL", test_source(node)))


def memory_loop() -> tuple[int, int]:
    """The measured loop length and the memory-growth bound (MiB) of the memory test."""
    source = test_source(f"tests/test_robustness.py::{MEMORY_TEST}")
    calls = max(int(n) for n in re.findall(r"range\((\d+)\)", source))
    bound = int(re.search(r"growth < (\d+)", source).group(1))
    return calls, bound


def table(passed: set[str]) -> list[str]:
    """The table's rows, from the committed tests and the node ids that passed."""
    import test_robustness as cases

    commands = sorted({argv[0] for _, argv, _ in cases.CLI_CASES})
    faults = sorted(n.split("[")[1].rstrip("]") for n in passed if n.startswith(WRITE_FAULTS))
    kills = sum(sigkill_exits(node) for node in KILL_TESTS if node in passed)
    resumed = [label for node, label in RESUME_TESTS.items() if node in passed]
    calls, bound = memory_loop()
    memory_passed = f"tests/test_robustness.py::{MEMORY_TEST}" in passed
    return [
        "| what | count | checked |",
        "|---|---:|---|",
        f"| bad CLI invocations | {len(cases.CLI_CASES)} | over {len(commands)} commands "
        f"({', '.join(commands)}): exit code 2, one `neuralpath: error:` line naming the problem, no "
        "traceback, no output written, inputs untouched, the pickle checkpoint never executed |",
        f"| bad library calls | {len(cases.LIBRARY_CASES)} | every registered finder × NaN/Inf/"
        "empty/wrong shape/integer dtype/meta device/out-of-range, negative, mis-sized and float "
        "targets, plus masks, sparsity, class pathways, data sets, foreign files: a "
        "`NeuralpathError`, model bit-identical with no hook left |",
        f"| write faults simulated | {len(faults)} | {', '.join(faults) or 'none passed'} during "
        "the atomic replace: clear error, previous output byte-identical, no temporary file left |",
        f"| processes killed with SIGKILL | {kills} | asserted by the passing fault tests "
        f"({', '.join(KILL_TESTS[n] for n in KILL_TESTS if n in passed) or 'none passed'}) |",
        f"| resume tests passed | {len(resumed)} of {len(RESUME_TESTS)} | "
        f"{'; '.join(resumed) or 'none'}: shards byte-identical (SHA-256) to an uninterrupted run, "
        "generator weights bit-identical; nothing lost, nothing duplicated |",
        f"| memory loop | {calls} | `find` + `attribute` calls: resident memory grows < {bound} "
        f"MiB ({'passed' if memory_passed else 'FAILED'}) |",
    ]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *SUITES],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    summary = result.stdout.strip().splitlines()[-1]
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", summary)) else 0
    failed = int(m.group(1)) if (m := re.search(r"(\d+) failed", summary)) else 0
    print(summary)
    lines = [
        "## Robustness",
        "",
        f"Command: `{command_line(__file__, argv)}` (runs "
        + ", ".join(f"`{s}`" for s in SUITES)
        + f"). Result: **{passed} passed, {failed} failed**.",
        "",
        *table(passed_tests(result.stdout)),
    ]
    if not args.no_write:
        write_section(args.results, "\n".join(lines))
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
