"""``--ablation`` and the reference statistics through the CLI: find, class-pathways, attribute,
the ``reference`` command, stale or foreign reference files, and the leakage warning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import neuralpath.reference
from neuralpath.cli import main
from neuralpath.io import state_digest
from neuralpath.pathway import Pathway

from contract import LEAKAGE_KEYS
from toys import save_centred_vgg


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_centred_vgg(tmp_path_factory.mktemp("targets") / "t", seed=0)


@pytest.fixture
def target(stored: Path, tmp_path: Path) -> Path:
    """A fresh copy of the target (no reference statistics yet)."""
    return Path(shutil.copytree(stored, tmp_path / "target"))


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the reference statistics actually computed (not loaded)."""
    calls: list[int] = []
    compute = neuralpath.reference.reference_statistics

    def counting(*args, **kwargs):
        calls.append(1)
        return compute(*args, **kwargs)

    monkeypatch.setattr(neuralpath.reference, "reference_statistics", counting)
    return calls


def _find(target: Path, out: Path, *extra: str) -> list[str]:
    return [
        "find", "--checkpoint", str(target), "--method", "cp-mct", "--sparsity", "0.5",
        "--data", "synthetic", "--limit", "16", "--batch-size", "16", "--reference-size", "64",
        "--no-progress", "--device", "cpu", "--out", str(out), *extra,
    ]  # fmt: skip


def _references(target: Path) -> list[Path]:
    return sorted((target / "reference").glob("*.safetensors"))


def test_find_under_mean_and_resample(target, tmp_path, capsys, computed) -> None:
    assert main(_find(target, tmp_path / "mean.safetensors", "--ablation", "mean")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) >= LEAKAGE_KEYS and summary["ablation"] == "mean"
    assert summary["swap_n"] > 0 and 0 <= summary["swap_follows_mask"] <= 1
    assert len(_references(target)) == 1 and len(computed) == 1
    metadata = Pathway.load(tmp_path / "mean.safetensors").metadata
    assert metadata["ablation"] == "mean" and metadata["summary"] == summary
    assert metadata["intervention"]["reference"]["count"] == 64

    assert main(_find(target, tmp_path / "resample.safetensors", "--ablation", "resample")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) >= LEAKAGE_KEYS and summary["ablation"] == "resample"
    assert len(computed) == 1  # the stored reference was reused

    assert main(_find(target, tmp_path / "again.safetensors", "--recompute-reference")) == 0
    assert json.loads(capsys.readouterr().out)["ablation"] == "zero"
    assert len(computed) == 2 and len(_references(target)) == 1


def test_reference_of_other_weights_is_refused(target, tmp_path, capsys) -> None:
    other = save_centred_vgg(tmp_path / "other", seed=1)
    code = main([
        "reference", "--checkpoint", str(other), "--reference-size", "32", "--no-progress",
        "--device", "cpu",
    ])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    from neuralpath.checkpoint import load_target

    assert printed["count"] == 32 and Path(printed["path"]).is_file()
    assert printed["target_digest"] == state_digest(load_target(str(other), "cpu").model)
    assert printed["source"]["data"] == "synthetic" and printed["source"]["split"] == "train"
    # the same layers, so the same file name: another target's statistics in this target's place
    foreign = target / "reference" / Path(printed["path"]).name
    foreign.parent.mkdir()
    shutil.copy(printed["path"], foreign)
    out = tmp_path / "p.safetensors"
    assert main(_find(target, out, "--ablation", "mean")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("neuralpath: error: reference statistics were computed for other")
    assert not out.exists() and _references(target) == [foreign]


def test_unknown_ablation_is_a_clear_error(target, tmp_path, capsys) -> None:
    out = tmp_path / "p.safetensors"
    assert main(_find(target, out, "--ablation", "bogus")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "neuralpath: error: unknown ablation 'bogus'; expected one of zero, mean, resample"
    ]
    assert not out.exists() and not (target / "reference").exists()
    code = main([
        "compare", "--checkpoint", str(target), "--methods", "cp-mct", "--ablation", "zero,bogus",
        "--out", str(tmp_path / "study"),
    ])  # fmt: skip
    assert code == 2 and "unknown ablation 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


def test_a_leaking_run_warns_once(target, tmp_path, capsys, monkeypatch) -> None:
    import neuralpath.metrics.leakage

    monkeypatch.setattr(neuralpath.metrics.leakage, "LEAK_WARNING_THRESHOLD", -1.0)
    assert main(_find(target, tmp_path / "p.safetensors")) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out)["swap_n"] > 0
    lines = printed.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neuralpath: warning: cp-mct: ")
    assert "follows the mask, not the input" in lines[0] and "zero ablation" in lines[0]


