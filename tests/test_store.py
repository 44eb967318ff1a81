"""Pathway store: extraction, random access, resume after a kill, torchrun byte-identity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuralpath.data import load_dataset
from neuralpath.errors import CheckpointError, InputError
from neuralpath.methods import FinderOptions, build_finder
from neuralpath.pathway import aggregate_by_class
from neuralpath.runner import open_target, run_finder
from neuralpath.store import INDEX, PathwayStore, extract, shard_name, store_digest

from contract import LEAKAGE_KEYS
from toys import save_centred_vgg


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_centred_vgg(tmp_path_factory.mktemp("target") / "t")


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", "test", limit=70)


def _finder(target_dir: Path, method: str = "cp-mct"):
    _, gated = open_target(str(target_dir), "cpu")
    return build_finder(method, gated, FinderOptions(sparsity=0.7, granularity="channel"))


def test_store_matches_in_memory_pathways(target_dir: Path, data, tmp_path: Path) -> None:
    finder = _finder(target_dir)
    out = extract(
        finder, data, tmp_path / "s", num_classes=4, shard_size=16, batch_size=8, progress=False
    )
    store = PathwayStore(out)
    run = run_finder(finder, data, batch_size=8, progress=False)
    assert len(store) == 70 and int(store.index["shards"]) == 5
    assert torch.equal(store.labels, run.labels)
    assert torch.equal(store.predictions, run.outcome.prediction)
    torch.testing.assert_close(store.kept_fraction, run.outcome.kept_fraction)
    some = [69, 3, 17, 40]
    loaded = store.pathways(some)
    expected = run.pathway.select(some)
    assert all(torch.equal(loaded[n], expected[n]) for n in expected)
    classes = aggregate_by_class(run.pathway, run.outcome.prediction, 4)
    from_store = store.class_pathways()
    assert torch.equal(from_store.counts, classes.counts)
    for name in classes.frequency:
        torch.testing.assert_close(from_store.frequency[name], classes.frequency[name])
        c = int(classes.counts.argmax())
        torch.testing.assert_close(store.class_frequency(c)[name][0], classes.frequency[name][c])
    # Bit-packed: a shard costs about units/8 bytes per sample plus small per-sample columns.
    units = sum(s.units for s in finder.gated.sites)
    assert store.index["bytes_per_sample"] < units / 8 + 40 + 4096 / 16
    assert 0 <= store.aciou() <= 100


class _Killed(RuntimeError):
    pass


def test_killed_extraction_resumes_without_loss_or_duplication(
    target_dir: Path, data, tmp_path: Path
) -> None:
    finder = _finder(target_dir)
    whole = extract(
        finder, data, tmp_path / "whole", num_classes=4, shard_size=16, batch_size=8, progress=False
    )

    def kill_after_second(k: int) -> None:
        if k == 1:
            raise _Killed

    with pytest.raises(_Killed):
        extract(
            finder,
            data,
            tmp_path / "part",
            num_classes=4,
            shard_size=16,
            batch_size=8,
            progress=False,
            on_shard=kill_after_second,
        )
    written = sorted(p.name for p in (tmp_path / "part").iterdir())
    assert written == [INDEX, shard_name(0), shard_name(1)]
    with pytest.raises(CheckpointError, match="incomplete"):
        PathwayStore(tmp_path / "part")
    resumed_shards: list[int] = []
    extract(
        finder,
        data,
        tmp_path / "part",
        num_classes=4,
        shard_size=16,
        batch_size=8,
        progress=False,
        on_shard=resumed_shards.append,
    )
    assert resumed_shards == [2, 3, 4]
    assert store_digest(tmp_path / "part") == store_digest(whole)
    assert torch.equal(PathwayStore(tmp_path / "part").labels, PathwayStore(whole).labels)


def test_store_errors(target_dir: Path, data, tmp_path: Path) -> None:
    finder = _finder(target_dir)
    out = extract(
        finder,
        data,
        tmp_path / "s",
        num_classes=4,
        shard_size=32,
        batch_size=8,
        limit=20,
        progress=False,
    )
    with pytest.raises(CheckpointError, match="another extraction"):
        extract(finder, data, out, num_classes=4, shard_size=16, batch_size=8, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not a pathway store"):
        extract(finder, data, tmp_path / "other", num_classes=4, progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    store = PathwayStore(out)
    with pytest.raises(InputError, match="not in the store"):
        store.pathways([20])
    with pytest.raises(InputError, match="out of range"):
        store.class_frequency(4)
    shard = out / shard_name(0)
    shard.write_bytes(shard.read_bytes()[:50])
    with pytest.raises(CheckpointError):
        PathwayStore(out).pathways([0])
    with pytest.raises(CheckpointError, match="not a neuralpath pathway store"):
        PathwayStore(tmp_path / "other")


def test_torchrun_two_processes_write_identical_store(target_dir: Path, tmp_path: Path) -> None:
    common = [
        "extract",
        "--checkpoint",
        str(target_dir),
        "--method",
        "cp-mct",
        "--sparsity",
        "0.7",
        "--data",
        "synthetic",
        "--limit",
        "40",
        "--shard-size",
        "8",
        "--batch-size",
        "8",
        "--no-progress",
        "--device",
        "cpu",
        "--ablation",
        "mean",
        "--reference-size",
        "64",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    single = subprocess.run(
        [sys.executable, "-m", "neuralpath", *common, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    double = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "neuralpath",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr
    assert store_digest(tmp_path / "one") == store_digest(tmp_path / "two")
    one, two = PathwayStore(tmp_path / "one"), PathwayStore(tmp_path / "two")
    assert one.summary == two.summary and one.summary["ablation"] == "mean"
    assert json.loads(single.stdout)["swap_n"] == one.summary["swap_n"] > 0
    assert torch.equal(one.class_pathways().counts, two.class_pathways().counts)
    for name in one.class_pathways().frequency:
        assert torch.equal(
            one.class_pathways().frequency[name], two.class_pathways().frequency[name]
        )


def test_find_in_chunks_equals_one_call(target_dir: Path, data) -> None:
    from neuralpath.methods import find_in_chunks

    _, gated = open_target(str(target_dir), "cpu")
    x = torch.stack([data[i][0] for i in range(7)])
    target = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    for method in ("cp-mct", "cp-intgrad", "active"):
        finder = build_finder(method, gated, FinderOptions(sparsity=0.8, granularity="element"))
        whole = finder.find(x, target)
        chunked = find_in_chunks(finder, x, target, internal_batch_size=3)
        assert all(torch.equal(whole[n], chunked[n]) for n in whole), method
    with pytest.raises(InputError, match="internal_batch_size"):
        find_in_chunks(finder, x, None, internal_batch_size=0)


def test_store_follows_the_finders_own_layout(target_dir: Path, data, tmp_path: Path) -> None:
    # DGR keeps its granularity in its config: the store must take the layout from its pathways.
    from neuralpath.methods.dgr import DGR, DGRConfig

    _, gated = open_target(str(target_dir), "cpu")
    finder = DGR(
        gated, DGRConfig(granularity="element", iterations=2, binarize="percentile", sparsity=0.7)
    )
    out = extract(
        finder,
        data,
        tmp_path / "s",
        num_classes=4,
        shard_size=4,
        batch_size=4,
        limit=6,
        progress=False,
    )
    store = PathwayStore(out)
    assert store.granularity == "element"
    expected = finder.find(torch.stack([data[i][0] for i in range(6)]))
    loaded = store.pathways(list(range(6)))
    assert all(torch.equal(loaded[n], expected[n]) for n in expected)


def test_store_records_the_ablation_and_leakage(target_dir: Path, data, tmp_path: Path) -> None:
    from neuralpath.interventions import MeanAblation
    from neuralpath.reference import reference_statistics

    _, gated = open_target(str(target_dir), "cpu")
    train = load_dataset("synthetic", "train", limit=64)
    statistics = reference_statistics(gated, train, progress=False)
    mean = gated.with_intervention(MeanAblation(statistics))
    finder = build_finder("cp-mct", mean, FinderOptions(sparsity=0.7))
    common = {"batch_size": 8, "limit": 40, "progress": False}
    leak = {"baseline": statistics.input_mean, "seed": 3}
    out = extract(finder, data, tmp_path / "s", num_classes=4, shard_size=16, **common, **leak)
    store = PathwayStore(out)
    run = run_finder(finder, data, **common, **leak)  # the same batches as the shards'
    assert store.summary == {key: run.summary()[key] for key in sorted(LEAKAGE_KEYS)}
    assert store.summary["ablation"] == "mean" and store.summary["swap_n"] > 0
    assert store.index["intervention"] == mean.intervention.describe()
    zero = build_finder("cp-mct", gated, FinderOptions(sparsity=0.7))
    with pytest.raises(CheckpointError, match="another extraction"):
        extract(zero, data, out, num_classes=4, shard_size=16, **common, **leak)
