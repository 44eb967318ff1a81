"""Bring your own model: a factory in a file outside the package, its weights (safetensors and a
torch state dict) and a model card, through every CLI command; bad input as one clear error;
torchvision models by name; the Python API without a neuralpath checkpoint."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from neuralpath.checkpoint import Target
from neuralpath.cli import main
from neuralpath.data import load_dataset
from neuralpath.errors import InputError
from neuralpath.io import load_tensors
from neuralpath.model_source import ModelCard, call_factory, open_model
from neuralpath.pathway import Pathway

FACTORY = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(24, 8)
        self.act3 = nn.ReLU()
        self.fc2 = nn.Linear(8, classes)

    def forward(self, x):
        x = self.pool(self.act2(self.conv2(self.act1(self.conv1(x)))))
        return self.fc2(self.act3(self.fc1(x.flatten(1))))


def build():
    return Net()


def wide():
    return Net(classes=5)


def not_a_model():
    return 42


def broken():
    raise RuntimeError("no GPU here")


VALUE = 3
"""

CARD = """
input_shape = [3, 16, 16]
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
class_names = ["circle", "square", "triangle", "cross"]
data = "synthetic"
"""


class _Marker:
    """Unpickling this would create a file: a pickle that must never run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.path,))


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A factory file, a TOML card and the weights (.safetensors and a nested .pt state dict) of
    a small CNN whose logits are centred over synthetic training images (it predicts every
    class)."""
    root = tmp_path_factory.mktemp("user")
    (root / "my_model.py").write_text(FACTORY)
    (root / "card.toml").write_text(CARD)
    torch.manual_seed(0)
    target = open_model(f"{root / 'my_model.py'}:build", card=ModelCard.read(root / "card.toml"))
    images = load_dataset(
        "synthetic", "train", limit=256, preprocessing=target.meta.preprocessing()
    )
    with torch.no_grad():
        target.model.fc2.bias -= target.model(images.images).mean(0)
    state = {k: v.contiguous() for k, v in target.model.state_dict().items()}
    save_file(state, str(root / "weights.safetensors"))
    torch.save({"state_dict": state, "epoch": 3}, root / "weights.pt")
    return root


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURALPATH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _model(user: Path, weights: str = "weights.safetensors", reference: bool = True) -> list[str]:
    """The user-model options (and a small reference set where the command has one)."""
    return [
        "--model", f"{user / 'my_model.py'}:build", "--weights", str(user / weights),
        "--model-card", str(user / "card.toml"), "--device", "cpu", "--no-progress",
        *(["--reference-size", "32"] if reference else []),
    ]  # fmt: skip


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_find_extract_and_reference_on_a_user_model(user, tmp_path, cache, capsys) -> None:
    find = ["find", *_model(user), "--method", "cp-mct", "--sparsity", "0.5", "--limit", "8"]
    summary = _run([*find, "--ablation", "mean", "--out", str(tmp_path / "p.safetensors")], capsys)
    assert summary["n"] == 8 and summary["ablation"] == "mean"
    pathway = Pathway.load(tmp_path / "p.safetensors")
    assert pathway.metadata["model"].endswith("my_model.py:build")
    assert len(pathway.metadata["labels"]) == 8
    stored = sorted(cache.glob("targets/*/reference/*.safetensors"))
    assert len(stored) == 1  # the reference statistics went to the cache, keyed by the weights
    chosen = [*find, "--layers", "act2", "--include-fc", "--out", str(tmp_path / "q.safetensors")]
    _run(chosen, capsys)
    assert list(Pathway.load(tmp_path / "q.safetensors")) == ["act2"]
    _run([*find, "--include-fc", "--out", str(tmp_path / "fc.safetensors")], capsys)
    assert list(Pathway.load(tmp_path / "fc.safetensors")) == ["act1", "act2", "act3"]
    reference = _run(["reference", *_model(user, "weights.pt")], capsys)
    assert Path(reference["path"]) == stored[0] and reference["count"] == 32

    store = _run(
        ["extract", *_model(user, "weights.pt"), "--method", "random", "--limit", "6",
         "--out", str(tmp_path / "store")],
        capsys,
    )  # fmt: skip
    assert store["n"] == 6 and store["method"] == "random"


