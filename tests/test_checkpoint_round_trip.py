"""save_target / load_target round trips of models not trained by neuralpath (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from neuralpath.checkpoint import META_FILE, WEIGHTS_FILE, TargetMeta, load_target, save_target
from neuralpath.errors import CheckpointError
from neuralpath.io import save_tensors
from neuralpath.models import build_model


def _meta(arch: str, arch_args: dict, shape: tuple[int, int, int], classes: int) -> TargetMeta:
    return TargetMeta(
        arch=arch, arch_args=arch_args, data="user", input_shape=shape, num_classes=classes,
        class_names=[f"c{i}" for i in range(classes)], mean=(0.5,) * shape[0],
        std=(0.25,) * shape[0],
    )  # fmt: skip


def _assert_same_model(loaded: nn.Module, model: nn.Module, x: torch.Tensor) -> None:
    state = loaded.state_dict()
    assert state.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_torchvision_model_round_trip_without_build_arguments(tmp_path: Path) -> None:
    """A torchvision classifier built by the user, saved with empty ``arch_args``: the build
    arguments come from the metadata (``num_classes``, ``input_shape``)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    model(torch.randn(4, 3, 32, 32))  # BatchNorm statistics of its own
    model.eval()
    meta = _meta("resnet18", {}, (3, 32, 32), 10)
    target = load_target(save_target(tmp_path / "ck", model, meta))
    assert target.meta == meta and not target.model.training
    _assert_same_model(target.model, model, torch.randn(2, 3, 32, 32))


def test_dtype_survives_the_round_trip(tmp_path: Path) -> None:
    args = {"num_classes": 4, "in_channels": 1, "input_size": 28, "width": 0.125}
    model = build_model("alexnet", **args).double().eval()
    target = load_target(
        save_target(tmp_path / "ck", model, _meta("alexnet", args, (1, 28, 28), 4))
    )
    assert next(target.model.parameters()).dtype == torch.float64
    _assert_same_model(target.model, model, torch.randn(3, 1, 28, 28, dtype=torch.float64))


class UserNet(nn.Module):
    """A classifier of the user's own: not an architecture ``build_model`` knows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_model_that_cannot_be_rebuilt_is_not_saved(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot save .*unknown architecture 'usernet'"):
        save_target(tmp_path / "ck", UserNet(), _meta("usernet", {}, (1, 8, 8), 3))
    assert not (tmp_path / "ck").exists()


def test_weights_that_do_not_fit_the_metadata_are_not_saved(tmp_path: Path) -> None:
    model = torchvision.models.resnet18(num_classes=1000)  # metadata says 10 classes
    with pytest.raises(CheckpointError, match=r"shape mismatch .*fc\.weight \[1000, 512\]"):
        save_target(tmp_path / "ck", model, _meta("resnet18", {}, (3, 32, 32), 10))
    one_channel = _meta("resnet18", {}, (1, 32, 32), 1000)  # the model takes 3 channels
    with pytest.raises(CheckpointError, match=r"conv1\.weight \[64, 3, 7, 7\] vs \[64, 1, 7, 7\]"):
        save_target(tmp_path / "ck", model, one_channel)
    assert not (tmp_path / "ck").exists()


def test_load_names_the_real_problem(tmp_path: Path) -> None:
    """A checkpoint of a model neuralpath cannot rebuild (as the old save_target wrote them): the
    error says the architecture is unknown, not that build_model lacks arguments."""
    path = tmp_path / "ck"
    path.mkdir()
    save_tensors(path / WEIGHTS_FILE, UserNet().state_dict())
    (path / META_FILE).write_text(json.dumps(_meta("usernet", {}, (1, 8, 8), 3).to_dict()))
    with pytest.raises(CheckpointError, match="unknown architecture 'usernet'") as caught:
        load_target(path)
    assert "required keyword" not in str(caught.value)
    payload = _meta("resnet18", {"depth": 18}, (3, 32, 32), 10).to_dict()
    (path / META_FILE).write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match=r"arch_args \['depth'\] are not build_model"):
        load_target(path)
