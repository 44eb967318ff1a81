"""GEN-CNP under ``torchrun --nproc_per_node=2`` (gloo) equals one process with the same global batch,
under zero ablation and under mean ablation.

Run as a script by torchrun (``python tests/test_gencnp_ddp.py OUT_DIR``), this file is the
worker: in one process group it fits a tiny generator with DDP into ``OUT_DIR/zero``, then (rank
0 computing and storing the reference statistics in ``OUT_DIR/target`` first, rank 1 loading
them) another under mean ablation into ``OUT_DIR/mean``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from neuralpath.data import load_dataset
from neuralpath.gating import GatedModel
from neuralpath.methods.gencnp import (
    FitConfig,
    GeneratorConfig,
    PathwayGenerator,
    fit_gencnp,
    load_generator,
)
from neuralpath.methods.gencnp.train import distributed, main_process_first
from neuralpath.runner import open_reference

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a torchrun worker script, not by pytest
    sys.path.insert(0, str(HERE))

from toys import tiny_cnn  # noqa: E402

# 80 images, 20 % held out: 64 training images = 4 global batches of 16 per epoch.
CONFIG = FitConfig(
    epochs=2,
    batch_size=16,
    lr=3e-3,
    alpha=2.0,
    val_fraction=0.2,
    generator=GeneratorConfig(width=16, rfe_width=8, heads=2, resolution=2),
)


def _problem() -> tuple[GatedModel, Dataset]:
    model = tiny_cnn(seed=3, num_classes=4)
    dataset = load_dataset("synthetic", "train", limit=80, image_size=8)
    return GatedModel.discover(model, torch.zeros(1, 3, 8, 8)), dataset


def _mean_ablation(gated: GatedModel, dataset: Dataset, directory: Path) -> GatedModel:
    reference = open_reference(directory, gated, dataset, size=32, progress=False)
    return gated.with_intervention(reference.intervention("mean"))


def _worker(out_dir: str) -> None:
    torch.set_num_threads(1)
    gated, dataset = _problem()
    out = Path(out_dir)
    with distributed("cpu") as env:
        fit_gencnp(gated, dataset, CONFIG, out_dir=out / "zero", progress=False, device="cpu")
        with main_process_first(env):
            mean = _mean_ablation(gated, dataset, out / "target")
        fit_gencnp(mean, dataset, CONFIG, out_dir=out / "mean", progress=False, device="cpu")


def test_torchrun_two_processes_equal_one(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]),
    )
    result = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node=2",
            "--standalone",
            str(Path(__file__).resolve()),
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    gated, dataset = _problem()
    for name in ("zero", "mean"):
        trained = gated if name == "zero" else _mean_ablation(gated, dataset, tmp_path / "target")
        single = fit_gencnp(trained, dataset, CONFIG, out_dir=tmp_path / name, progress=False)
        loaded = load_generator(out / name, gated)
        assert loaded.ablation == name
        _check_equal(gated, dataset, single, loaded.generator, loaded.meta)


def _check_equal(
    gated: GatedModel,
    dataset: Dataset,
    single: PathwayGenerator,
    ddp: PathwayGenerator,
    meta: dict[str, Any],
) -> None:
    """The DDP generator (``meta``: its checkpoint's) equals the one-process ``single``."""
    assert meta["world_size"] == 2 and meta["epochs_done"] == 2
    width = CONFIG.generator.width
    for (name, a), (_, b) in zip(
        single.state_dict().items(), ddp.state_dict().items(), strict=True
    ):
        if name.endswith("self_attn.in_proj_bias"):
            # The key bias has a zero gradient (softmax ignores it); Adam turns rounding noise
            # into lr-sized steps there, so only the query and value biases are compared.
            a, b = torch.cat([a[:width], a[2 * width :]]), torch.cat([b[:width], b[2 * width :]])
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    images = torch.stack([dataset[i][0] for i in range(16)])
    _, recording = gated.record(images)
    with torch.no_grad():
        one = single(recording.activations).scores
        two = ddp(recording.activations).scores
    for name in one:
        torch.testing.assert_close(one[name], two[name], atol=1e-5, rtol=1e-4)
    for first, second in zip(single.fit_history, meta["history"], strict=True):
        for key in ("train_loss", "train_kept_fraction", "val_loss", "val_agreement"):
            assert abs(first[key] - second[key]) < 1e-4, key
    # training moved the generator (the equality is not that of two untouched initialisations)
    assert single.fit_history[-1]["train_loss"] != single.fit_history[0]["train_loss"]


if __name__ == "__main__":
    _worker(sys.argv[1])