def test_attribute_and_evaluate_attribution_on_a_user_model(user, tmp_path, capsys) -> None:
    attribute = _run(
        ["attribute", *_model(user), "--method", "pathway-gradient", "--data", "synthetic",
         "--limit", "4", "--out", str(tmp_path / "maps")],
        capsys,
    )  # fmt: skip
    assert attribute["n"] == 4 and attribute["model"].endswith(":build")
    maps, _ = load_tensors(tmp_path / "maps" / "maps.safetensors")
    assert maps["maps"].shape == (4, 3, 16, 16)
    assert len(list((tmp_path / "maps" / "overlays").glob("*.png"))) == 4
    _run(
        ["evaluate-attribution", *_model(user), "--methods", "gradient", "--metrics", "lerf",
         "--percentages", "10", "--limit", "4", "--out", str(tmp_path / "eval")],
        capsys,
    )  # fmt: skip
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["config"]["model"].endswith(":build")


def test_gencnp_class_pathways_and_compare_on_a_user_model(user, tmp_path, capsys) -> None:
    generator = tmp_path / "generator"
    fit = _run(
        ["fit-gencnp", *_model(user), "--limit", "32", "--epochs", "1", "--batch-size", "16",
         "--out", str(generator)],
        capsys,
    )  # fmt: skip
    assert fit["epochs_done"] == 1
    meta = json.loads((generator / "meta.json").read_text())
    assert meta["target"]["target_meta"]["source"]["model"].endswith(":build")
    classes = _run(
        ["class-pathways", *_model(user, "weights.pt"), "--generator", str(generator),
         "--j", "1", "--instances", "all", "--build-limit", "64", "--limit", "8",
         "--out", str(tmp_path / "classes")],
        capsys,
    )  # fmt: skip
    assert sum(classes["class_instances"]) == 4
    assert (tmp_path / "classes" / "class_pathways.safetensors").is_file()
    compare = _run(
        ["compare", *_model(user), "--generator", str(generator), "--methods", "gencnp,random",
         "--limit", "8", "--j", "1", "--instances", "all", "--ablation", "zero",
         "--out", str(tmp_path / "study")],
        capsys,
    )  # fmt: skip
    assert set(compare["methods"]) == {"gencnp", "random"}
    results = json.loads((tmp_path / "study" / "results.json").read_text())
    assert results["target"]["input_shape"] == [3, 16, 16]


def test_detect_adversarial_and_info_on_a_user_model(user, tmp_path, capsys) -> None:
    detect = _run(
        ["detect-adversarial", *_model(user, reference=False), "--attack", "fgsm", "--eps",
         "0.1", "--limit", "24", "--iterations", "2", "--include-failed",
         "--out", str(tmp_path / "adv")],
        capsys,
    )  # fmt: skip
    assert detect["model"].endswith(":build") and (tmp_path / "adv" / "results.json").is_file()
    argv = ["info", *_model(user)[:8], "--json"]
    info = _run(argv, capsys)
    assert info["input_shape"] == [3, 16, 16] and info["num_classes"] == 4
    assert info["mean"] == [0.5] * 3 and info["class_names"][0] == "circle"
    assert info["num_parameters"] == sum(
        p.numel() for p in call_factory(f"{user / 'my_model.py'}:build").parameters()
    )
    assert [site["name"] for site in info["layers"]] == ["act1", "act2"]
    assert info["layers"][0] == {
        "name": "act1", "units": 4, "module": "act1", "kind": "conv", "shape": [4, 16, 16],
        "elements": 1024,
    }  # fmt: skip
    with_fc = _run([*argv, "--include-fc"], capsys)
    assert [site["name"] for site in with_fc["layers"]] == ["act1", "act2", "act3"]
    chosen = _run([*argv, "--layers", "act2"], capsys)
    assert [site["name"] for site in chosen["layers"]] == ["act2"]


