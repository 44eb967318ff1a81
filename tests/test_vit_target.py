"""The ``vit-tiny`` target: built by ``build_model``, trained by ``neuralpath train``, stored and
rebuilt exactly, and gated at its heads and MLP neurons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from neuralpath.checkpoint import TargetMeta, load_target, save_target
from neuralpath.cli import main
from neuralpath.errors import InputError
from neuralpath.gating import GatedModel
from neuralpath.models import build_model


def test_vit_tiny_on_28_pixel_grey_images() -> None:
    torch.manual_seed(0)
    model = build_model("vit-tiny", num_classes=10, in_channels=1, input_size=28).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    gated = GatedModel.discover(model, torch.zeros(1, 1, 28, 28), unit_types=["heads", "mlp"])
    heads = [site for site in gated.sites if site.kind == "head"]
    neurons = [site for site in gated.sites if site.kind == "token"]
    assert len(heads) == len(neurons) == 4  # 4 blocks
    assert heads[0].shape == (50, 4, 16)  # 7 x 7 patches + class token, 4 heads of 16
    assert neurons[0].shape == (50, 128) and neurons[0].units == 128
    wider = build_model("vit-tiny", num_classes=3, in_channels=3, input_size=32, width=0.5)
    assert wider(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    assert wider.hidden_dim == 32


def test_vit_tiny_bad_sizes_are_clear_errors() -> None:
    with pytest.raises(InputError, match="multiple of 4, got 30"):
        build_model("vit-tiny", num_classes=10, in_channels=1, input_size=30)
    with pytest.raises(InputError, match="did you mean vit-tiny"):
        build_model("vit-tinny", num_classes=10, in_channels=1, input_size=28)


def test_vit_tiny_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    args = {"num_classes": 10, "in_channels": 1, "input_size": 28, "width": 1.0}
    torch.manual_seed(1)
    model = build_model("vit-tiny", **args).eval()
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero
    meta = TargetMeta(
        arch="vit-tiny", arch_args=args, data="fashion-mnist", input_shape=(1, 28, 28),
        num_classes=10, class_names=[str(i) for i in range(10)], mean=(0.3,), std=(0.35,),
    )  # fmt: skip
    target = load_target(save_target(tmp_path / "ck", model, meta))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(target.model(x), model(x))
    assert target.meta == meta


def test_train_vit_tiny_and_gate_its_units(tmp_path: Path, capsys) -> None:
    out = tmp_path / "vit"
    argv = ["train", "--arch", "vit-tiny", "--data", "synthetic", "--epochs", "1", "--limit",
            "64", "--batch-size", "32", "--out", str(out), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["arch"] == "vit-tiny" and summary["input_shape"] == [3, 32, 32]
    assert load_target(out).meta.arch == "vit-tiny"
    assert main(["info", "--checkpoint", str(out), "--units", "heads", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [site["kind"] for site in info["layers"]] == ["head"] * 4
    assert info["layers"][0]["shape"] == [65, 4, 16]  # 8 x 8 patches + class token
