"""``--units heads,mlp`` on every command: a tiny torchvision ViT given as the user's own model
(``--model file.py:fn``) is gated at its attention heads and MLP neurons; ``--units`` with
``--layers``, an unknown unit type and heads on a CNN are one ``neuralpath: error:`` line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neuralpath.cli import main
from neuralpath.pathway import Pathway

FACTORY = """
import torch
from safetensors.torch import load_file
from torch import nn
from torchvision.models import VisionTransformer


def build():
    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16,
        num_classes=4,
    )
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def cnn():
    return Cnn()
"""

CARD = """
input_shape = [3, 16, 16]
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
data = "synthetic"
"""

BLOCKS = ("encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1")
HEADS = [f"{block}.self_attention" for block in BLOCKS]
NEURONS = [f"{block}.mlp.1" for block in BLOCKS]


@pytest.fixture(scope="module")
def user(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vit_user")
    (root / "vit.py").write_text(FACTORY)
    (root / "card.toml").write_text(CARD)
    return root


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURALPATH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _model(user: Path, factory: str = "build", units: str | None = "heads,mlp") -> list[str]:
    return [
        "--model", f"{user / 'vit.py'}:{factory}", "--model-card", str(user / "card.toml"),
        "--device", "cpu", *(["--units", units] if units else []),
    ]  # fmt: skip


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("neuralpath: error: "), err
    return err[0]


def test_info_lists_heads_and_mlp_neurons_of_the_units_asked_for(user, capsys) -> None:
    both = _run(["info", *_model(user), "--json"], capsys)
    sites = {site["name"]: site for site in both["layers"]}
    assert list(sites) == [HEADS[0], NEURONS[0], HEADS[1], NEURONS[1]]
    assert sites[HEADS[0]]["kind"] == "head" and sites[HEADS[0]]["units"] == 2
    assert sites[HEADS[0]]["shape"] == [17, 2, 4]  # 16 patches + class token, 2 heads of 4
    assert sites[NEURONS[0]]["kind"] == "token" and sites[NEURONS[0]]["units"] == 16
    heads = _run(["info", *_model(user, units="heads"), "--json"], capsys)
    assert [site["name"] for site in heads["layers"]] == HEADS
    mlp = _run(["info", *_model(user, units=" mlp ,"), "--json"], capsys)
    assert [site["name"] for site in mlp["layers"]] == NEURONS


def test_find_attribute_and_compare_gate_the_chosen_units(user, tmp_path, capsys) -> None:
    out = tmp_path / "p.safetensors"
    summary = _run(
        ["find", *_model(user), "--method", "cp-mct", "--sparsity", "0.5", "--limit", "4",
         "--granularity", "channel",
         "--reference-size", "16", "--no-progress", "--out", str(out)],
        capsys,
    )  # fmt: skip
    assert summary["n"] == 4
    pathway = Pathway.load(out)
    assert sorted(pathway) == sorted(HEADS + NEURONS)
    assert pathway[HEADS[0]].shape == (4, 2) and pathway[NEURONS[1]].shape == (4, 16)
    per_type = tmp_path / "per_type.safetensors"
    _run(
        ["find", *_model(user), "--method", "cp-mct", "--sparsity", "0.5", "--limit", "4",
         "--granularity", "channel", "--set", "selection=per_type", "--set", "head_sparsity=0",
         "--reference-size", "16", "--no-progress", "--out", str(per_type)],
        capsys,
    )  # fmt: skip
    budgets = Pathway.load(per_type)
    assert all(bool(budgets[name].all()) for name in HEADS)  # the heads' own budget: keep all
    kept = sum(int(budgets[name].sum()) for name in NEURONS)
    assert kept == 4 * 16  # half of 2 x 16 neurons per sample, one percentile over the MLPs
    head_only = tmp_path / "h.safetensors"
    _run(
        ["find", *_model(user, units="heads"), "--method", "random", "--limit", "4",
         "--granularity", "element", "--reference-size", "16", "--no-progress",
         "--out", str(head_only)],
        capsys,
    )  # fmt: skip
    assert sorted(Pathway.load(head_only)) == HEADS
    assert Pathway.load(head_only)[HEADS[1]].shape == (4, 17, 2)  # a head per token

    attribute = _run(
        ["attribute", *_model(user), "--method", "pathway-gradient", "--data", "synthetic", "--limit", "2",
         "--no-progress", "--out", str(tmp_path / "maps")],
        capsys,
    )  # fmt: skip
    assert attribute["n"] == 2
    rollout = _run(
        ["attribute", *_model(user, units=None), "--method", "attention-rollout", "--data",
         "synthetic", "--limit", "2", "--no-progress", "--out", str(tmp_path / "rollout")],
        capsys,
    )  # fmt: skip
    assert rollout["n"] == 2
    study = tmp_path / "study"
    _run(
        ["compare", *_model(user), "--methods", "random,cp-mct", "--limit", "4",
         "--j", "1", "--instances", "all", "--ablation", "zero", "--reference-size", "16",
         "--no-progress", "--out", str(study)],
        capsys,
    )  # fmt: skip
    assert sorted(Pathway.load(study / "pathways" / "cp-mct.safetensors")) == sorted(
        HEADS + NEURONS
    )
    config = json.loads((study / "results.json").read_text())["config"]
    assert config["unit_types"] == ["heads", "mlp"]
    # the per-layer profile labels heads and MLP neurons per block, in forward order
    layers = (study / "report.html").read_text().split('<section id="layers">')[1]
    layers = layers.split("</section>")[0]
    rows = ["block 0 heads", "block 0 MLP", "block 1 heads", "block 1 MLP"]
    positions = [layers.index(f"<tr><th>{row}</th>") for row in rows]
    assert positions == sorted(positions)
    assert layers.count("<td>") == len(rows) * 2  # one kept fraction per method


@pytest.mark.parametrize("rfe", ["conv", "token"])
def test_gencnp_fits_and_finds_on_heads_and_mlp_neurons(user, tmp_path, capsys, rfe) -> None:
    generator = tmp_path / "generator"
    fit = _run(
        ["fit-gencnp", *_model(user), "--limit", "16", "--epochs", "1", "--batch-size", "8",
         "--rfe", rfe, "--no-progress", "--out", str(generator)],
        capsys,
    )  # fmt: skip
    assert fit["epochs_done"] == 1
    meta = json.loads((generator / "meta.json").read_text())
    assert meta["generator_config"]["rfe"] == rfe
    out = tmp_path / "g.safetensors"
    _run(
        ["find", *_model(user), "--method", "gencnp", "--generator", str(generator),
         "--limit", "4", "--reference-size", "16", "--no-progress", "--out", str(out)],
        capsys,
    )  # fmt: skip
    pathway = Pathway.load(out)
    assert sorted(pathway) == sorted(HEADS + NEURONS)
    assert all(torch.all((m == 0) | (m == 1)) for m in pathway.values())


def test_bad_unit_choices_are_one_error_line(user, tmp_path, capsys) -> None:
    both = _error(["info", *_model(user), "--layers", NEURONS[0]], capsys)
    assert "--units and --layers" in both
    unknown = _error(["info", *_model(user, units="heads,tokens")], capsys)
    assert "unknown unit type(s) tokens" in unknown and "heads, mlp" in unknown
    assert "got nothing" in _error(["info", *_model(user, units=",")], capsys)
    assert "twice" in _error(["info", *_model(user, units="mlp,mlp")], capsys)
    no_heads = _error(["info", *_model(user, "cnn", units="heads")], capsys)
    assert "no attention heads" in no_heads
    no_mlp = _error(
        [
            "find",
            *_model(user, "cnn", units="mlp"),
            "--method",
            "random",
            "--out",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert "no MLP neurons" in no_mlp
    study = _error(
        ["compare", *_model(user, "cnn", units="heads"), "--methods", "random", "--limit", "2",
         "--out", str(tmp_path / "out")],
        capsys,
    )  # fmt: skip
    assert "no attention heads" in study
    rollout = _error(
        ["attribute", *_model(user, "cnn", units=None), "--method", "attention-rollout",
         "--data", "synthetic", "--limit", "2", "--out", str(tmp_path / "maps")],
        capsys,
    )  # fmt: skip
    assert "attention rollout needs a vision transformer" in rollout
    budget = _error(
        ["find", *_model(user), "--method", "cp-mct", "--set", "token_budget=18", "--limit", "2",
         "--no-progress", "--out", str(tmp_path / "p.safetensors")],
        capsys,
    )  # fmt: skip
    assert "token_budget=18 is larger than the sequence of 17 tokens" in budget


def test_attribute_grad_cam_on_the_vit_patch_tokens(user, tmp_path, capsys) -> None:
    for method in ("grad-cam", "pathway-grad-cam"):
        out = tmp_path / method
        summary = _run(
            ["attribute", *_model(user), "--method", method, "--data", "synthetic", "--limit",
             "2", "--no-progress", "--out", str(out)],
            capsys,
        )  # fmt: skip
        assert summary["n"] == 2
        maps = load_file(out / "maps.safetensors")["maps"]
        assert maps.shape == (2, 1, 16, 16) and (maps >= 0).all() and maps.amax() > 0