def test_card_flags_and_defaults(user, capsys) -> None:
    info = _run(
        ["info", "--model", f"{user / 'my_model.py'}:build", "--input-shape", "3,12,12",
         "--mean", "0,0,0", "--std", "1,1,1", "--json"],
        capsys,
    )  # fmt: skip
    assert info["input_shape"] == [3, 12, 12] and info["class_names"] == ["0", "1", "2", "3"]
    assert info["weights"] is None and info["data"] == ""
    flags_over_card = _run(
        ["info", "--model", f"{user / 'my_model.py'}:build", "--model-card",
         str(user / "card.toml"), "--std", "0.5,0.5,0.5", "--json"],
        capsys,
    )  # fmt: skip
    assert flags_over_card["std"] == [0.5] * 3 and flags_over_card["mean"] == [0.5] * 3
    module_factory = _run(
        ["info", "--model", "toys:tiny_cnn", "--input-shape", "3,8,8", "--mean", "0,0,0",
         "--std", "1,1,1", "--class-names", "a,b,c", "--json"],
        capsys,
    )  # fmt: skip
    assert module_factory["model"] == "toys:tiny_cnn" and module_factory["class_names"] == [
        "a", "b", "c",
    ]  # fmt: skip


# ------------------------------------------------------------------------------ bad input


def _bad_inputs(user: Path, tmp: Path) -> list[tuple[str, list[str], str]]:
    """(case, argv of `info`, expected part of the error) for each bad input."""
    factory = str(user / "my_model.py")
    card = ["--model-card", str(user / "card.toml")]
    (tmp / "pickled.safetensors").write_bytes(pickle.dumps({"a": 1}))
    torch.save({"w": _Marker(tmp / "executed")}, tmp / "evil.pt")
    torch.save({"conv1.weight": torch.zeros(1), "extra.w": torch.zeros(1)}, tmp / "small.pt")
    (tmp / "no_mean.toml").write_text("input_shape = [3, 16, 16]\nstd = [1.0, 1.0, 1.0]\n")
    (tmp / "extra.json").write_text(json.dumps({"input_shape": [3, 8, 8], "colour": "red"}))
    (tmp / "grey.json").write_text(json.dumps({"input_shape": [1, 16, 16], "mean": [0.5],
                                               "std": [0.5]}))  # fmt: skip

    def weights(name: str, function: str = "build") -> list[str]:
        folder = user if name == "weights.pt" else tmp
        return ["--model", f"{factory}:{function}", "--weights", str(folder / name), *card]

    def with_card(name: str) -> list[str]:
        return ["--model", f"{factory}:build", "--model-card", str(tmp / name)]

    return [
        ("missing file", ["--model", f"{tmp / 'nope.py'}:build", *card], "file not found"),
        ("missing module", ["--model", "no_such_pkg.models:build", *card], "cannot import"),
        ("missing function", ["--model", f"{factory}:absent", *card], "no attribute 'absent'"),
        ("not callable", ["--model", f"{factory}:VALUE", *card], "VALUE is not callable"),
        ("not a module", ["--model", f"{factory}:not_a_model", *card], "not a torch.nn.Module"),
        ("factory raises", ["--model", f"{factory}:broken", *card], "no GPU here"),
        ("bad spec", ["--model", "just_a_name", *card], "expected package.module:function"),
        ("weights do not fit", weights("weights.pt", "wide"), "fc2.bias [4] vs [5]"),
        ("missing keys", weights("small.pt"), "missing: conv1.bias, conv2.bias"),
        (
            "unexpected keys",
            weights("small.pt"),
            "unexpected: extra.w; shape mismatch (saved vs model): conv1.weight [1] vs [4,",
        ),
        ("pickle as safetensors", weights("pickled.safetensors"), "not a readable safetensors"),
        ("pickled code", weights("evil.pt"), "weights_only=True"),
        ("weights file missing", weights("none.pt"), "weights file not found"),
        ("card lacks fields", with_card("no_mean.toml"), "the model card lacks mean"),
        ("card unknown field", with_card("extra.json"), "unknown field(s) colour"),
        ("card shape does not run", with_card("grey.json"), "does not run through the model"),
        (
            "card mean vs channels",
            [*with_card(str(user / "card.toml")), "--mean", "0.5"],
            "mean has 1 values, input_shape has 3 channel(s)",
        ),
        (
            "card flags with a checkpoint",
            ["--checkpoint", str(tmp), "--mean", "0.5"],
            "--mean only apply to --model",
        ),
    ]


