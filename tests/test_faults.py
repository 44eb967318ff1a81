"""Fault injection: processes killed with SIGKILL mid-way, then resumed, must give the result of
an uninterrupted run (nothing lost, nothing duplicated)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from neuralpath.checkpoint import TargetMeta, save_target
from neuralpath.models import build_model
from neuralpath.store import INDEX, PathwayStore, shard_name, store_digest

EXTRACT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from neuralpath.data import load_dataset
    from neuralpath.methods import FinderOptions, build_finder
    from neuralpath.runner import open_target
    from neuralpath.store import extract

    target, out, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    _, gated = open_target(target, "cpu")
    finder = build_finder("cp-mct", gated, FinderOptions(sparsity=0.7))

    def maybe_die(k):
        if k == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    extract(finder, load_dataset("synthetic", "test", limit=48), out, num_classes=4,
            shard_size=8, batch_size=4, progress=False, on_shard=maybe_die)
    """
)


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    args = {"num_classes": 4, "in_channels": 3, "input_size": 32, "width": 0.125}
    meta = TargetMeta(
        arch="vgg11",
        arch_args=args,
        data="synthetic",
        input_shape=(3, 32, 32),
        num_classes=4,
        class_names=list("abcd"),
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
    )
    return save_target(
        tmp_path_factory.mktemp("t") / "t", build_model("vgg11", **args).eval(), meta
    )


def _extract(
    script: Path, target: Path, out: Path, kill_after: int
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(script), str(target), str(out), str(kill_after)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_extraction_killed_twice_then_resumed_equals_uninterrupted(
    target_dir: Path, tmp_path: Path
) -> None:
    script = tmp_path / "extract.py"
    script.write_text(EXTRACT)
    whole = _extract(script, target_dir, tmp_path / "whole", kill_after=-1)
    assert whole.returncode == 0, whole.stderr
    first = _extract(script, target_dir, tmp_path / "killed", kill_after=1)
    assert first.returncode == -signal.SIGKILL
    names = sorted(p.name for p in (tmp_path / "killed").iterdir())
    assert names == [INDEX, shard_name(0), shard_name(1)]  # no temporary or partial shard left
    second = _extract(script, target_dir, tmp_path / "killed", kill_after=3)
    assert second.returncode == -signal.SIGKILL
    assert (tmp_path / "killed" / shard_name(3)).exists() and not (
        tmp_path / "killed" / shard_name(4)
    ).exists()
    resumed = _extract(script, target_dir, tmp_path / "killed", kill_after=-1)
    assert resumed.returncode == 0, resumed.stderr
    assert store_digest(tmp_path / "killed") == store_digest(tmp_path / "whole")
    store = PathwayStore(tmp_path / "killed")
    assert len(store) == 48 and store.labels.shape == (48,)
    reference = PathwayStore(tmp_path / "whole")
    assert torch.equal(store.class_pathways().counts, reference.class_pathways().counts)


FIT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from torch.utils.data import Dataset
    from neuralpath.data import load_dataset
    from neuralpath.methods.gencnp import FitConfig, GeneratorConfig, fit_gencnp
    from neuralpath.runner import open_target

    target, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])

    class DiesAfter(Dataset):
        # Kills its own process (SIGKILL, no clean-up) at the kill_at-th image it serves.
        def __init__(self, inner):
            self.inner, self.served = inner, 0
        def __len__(self):
            return len(self.inner)
        def __getitem__(self, i):
            self.served += 1
            if self.served == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return self.inner[i]

    _, gated = open_target(target, "cpu")
    config = FitConfig(epochs=3, batch_size=16, lr=3e-3, alpha=0.5, val_fraction=0.0,
                       generator=GeneratorConfig(width=16, rfe_width=8, heads=2))
    data = DiesAfter(load_dataset("synthetic", "train", limit=64))
    fit_gencnp(gated, data, config, out_dir=out, resume=True, progress=False)
    """
)


def test_gencnp_training_killed_mid_epoch_resumes_to_the_same_generator(
    target_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    script = tmp_path / "fit.py"
    script.write_text(FIT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def fit(out: Path, kill_at: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), str(target_dir), str(out), str(kill_at)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    straight = fit(tmp_path / "straight", kill_at=-1)
    assert straight.returncode == 0, straight.stderr
    killed = fit(tmp_path / "killed", kill_at=64 + 40)  # 40 images into epoch 2
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "killed" / "meta.json").read_text())["epochs_done"] == 1
    resumed = fit(tmp_path / "killed", kill_at=-1)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "killed" / "meta.json").read_text())["epochs_done"] == 3
    a = load_file(tmp_path / "straight" / "generator.safetensors")
    b = load_file(tmp_path / "killed" / "generator.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
