"""Training runs too short for the one-cycle schedule still train (constant learning rate)."""

from __future__ import annotations

from pathlib import Path

from neuralpath.train import MIN_ONE_CYCLE_STEPS, train_target


def test_training_with_very_few_steps(tmp_path: Path) -> None:
    # 64 images in batches of 32 for one epoch: 2 steps, fewer than a one-cycle warm-up needs.
    assert MIN_ONE_CYCLE_STEPS > 2
    result = train_target(
        "vgg11",
        "synthetic",
        epochs=1,
        limit=64,
        batch_size=32,
        width=0.125,
        device="cpu",
        progress=False,
        out_dir=tmp_path / "t",
    )
    assert 0.0 <= result.test_accuracy <= 1.0
    assert (tmp_path / "t" / "model.safetensors").is_file()