def test_bad_input_is_one_clear_error(user, tmp_path, capsys) -> None:
    cases = _bad_inputs(user, tmp_path)
    for case, argv, message in cases:
        assert main(["info", *argv]) == 2, case
        err = capsys.readouterr().err.strip()
        assert err.startswith("neuralpath: error: ") and "\n" not in err, (case, err)
        assert message in err, (case, err)
    assert not (tmp_path / "executed").exists()  # the pickled code never ran


def test_data_that_does_not_fit_the_model_is_one_clear_error(user, tmp_path, capsys) -> None:
    out = tmp_path / "p.safetensors"
    argv = [
        "find",
        *_model(user),
        "--method",
        "random",
        "--data",
        "fashion-mnist",
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "neuralpath: error: fashion-mnist images have 1 channel(s), the model takes input shape "
        "[3, 16, 16]"
    )
    assert not out.exists()
    assert main(["find", "--method", "random", "--out", str(out)]) == 2
    assert "one of the arguments --checkpoint --model is required" in capsys.readouterr().err


def test_a_user_model_without_a_data_set_needs_data(user, tmp_path, capsys) -> None:
    argv = ["find", "--model", f"{user / 'my_model.py'}:build", "--input-shape", "3,16,16",
            "--mean", "0,0,0", "--std", "1,1,1", "--method", "random", "--out",
            str(tmp_path / "p.safetensors"), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2
    assert "--data is needed" in capsys.readouterr().err


# ------------------------------------------------------------------------------ torchvision


def test_torchvision_resnet18_through_find(tmp_path, capsys) -> None:
    summary = _run(
        ["find", "--model", "torchvision:resnet18", "--num-classes", "4", "--input-shape",
         "3,32,32", "--resize", "32", "--data", "synthetic", "--method", "random",
         "--sparsity", "0.5", "--limit", "2", "--reference-size", "4", "--no-progress",
         "--device", "cpu", "--out", str(tmp_path / "p.safetensors")],
        capsys,
    )  # fmt: skip
    assert summary["n"] == 2
    pathway = Pathway.load(tmp_path / "p.safetensors")
    assert pathway.metadata["model"] == "torchvision:resnet18"


def test_torchvision_weights_enum_from_the_hub_cache(tmp_path, monkeypatch, capsys) -> None:
    import torchvision.models

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    argv = ["info", "--model", "torchvision:resnet18", "--weights",
            "ResNet18_Weights.IMAGENET1K_V1", "--json"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "resnet18-f37072fd.pth" in err and "never downloads" in err
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), folder / "resnet18-f37072fd.pth")
    info = _run(argv, capsys)
    assert info["num_classes"] == 1000 and info["class_names"][0] == "tench"
    assert info["input_shape"] == [3, 224, 224] and info["resize"] == 256
    assert info["mean"] == pytest.approx([0.485, 0.456, 0.406])


# ------------------------------------------------------------------------------ Python API


def test_target_from_module_leaves_the_model_as_it_was() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(3))  # fmt: skip
    model(torch.zeros(2, 1, 8, 8))  # materialise the lazy layer
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    target = Target.from_module(model, ModelCard(input_shape=(1, 8, 8), mean=(0.5,), std=(0.5,)))
    assert target.model is model and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert target.meta.num_classes == 3 and target.meta.class_names == ["0", "1", "2"]
    assert target.meta.preprocessing().mean == (0.5,)
    with pytest.raises(InputError, match="says 4 classes, the model outputs 3"):
        Target.from_module(model, ModelCard((1, 8, 8), (0.5,), (0.5,), num_classes=4))


