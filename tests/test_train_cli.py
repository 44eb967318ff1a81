"""Training and the ``train``/``info`` commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuralpath.checkpoint import load_target
from neuralpath.cli import main
from neuralpath.data import load_dataset
from neuralpath.errors import InputError
from neuralpath.train import evaluate, train_target


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """One tiny end-to-end ``neuralpath train`` run, shared by the tests below."""
    out = tmp_path_factory.mktemp("run") / "vgg11-synthetic"
    argv = [
        "train",
        "--arch",
        "vgg11",
        "--data",
        "synthetic",
        "--epochs",
        "1",
        "--limit",
        "256",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    return out, argv


def test_train_command_end_to_end(trained, capsys):
    out, argv = trained
    assert main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # progress and epoch lines go to stderr only
    assert "epoch 1/1: loss" in captured.err
    assert summary["checkpoint"] == str(out) and summary["arch"] == "vgg11"
    assert summary["data"] == "synthetic" and summary["input_shape"] == [3, 32, 32]
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and len(summary["history"]) == 1
    assert summary["arch_args"]["width"] == 0.25
    target = load_target(out)
    assert target.meta.test_accuracy == summary["test_accuracy"]
    test = load_dataset("synthetic", "test", limit=256)
    assert evaluate(target.model, test.images, test.labels) == summary["test_accuracy"]

    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("arch", "data", "test_accuracy", "num_classes", "input_shape", "layers"):
        assert key in info
    assert info["num_classes"] == 4 and info["input_shape"] == [3, 32, 32]
    assert len(info["layers"]) == 8
    assert {k: info["layers"][0][k] for k in ("name", "units")} == {
        "name": "features.2",
        "units": 16,
    }

    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "vgg11" in text and "8 gated" in text and "features.2 (16)" in text


def test_training_is_deterministic():
    data = (
        load_dataset("synthetic", "train", limit=48),
        load_dataset("synthetic", "test", limit=16),
    )
    runs = [
        train_target(
            "alexnet",
            data,
            epochs=1,
            seed=3,
            device="cpu",
            width=0.125,
            batch_size=16,
            progress=False,
        )
        for _ in range(2)
    ]
    first, second = (run.model.state_dict() for run in runs)
    assert all(torch.equal(first[name], second[name]) for name in first)
    losses = [[(h.train_loss, h.test_accuracy) for h in run.history] for run in runs]
    assert losses[0] == losses[1]
    rng_state = torch.get_rng_state()
    train_target("alexnet", data, epochs=1, seed=4, device="cpu", width=0.125, progress=False)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is left alone
    assert runs[0].checkpoint is None and runs[0].num_parameters > 0
    summary = runs[0].summary()  # the wall time is read with the device and threads it ran on
    assert summary["device"] == "cpu" and summary["threads"] == torch.get_num_threads()


def test_train_argument_errors(tmp_path):
    with pytest.raises(InputError, match="epochs"):
        train_target("vgg11", "synthetic", epochs=0, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        train_target("vgg11", "synthetic", out_dir=tmp_path / "file", progress=False)


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main([]) == 2
    assert main(["train", "--data", "synthetic"]) == 2  # --out missing
    assert "--out" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("neuralpath: error: checkpoint directory not found")
    assert (
        main(
            [
                "train",
                "--arch",
                "alexnett",
                "--data",
                "synthetic",
                "--limit",
                "8",
                "--out",
                str(tmp_path / "o"),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "did you mean alexnet" in capsys.readouterr().err
    assert main(["--version"]) == 0


def test_console_script_reports_errors_without_traceback(tmp_path):
    script = Path(sys.executable).with_name("neuralpath")
    if not script.exists():
        script = Path(shutil.which("neuralpath") or "neuralpath")
    out = tmp_path / "out"
    result = subprocess.run(
        [str(script), "train", "--data", "no-such-data", "--epochs", "1", "--out", str(out)],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("neuralpath: error: unknown data set 'no-such-data'")
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not out.exists()


def test_building_the_parser_stays_light():
    """Command modules import the library inside their handlers (``--help`` stays fast)."""
    heavy = ("torchvision", "neuralpath.train", "neuralpath.data", "neuralpath.checkpoint")
    code = (
        "import sys, neuralpath.cli as c; c.build_parser(); "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "[]", result.stderr
