"""The demo's plan: valid CLI commands, seeded, and finished steps are skipped on a re-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neuralpath import demo
from neuralpath.cli import build_parser


def test_every_step_is_a_valid_seeded_command(tmp_path) -> None:
    steps = demo.plan(tmp_path, limit=500, train_limit=20000, gencnp_epochs=3, seed=7)
    assert [s.title for s in steps] == [
        "train vgg11", "fit GEN-CNP for vgg11", "fit GEN-CNP under mean ablation for vgg11",
        "compare all methods on vgg11",
        "train alexnet", "fit GEN-CNP for alexnet", "fit GEN-CNP under mean ablation for alexnet",
        "compare all methods on alexnet",
    ]  # fmt: skip
    parser = build_parser()
    for step in steps:
        args = parser.parse_args(list(step.argv))
        assert args.seed == 7, step.title
    assert demo.plan(tmp_path, 500, 20000, 3)[0].argv[-2:] == ("--seed", "0")
    for step in steps:
        args = parser.parse_args(list(step.argv))
        if step.argv[0] == "compare":
            assert args.ablation == "zero,mean", step.title
            assert [g.split("=")[0] for g in args.generator] == ["zero", "mean"]
        if "under mean ablation" in step.title:
            assert (args.ablation, args.swap_weight) == ("mean", 1.0)


def test_rerun_skips_finished_steps(tmp_path, monkeypatch, capsys) -> None:
    calls: list[list[str]] = []

    def fake_cli(argv: list[str]) -> int:
        calls.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if argv[0] == "train":
            (out / "meta.json").write_text("{}")
        if argv[0] == "compare":
            (out / "report.html").write_text("<html></html>")
            row = {"agreement": 1.0, "accuracy": 1.0, "mic": 0.0, "mdc": 0.0, "aciou": 100.0,
                   "kept_fraction_mean": 0.5, "blank_agreement": 0.25,
                   "swap_follows_mask": 0.125}  # fmt: skip
            parts = {a: {"methods": {"cp-mct": row}, "transfer": {}} for a in ("zero", "mean")}
            (out / "results.json").write_text(
                json.dumps({"methods": {"cp-mct": row}, "interventions": parts})
            )
        return 0

    monkeypatch.setattr(demo, "cli", fake_cli)
    assert demo.run(["--runs", str(tmp_path), "--seed", "3"]) == 0
    assert [c[0] for c in calls] == ["train", "fit-gencnp", "fit-gencnp", "compare"] * 2
    timing = json.loads((tmp_path / "demo" / "timing.json").read_text())
    assert timing["from_scratch"] and timing["seconds"] >= 0
    assert all(c[-2:] == ["--seed", "3"] for c in calls)
    calls.clear()
    assert demo.run(["--runs", str(tmp_path)]) == 0
    assert [c[0] for c in calls] == ["fit-gencnp"] * 4  # resumes by itself
    assert not json.loads((tmp_path / "demo" / "timing.json").read_text())["from_scratch"]
    printed = capsys.readouterr().out
    assert "zero ablation" in printed and "mean ablation" in printed
    assert "swap→mask" in printed and "0.250     0.125" in printed


def test_failed_step_stops_the_demo(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(demo, "cli", lambda argv: 2)
    assert demo.run(["--runs", str(tmp_path)]) == 2
    assert "step 'train vgg11' failed" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--seed", "x"], ["--limit", "many"]])
def test_bad_arguments(argv) -> None:
    with pytest.raises(SystemExit):
        demo.run(argv)