@pytest.mark.filterwarnings("ignore::neuralpath.errors.LeakageWarning")  # random pathways
def test_study_runs_on_a_target_without_a_checkpoint(user, tmp_path, cache) -> None:
    from neuralpath.study import StudyConfig, run_study

    target = open_model(
        f"{user / 'my_model.py'}:build", weights=user / "weights.safetensors",
        card=ModelCard.read(user / "card.toml"), device="cpu",
    )  # fmt: skip
    config = StudyConfig(
        methods=("random",), data="synthetic", limit=8, transfer_per_class=1, instances="all",
        ablations=("mean",), reference_size=16, layers=("act2",),
    )  # fmt: skip
    result, gated, evaluation = run_study(
        target, config, device="cpu", progress=False, reference_dir=tmp_path / "ref"
    )
    assert gated.site_names == ["act2"] and evaluation.mean == (0.5, 0.5, 0.5)
    assert result.to_json()["methods"]["random"]["n"] == 8
    assert list((tmp_path / "ref" / "reference").glob("*.safetensors"))
    assert not cache.exists()


def test_image_folder_through_the_cli(user, tmp_path, capsys) -> None:
    """A folder of photos of another size: the card's resize and crop, a seeded split recorded
    in the results, and an unreadable file named, or skipped and counted with
    --skip-unreadable."""
    from PIL import Image

    shapes = load_dataset("synthetic", "test", limit=24, image_size=24)
    pixels = shapes.denormalize(shapes.images).mul(255).byte().permute(0, 2, 3, 1).numpy()
    for i, (array, label) in enumerate(zip(pixels, shapes.labels.tolist(), strict=True)):
        (tmp_path / "photos" / shapes.class_names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(tmp_path / "photos" / shapes.class_names[label] / f"{i}.png")
    (tmp_path / "photos" / "circle" / "broken.png").write_bytes(b"not a png")
    argv = ["find", *_model(user), "--method", "random", "--data", str(tmp_path / "photos"),
            "--split", "train", "--test-fraction", "0.25", "--split-seed", "3",
            "--out", str(tmp_path / "p.safetensors")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neuralpath: error: cannot read image ") and "broken.png" in err
    assert main([*argv, "--skip-unreadable"]) == 0
    captured = capsys.readouterr()
    assert "neuralpath: skipped 1 unreadable image(s) of the train split" in captured.err
    summary = json.loads(captured.out)
    pathway = Pathway.load(tmp_path / "p.safetensors")
    assert pathway.metadata["data_split"] == {
        "split": "stratified", "test_fraction": 0.25, "seed": 3,
    }  # fmt: skip
    assert summary["n"] == len(pathway.metadata["labels"]) < 24


def test_a_checkpoint_is_fed_its_own_normalisation(tmp_path, capsys) -> None:
    """The toy checkpoint normalises with std 0.25 where the synthetic set's default is 0.29: the
    reference statistics' mean image must be that of images normalised the checkpoint's way."""
    from neuralpath.data import normalize
    from neuralpath.reference import ReferenceStatistics

    from toys import save_centred_vgg

    checkpoint = save_centred_vgg(tmp_path / "target")
    argv = ["reference", "--checkpoint", str(checkpoint), "--reference-size", "16",
            "--no-progress", "--device", "cpu"]  # fmt: skip
    stored = ReferenceStatistics.load(_run(argv, capsys)["path"])
    plain = load_dataset("synthetic", "train", limit=16, seed=0, image_size=32)
    own = normalize(plain.denormalize(plain.images), (0.5,) * 3, (0.25,) * 3)
    assert plain.std != (0.25,) * 3
    assert torch.allclose(stored.input_mean, own.mean(0), atol=1e-5)