def test_class_pathways_transfer_has_specificity(target, tmp_path, capsys) -> None:
    code = main([
        "class-pathways", "--checkpoint", str(target), "--method", "cp-mct", "--sparsity", "0.5",
        "--data", "synthetic", "--j", "2", "--instances", "all", "--build-limit", "64",
        "--limit", "16", "--ablation", "mean", "--reference-size", "64", "--out",
        str(tmp_path / "classes"), "--no-progress", "--device", "cpu",
    ])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ablation"] == "mean" and printed["instance"]["ablation"] == "mean"
    transfer = printed["transfer"]
    assert (LEAKAGE_KEYS | {"transfer_specificity"}) <= set(transfer)
    assert transfer["ablation"] == "mean" and 0 <= transfer["transfer_specificity"] <= 1


def test_attribute_under_mean_ablation(target, tmp_path, capsys) -> None:
    common = [
        "attribute", "--checkpoint", str(target), "--data", "synthetic", "--limit", "3",
        "--no-png", "--no-progress", "--device", "cpu", "--reference-size", "32",
    ]  # fmt: skip
    code = main([*common, "--method", "pathway-gradient", "--ablation", "mean", "--out",
                 str(tmp_path / "maps")])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["ablation"] == "mean" and printed["intervention"]["reference"]["count"] == 32
    assert json.loads((tmp_path / "maps" / "meta.json").read_text())["ablation"] == "mean"
    code = main([*common, "--method", "gradient", "--ablation", "mean", "--out",
                 str(tmp_path / "plain")])  # fmt: skip
    assert code == 2 and "no pathway model for --ablation" in capsys.readouterr().err
    assert not (tmp_path / "plain").exists()


@pytest.mark.parametrize("command", ["find", "extract", "class-pathways", "attribute", "compare"])
def test_help_names_the_ablations_and_the_reference_size(command, capsys) -> None:
    from neuralpath.runner import DEFAULT_REFERENCE_SIZE

    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--ablation" in text and "--recompute-reference" in text
    assert all(name in text for name in ("zero", "mean", "resample", "leakage controls"))
    assert f"(default {DEFAULT_REFERENCE_SIZE})" in text


def test_compare_takes_one_generator_per_ablation() -> None:
    from neuralpath.cli.compare import _generators
    from neuralpath.errors import InputError
    from neuralpath.study import StudyConfig

    assert _generators(["g0"]) == ("g0", {})
    assert _generators(["g0", "mean=g1"]) == ("g0", {"mean": "g1"})
    assert _generators(["zero=a", "mean=b"]) == (None, {"zero": "a", "mean": "b"})
    assert _generators(["./odd=name"]) == ("./odd=name", {})  # not an ablation: a path
    with pytest.raises(InputError, match="twice"):
        _generators(["a", "b"])
    config = StudyConfig(methods=("gencnp",), generator="g0", generators={"mean": "g1"})
    assert (config.generator_for("zero"), config.generator_for("mean")) == ("g0", "g1")
    with pytest.raises(InputError, match="ablation\\(s\\) zero"):
        StudyConfig(methods=("gencnp",), generators={"mean": "g1"})
    with pytest.raises(InputError, match="not in the study"):
        StudyConfig(methods=("gencnp",), generator="g", generators={"resample": "g1"})
