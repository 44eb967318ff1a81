"""The README's Python example runs as written (on a tiny Fashion-MNIST target in a temp dir)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from neuralpath.train import train_target

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1
    code = blocks[0]
    assert (
        'load_target("runs/vgg11-fmnist")' in code
        and 'load_dataset("fashion-mnist", "test")' in code
    )
    train_target(
        "vgg11", "fashion-mnist", epochs=1, width=0.125, limit=128, out_dir=tmp_path / "runs" / "vgg11-fmnist",
        progress=False, device="cpu",
    )  # fmt: skip
    monkeypatch.chdir(tmp_path)
    code = code.replace(
        'load_dataset("fashion-mnist", "test")', 'load_dataset("fashion-mnist", "test", limit=64)'
    )
    namespace: dict[str, object] = {}
    exec(compile(code, str(README), "exec"), namespace)
    result = namespace["result"]
    assert result.kept_prediction.shape == (64,) and result.gates.is_binary is False
    pathway = namespace["pathway"]
    assert torch.allclose(pathway.kept_fraction(), torch.full((64,), 0.1), atol=0.01)
    assert "agreement" in capsys.readouterr().out


def test_readme_documents_the_leakage_contract() -> None:
    from dataclasses import fields

    from neuralpath.interventions import ABLATIONS
    from neuralpath.metrics.leakage import HIGHER_IS_BETTER, LeakageOutcome, summarize_leakage

    outcome = LeakageOutcome(**{f.name: torch.zeros(2) for f in fields(LeakageOutcome)})
    keys = {"ablation", *HIGHER_IS_BETTER, *summarize_leakage(outcome)}
    text = README.read_text()
    assert [key for key in sorted(keys) if f"`{key}`" not in text] == []
    assert "--ablation" in text and all(name in text for name in ABLATIONS)
    assert "neuralpath reference" in text and "neuralpath: warning:" in text
