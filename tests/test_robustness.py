"""Robustness: a table of bad inputs for every CLI command and public entry point.

Each case must give a clear error (CLI: exit code 2, one ``neuralpath: error:`` line, no
traceback), leave the target model unchanged and leave no half-written file behind. Fault cases
simulate a full disk and a read-only file system during a write. ``benchmarks/robustness.py``
counts these cases for ``docs/results.md``.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from neuralpath.checkpoint import TargetMeta, load_target, save_target
from neuralpath.cli import main
from neuralpath.data import load_dataset
from neuralpath.errors import NeuralpathError
from neuralpath.methods import FinderOptions, build_finder, finder_names
from neuralpath.models import build_model
from neuralpath.pathway import ClassPathways, Pathway, global_percentile
from neuralpath.runner import open_target

from contract import assert_unchanged, snapshot

MARKER = "pwned.txt"


class _RunsCodeWhenUnpickled:
    """A 'checkpoint' that would create ``MARKER`` if anything unpickled it."""

    def __init__(self, directory: Path):
        self.path = str(directory / MARKER)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (Path(self.path),))


def _meta(width: float) -> TargetMeta:
    return TargetMeta(
        arch="vgg11",
        arch_args={"num_classes": 4, "in_channels": 3, "input_size": 32, "width": width},
        data="synthetic",
        input_shape=(3, 32, 32),
        num_classes=4,
        class_names=["circle", "square", "triangle", "cross"],
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A good target, broken copies of it, a generator, and a foreign generator."""
    root = tmp_path_factory.mktemp("robust")
    torch.manual_seed(0)
    good = save_target(
        root / "target", build_model("vgg11", **_meta(0.125).arch_args).eval(), _meta(0.125)
    )
    wide = save_target(
        root / "wide", build_model("vgg11", **_meta(0.25).arch_args).eval(), _meta(0.25)
    )
    paths = {"target": good, "wide": wide, "root": root}
    truncated = root / "truncated"
    truncated.mkdir()
    (truncated / "meta.json").write_bytes((good / "meta.json").read_bytes())
    data = (good / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 3])
    paths["truncated"] = truncated
    corrupt = root / "corrupt-meta"
    corrupt.mkdir()
    (corrupt / "model.safetensors").write_bytes(data)
    (corrupt / "meta.json").write_text('{"format": "neuralpath.target", "arch": ')
    paths["corrupt-meta"] = corrupt
    evil = root / "pickled"
    evil.mkdir()
    (evil / "meta.json").write_bytes((good / "meta.json").read_bytes())
    (evil / "model.safetensors").write_bytes(pickle.dumps(_RunsCodeWhenUnpickled(evil)))
    paths["pickled"] = evil
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "meta.json").write_text(json.dumps({"format": "something.else", "version": 1}))
    (foreign / "model.safetensors").write_bytes(data)
    paths["foreign"] = foreign
    assert (
        main(
            [
                "fit-gencnp",
                "--checkpoint",
                str(wide),
                "--data",
                "synthetic",
                "--epochs",
                "1",
                "--limit",
                "64",
                "--batch-size",
                "32",
                "--out",
                str(root / "gen-wide"),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    paths["gen-wide"] = root / "gen-wide"
    notstore = root / "notstore"
    notstore.mkdir()
    (notstore / "keep.txt").write_text("user data")
    paths["notstore"] = notstore
    return paths


# (id, argv template, message regex). {name} is replaced by files[name]; {out} by a fresh path.
CLI_CASES: list[tuple[str, list[str], str]] = [
    ("train-unknown-data", ["train", "--data", "nope", "--out", "{out}"], "unknown data set"),
    (
        "train-unknown-arch",
        ["train", "--arch", "resnet9000", "--data", "synthetic", "--out", "{out}"],
        "resnet9000",
    ),
    (
        "train-zero-epochs",
        ["train", "--data", "synthetic", "--epochs", "0", "--out", "{out}"],
        "epochs",
    ),
    ("info-missing", ["info", "{root}/missing", "--json"], "not found"),
    ("info-corrupt-meta", ["info", "{corrupt-meta}", "--json"], "corrupt JSON"),
    (
        "find-missing-checkpoint",
        [
            "find",
            "--checkpoint",
            "{root}/missing",
            "--method",
            "cp-mct",
            "--data",
            "synthetic",
            "--out",
            "{out}",
        ],
        "not found",
    ),
    (
        "find-truncated-checkpoint",
        [
            "find",
            "--checkpoint",
            "{truncated}",
            "--method",
            "cp-mct",
            "--data",
            "synthetic",
            "--out",
            "{out}",
        ],
        "truncated",
    ),
    (
        "find-pickled-checkpoint",
        [
            "find",
            "--checkpoint",
            "{pickled}",
            "--method",
            "cp-mct",
            "--data",
            "synthetic",
            "--out",
            "{out}",
        ],
        "safetensors",
    ),
    (
        "find-foreign-checkpoint",
        [
            "find",
            "--checkpoint",
            "{foreign}",
            "--method",
            "cp-mct",
            "--data",
            "synthetic",
            "--out",
            "{out}",
        ],
        "not a neuralpath.target",
    ),
    (
        "find-sparsity-above-1",
        [
            "find",
            "--checkpoint",
            "{target}",
            "--method",
            "cp-mct",
            "--sparsity",
            "1.5",
            "--data",
            "synthetic",
            "--out",
            "{out}",
        ],
        "sparsity",
    ),
    (
        "find-sparsity-negative",
        [
            "find",
            "--checkpoint",
            "{target}",
            "--method",
            "random",
            "--sparsity",
            "-0.1",
            "--data",
            "synthetic",
            "--out",
            "{out}",
        ],
        "sparsity",
    ),
    (
        "find-sparsity-nan",
        [
            "find",
            "--checkpoint",
            "{target}",
            "--method",
            "cp-mct",
            "--sparsity",
            "nan",
            "--data",
            "synthetic",
            "--out",
            "{out}",
        ],
        "sparsity",
    ),
    (
        "find-unknown-method",
        [
            "find",
            "--checkpoint",
            "{target}",
            "--method",
            "magic",
            "--data",
            "synthetic",
            "--out",
            "{out}",
        ],
        "unknown method",
    ),
    (
        "find-unknown-setting",
        [
            "find",
            "--checkpoint",
            "{target}",
            "--method",
            "dgr",
            "--set",
            "temperature=2",
            "--data",
            "synthetic",
            "--limit",
            "4",
            "--out",
            "{out}",
        ],
        "no setting temperature",
    ),
    (
        "find-bad-setting-value",
        [
            "find",
            "--checkpoint",
            "{target}",
            "--method",
            "dgr",
            "--set",
            "gamma=-1",
            "--data",
            "synthetic",
            "--limit",
            "4",
            "--out",
            "{out}",
        ],
        "gamma must be >= 0",
    ),
    (
        "find-setting-without-value",
        [
            "find",
            "--checkpoint",
            "{target}",
            "--method",
            "greedy",
            "--set",
            "steps",
            "--data",
            "synthetic",
            "--limit",
            "4",
            "--out",
            "{out}",
        ],
        "KEY=VALUE",
    ),
    (
        "find-setting-wrong-type",
        [
            "find",
            "--checkpoint",
            "{target}",
            "--method",
            "cp-intgrad",
            "--set",
            "steps=many",
            "--data",
            "synthetic",
            "--limit",
            "4",
            "--out",
            "{out}",
        ],
        "steps must be (a positive integer|an integer)",
    ),
    (
        "find-gencnp-no-generator",
        [
            "find",
            "--checkpoint",
            "{target}",
            "--method",
            "gencnp",
            "--data",
            "synthetic",
            "--limit",
            "4",
            "--out",
            "{out}",
        ],
        "generator",
    ),
    (
        "find-generator-other-target",
        [
            "find",
            "--checkpoint",
            "{target}",
            "--method",
            "gencnp",
            "--generator",
            "{gen-wide}",
            "--data",
            "synthetic",
            "--limit",
            "4",
            "--out",
            "{out}",
        ],
        "target",
    ),
    (
        "find-zero-limit",
        [
            "find",
            "--checkpoint",
            "{target}",
            "--method",
            "cp-mct",
            "--data",
            "synthetic",
            "--limit",
            "0",
            "--out",
            "{out}",
        ],
        "limit",
    ),
    (
        "find-unknown-data",
        [
            "find",
            "--checkpoint",
            "{target}",
            "--method",
            "cp-mct",
            "--data",
            "imagenet-on-mars",
            "--out",
            "{out}",
        ],
        "unknown data set",
    ),
    (
        "find-wrong-image-shape",
        [
            "find",
            "--checkpoint",
            "{target}",
            "--method",
            "cp-mct",
            "--data",
            "fashion-mnist",
            "--limit",
            "4",
            "--out",
            "{out}",
        ],
        "shape",
    ),
    (
        "attribute-unknown-method",
        [
            "attribute",
            "--checkpoint",
            "{target}",
            "--method",
            "lime",
            "--data",
            "synthetic",
            "--out",
            "{out}",
        ],
        "lime",
    ),
    (
        "attribute-bad-sparsity",
        [
            "attribute",
            "--checkpoint",
            "{target}",
            "--method",
            "pathway-gradient",
            "--sparsity",
            "2",
            "--data",
            "synthetic",
            "--limit",
            "2",
            "--out",
            "{out}",
        ],
        "sparsity",
    ),
    (
        "evaluate-unknown-metric",
        [
            "evaluate-attribution",
            "--checkpoint",
            "{target}",
            "--methods",
            "gradient",
            "--metrics",
            "vibes",
            "--data",
            "synthetic",
            "--out",
            "{out}",
        ],
        "vibes",
    ),
    (
        "evaluate-unknown-method",
        [
            "evaluate-attribution",
            "--checkpoint",
            "{target}",
            "--methods",
            "lime",
            "--metrics",
            "lerf",
            "--data",
            "synthetic",
            "--out",
            "{out}",
        ],
        "lime",
    ),
    (
        "compare-unknown-method",
        [
            "compare",
            "--checkpoint",
            "{target}",
            "--methods",
            "cp-mct,magic",
            "--data",
            "synthetic",
            "--limit",
            "4",
            "--out",
            "{out}",
        ],
        "unknown method",
    ),
    (
        "compare-gencnp-no-generator",
        [
            "compare",
            "--checkpoint",
            "{target}",
            "--methods",
            "gencnp",
            "--data",
            "synthetic",
            "--out",
            "{out}",
        ],
        "generator",
    ),
    (
        "extract-into-user-folder",
        [
            "extract",
            "--checkpoint",
            "{target}",
            "--method",
            "cp-mct",
            "--data",
            "synthetic",
            "--limit",
            "4",
            "--out",
            "{notstore}",
        ],
        "not a pathway store",
    ),
    (
        "extract-zero-shard",
        [
            "extract",
            "--checkpoint",
            "{target}",
            "--method",
            "cp-mct",
            "--data",
            "synthetic",
            "--shard-size",
            "0",
            "--out",
            "{out}",
        ],
        "shard_size",
    ),
    (
        "fit-negative-alpha",
        [
            "fit-gencnp",
            "--checkpoint",
            "{target}",
            "--data",
            "synthetic",
            "--alpha",
            "-1",
            "--out",
            "{out}",
        ],
        "alpha",
    ),
    (
        "fit-zero-epochs",
        [
            "fit-gencnp",
            "--checkpoint",
            "{target}",
            "--data",
            "synthetic",
            "--epochs",
            "0",
            "--out",
            "{out}",
        ],
        "epochs",
    ),
    (
        "class-pathways-zero-j",
        [
            "class-pathways",
            "--checkpoint",
            "{target}",
            "--method",
            "cp-mct",
            "--data",
            "synthetic",
            "--j",
            "0",
            "--out",
            "{out}",
        ],
        "j",
    ),
    (
        "class-pathways-bad-theta",
        [
            "class-pathways",
            "--checkpoint",
            "{target}",
            "--method",
            "cp-mct",
            "--data",
            "synthetic",
            "--theta",
            "0",
            "--out",
            "{out}",
        ],
        "theta",
    ),
    (
        "detect-negative-eps",
        [
            "detect-adversarial",
            "--checkpoint",
            "{target}",
            "--data",
            "synthetic",
            "--eps",
            "-0.1",
            "--out",
            "{out}",
        ],
        "eps",
    ),
]


def _fill(argv: list[str], files: dict[str, Path], out: Path) -> list[str]:
    filled = []
    for arg in argv:
        arg = arg.replace("{out}", str(out))
        for name, path in files.items():
            arg = arg.replace("{" + name + "}", str(path))
        filled.append(arg)
    return filled


@pytest.mark.parametrize(
    ("argv", "message"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_cli_bad_input(
    files, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv, message
) -> None:
    out = tmp_path / "out"
    before = {p: p.stat().st_mtime_ns for p in files["root"].rglob("*") if p.is_file()}
    quiet = ["--no-progress"] if argv[0] != "info" else []
    code = main(_fill(argv, files, out) + quiet)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    # Our errors read "neuralpath: error: ...", argparse's "neuralpath CMD: error: ...".
    assert lines and re.match(r"neuralpath( [a-z-]+)?: error: ", lines[-1]), err
    assert "Traceback" not in err
    assert re.search(message, err, re.IGNORECASE), err
    leftovers = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert not out.exists() or not any(out.iterdir()), f"half-written output: {leftovers}"
    after = {
        p: p.stat().st_mtime_ns for p in files["root"].rglob("*") if p.is_file() and p in before
    }
    assert after == before, "an input file was modified"
    assert not (files["pickled"] / MARKER).exists(), "a checkpoint was unpickled"
    assert (files["notstore"] / "keep.txt").read_text() == "user data"


def test_console_script_prints_no_traceback(files, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("neuralpath")
    result = subprocess.run(
        [
            str(script),
            "find",
            "--checkpoint",
            str(files["truncated"]),
            "--method",
            "cp-mct",
            "--data",
            "synthetic",
            "--out",
            str(tmp_path / "p"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip().startswith("neuralpath: error:") and "Traceback" not in result.stderr
    )
    assert not (files["pickled"] / MARKER).exists()


def test_pickled_checkpoint_is_never_executed(files) -> None:
    with pytest.raises(NeuralpathError):
        load_target(files["pickled"])
    assert not (files["pickled"] / MARKER).exists()


# Library entry points: (id, call(model_parts) -> None). Each must raise NeuralpathError and
# leave the model unchanged.
def _library_cases() -> list[tuple[str, Callable[[dict[str, Any]], Any]]]:
    def finder_call(method: str, make_input: Callable[[Any], Any], target: Any = None):
        def call(ctx: dict[str, Any]) -> Any:
            options = FinderOptions(
                sparsity=0.7, generator=str(ctx["gen"]) if method.startswith("gencnp") else None
            )
            return build_finder(method, ctx["gated"], options).find(make_input(ctx), target)

        return call

    def x(ctx: dict[str, Any]) -> torch.Tensor:
        return torch.randn(2, 3, 32, 32)

    cases: list[tuple[str, Callable[[dict[str, Any]], Any]]] = []
    for method in finder_names():
        cases += [
            (
                f"{method}-nan",
                finder_call(method, lambda c: x(c).index_fill(0, torch.tensor([1]), float("nan"))),
            ),
            (f"{method}-inf", finder_call(method, lambda c: x(c).clamp(max=float("inf")) / 0.0)),
            (f"{method}-empty", finder_call(method, lambda c: torch.zeros(0, 3, 32, 32))),
            (f"{method}-wrong-shape", finder_call(method, lambda c: torch.zeros(2, 1, 28, 28))),
            (
                f"{method}-int-dtype",
                finder_call(method, lambda c: torch.zeros(2, 3, 32, 32, dtype=torch.uint8)),
            ),
            (
                f"{method}-meta-device",
                finder_call(method, lambda c: torch.zeros(2, 3, 32, 32, device="meta")),
            ),
            (f"{method}-target-out-of-range", finder_call(method, x, 7)),
            (f"{method}-target-negative", finder_call(method, x, torch.tensor([0, -1]))),
            (f"{method}-target-wrong-length", finder_call(method, x, torch.tensor([0, 1, 2]))),
            (f"{method}-target-float", finder_call(method, x, torch.tensor([0.5, 1.0]))),
        ]
    cases += [
        (
            "mask-shape-mismatch",
            lambda c: c["gated"].forward(x(c), {c["gated"].sites[0].name: torch.ones(2, 999)}),
        ),
        (
            "mask-unknown-layer",
            lambda c: c["gated"].forward(x(c), {"no.such.layer": torch.ones(2, 4)}),
        ),
        ("percentile-sparsity-one", lambda c: global_percentile({"a": torch.rand(2, 5)}, 1.0)),
        (
            "class-without-instances",
            lambda c: ClassPathways(
                Pathway({"a": torch.ones(2, 3)}), torch.tensor([1, 0]), 0.5
            ).for_labels(torch.tensor([1])),
        ),
        ("unknown-data-set", lambda c: load_dataset("nope")),
        (
            "pathway-load-checkpoint-file",
            lambda c: Pathway.load(c["target_dir"] / "model.safetensors"),
        ),
    ]
    return cases


LIBRARY_CASES = _library_cases()


@pytest.fixture(scope="module")
def context(files) -> dict[str, Any]:
    target, gated = open_target(str(files["wide"]), "cpu")
    return {
        "gated": gated,
        "model": target.model,
        "gen": files["gen-wide"],
        "target_dir": files["wide"],
    }


@pytest.mark.parametrize("call", [c[1] for c in LIBRARY_CASES], ids=[c[0] for c in LIBRARY_CASES])
def test_library_bad_input(context, call) -> None:
    model = context["model"]
    before = snapshot(model)
    with pytest.raises(NeuralpathError):
        call(context)
    assert_unchanged(model, before)


@pytest.mark.parametrize("fault", [errno.ENOSPC, errno.EROFS], ids=["disk-full", "read-only"])
def test_write_faults_leave_previous_output_intact(
    files, tmp_path: Path, monkeypatch, capsys, fault
) -> None:
    out = tmp_path / "p.safetensors"
    args = [
        "find",
        "--checkpoint",
        str(files["target"]),
        "--method",
        "random",
        "--data",
        "synthetic",
        "--limit",
        "4",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main([*args, "--seed", "0"]) == 0
    good = out.read_bytes()
    capsys.readouterr()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(fault, os.strerror(fault), str(dst))

    monkeypatch.setattr("neuralpath.io.os.replace", failing_replace)
    assert main([*args, "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neuralpath: error:") and os.strerror(fault) in err
    assert out.read_bytes() == good, "the previous output was damaged"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.safetensors"], (
        "temporary files left behind"
    )


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def test_memory_does_not_grow_over_many_calls(context) -> None:
    from neuralpath.attribution import PathwayGradient

    gated = context["gated"]
    finder = build_finder("cp-mct", gated, FinderOptions(sparsity=0.8))
    explainer = PathwayGradient(gated, finder)
    x = torch.randn(8, 3, 32, 32)
    for _ in range(15):
        finder.find(x)
        explainer.attribute(x)
    start = _rss_mib()
    for _ in range(150):
        finder.find(x)
        explainer.attribute(x)
    growth = _rss_mib() - start
    assert growth < 25, f"memory grew by {growth:.1f} MiB over 150 find+attribute calls"
