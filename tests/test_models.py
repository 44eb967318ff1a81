"""Target architectures and checkpoints."""

from __future__ import annotations

import builtins
import json
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from neuralpath.checkpoint import META_FILE, WEIGHTS_FILE, TargetMeta, load_target, save_target
from neuralpath.errors import CheckpointError, InputError
from neuralpath.models import build_model, default_width, resolve_device


@pytest.mark.parametrize("arch", ["alexnet", "vgg11"])
@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("width", [0.125, 0.25])
def test_our_archs_forward(arch, size, channels, width):
    model = build_model(arch, num_classes=7, in_channels=channels, input_size=size, width=width)
    assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


@pytest.mark.parametrize(("arch", "convs"), [("alexnet", 5), ("vgg11", 8)])
def test_our_archs_layout(arch, convs):
    model = build_model(arch, num_classes=10, in_channels=3, input_size=32, width=0.5)
    names = dict(model.named_modules())
    assert isinstance(names["features"], nn.Sequential)
    assert isinstance(names["classifier"], nn.Sequential)
    layers = list(model.features)
    conv_indices = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d)]
    assert len(conv_indices) == convs
    for i in conv_indices:  # every conv is followed (after an optional BatchNorm) by a ReLU
        follower = layers[i + 1] if isinstance(layers[i + 1], nn.ReLU) else layers[i + 2]
        assert isinstance(follower, nn.ReLU)
    assert layers[conv_indices[0]].out_channels == 32
    assert sum(isinstance(m, nn.Linear) for m in model.classifier) == (
        3 if arch == "alexnet" else 2
    )


def test_large_inputs_are_pooled_before_the_classifier():
    small = build_model("vgg11", num_classes=5, in_channels=3, input_size=32, width=0.25)
    large = build_model("alexnet", num_classes=5, in_channels=3, input_size=224, width=0.25)
    assert large(torch.randn(1, 3, 224, 224)).shape == (1, 5)
    assert large.classifier[1].in_features == 64 * 4 * 4
    assert small.classifier[0].in_features == 128


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "torchvision.alexnet"])
def test_torchvision_archs_with_one_channel(name):
    size = 64 if name.endswith("alexnet") else 32
    model = build_model(name, num_classes=4, in_channels=1, input_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 4)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1


def test_unknown_arch_and_bad_arguments():
    with pytest.raises(InputError, match="did you mean.*resnet18") as info:
        build_model("resnet81", num_classes=3, in_channels=3, input_size=32)
    assert "alexnet, vgg11" in str(info.value)
    with pytest.raises(InputError, match="width"):
        build_model("resnet18", num_classes=3, in_channels=3, input_size=32, width=0.5)
    with pytest.raises(InputError, match="num_classes"):
        build_model("vgg11", num_classes=0, in_channels=3, input_size=32)


def test_defaults_and_devices():
    assert default_width("vgg11") == 0.25 and default_width("resnet18") == 1.0
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda"}
    with pytest.raises(InputError, match="invalid device"):
        resolve_device("gpu7")


# -------------------------------------------------------------------------------- checkpoints

ARGS = {"num_classes": 3, "in_channels": 1, "input_size": 28, "width": 0.125}


def make_meta(arch: str = "vgg11", **changes) -> TargetMeta:
    fields = {
        "arch": arch,
        "arch_args": dict(ARGS),
        "data": "fashion-mnist",
        "input_shape": (1, 28, 28),
        "num_classes": 3,
        "class_names": ["a", "b", "c"],
        "mean": (0.5,),
        "std": (0.25,),
        "seed": 0,
        "epochs": 1,
        "test_accuracy": 0.5,
    }
    return TargetMeta(**{**fields, **changes})


@pytest.fixture
def saved(tmp_path) -> tuple[Path, nn.Module]:
    torch.manual_seed(0)
    model = build_model("vgg11", **ARGS)
    model.train()
    model(torch.randn(8, 1, 28, 28))  # non-default BatchNorm statistics
    return save_target(tmp_path / "ckpt", model.eval(), make_meta()), model


def test_round_trip_is_exact(saved):
    path, model = saved
    target = load_target(path)
    assert target.meta == make_meta()
    assert not target.model.training
    loaded = target.model.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded[name], tensor), name
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(target.model(x), model(x))
    assert target.example_input(batch=2).shape == (2, 1, 28, 28)
    payload = json.loads((path / META_FILE).read_text())
    assert payload["format"] == "neuralpath.target" and payload["version"] == 1
    assert payload["created_by"].startswith("neuralpath ")


def test_truncated_weights(saved):
    path, _ = saved
    raw = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_target(path)


def test_corrupt_json(saved):
    path, _ = saved
    (path / META_FILE).write_text('{"format": "neuralpath.target", ')
    with pytest.raises(CheckpointError, match="corrupt JSON"):
        load_target(path)


@pytest.mark.parametrize("missing", [META_FILE, WEIGHTS_FILE])
def test_missing_files(saved, missing):
    path, _ = saved
    (path / missing).unlink()
    with pytest.raises(CheckpointError, match="missing file"):
        load_target(path)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_target(tmp_path / "nothing")


def test_weights_of_another_arch(saved):
    path, _ = saved
    alexnet = build_model("alexnet", **ARGS)
    save_target(path, alexnet, make_meta("alexnet"))
    (path / META_FILE).write_text(json.dumps(make_meta("vgg11").to_dict()))
    with pytest.raises(CheckpointError, match="missing: .*unexpected: "):
        load_target(path)


def test_weights_of_another_width(saved):
    path, _ = saved
    payload = make_meta().to_dict()
    payload["arch_args"]["width"] = 0.25
    (path / META_FILE).write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_target(path)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_payload_is_never_executed(saved, tmp_path, writer):
    path, _ = saved
    marker = tmp_path / "executed"
    payload = {"features.0.weight": _Exploit(marker)}
    with open(path / WEIGHTS_FILE, "wb") as handle:
        if writer == "torch.save":
            torch.save(payload, handle)
        else:
            pickle.dump(payload, handle)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_target(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "not a neuralpath.target"),
        ({"version": 2}, "unsupported version"),
        ({"test_accuracy": 1.5}, "fraction"),
        ({"num_classes": 4}, "class_names"),
        ({"input_shape": [28, 28]}, r"\[C, H, W\]"),
        ({"arch_args": {"bogus": 1}}, "cannot rebuild"),
        ({"arch": "resnet81"}, "cannot rebuild"),
    ],
)
def test_invalid_meta(saved, change, message):
    path, _ = saved
    (path / META_FILE).write_text(json.dumps({**make_meta().to_dict(), **change}))
    with pytest.raises(CheckpointError, match=message):
        load_target(path)


def test_meta_missing_field(saved):
    path, _ = saved
    payload = make_meta().to_dict()
    del payload["class_names"]
    (path / META_FILE).write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="missing field 'class_names'"):
        load_target(path)


def test_save_into_a_file_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        save_target(tmp_path / "file", build_model("vgg11", **ARGS), make_meta())
