"""Pointing game and relevance mass on hand-built masks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neuralpath.errors import InputError, ShapeError
from neuralpath.metrics.localisation import (
    PointingGame,
    RelevanceMass,
    dilate,
    localisation_summary,
)


def hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, 1:3, 1:3] = True  # the centre 2x2 square
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 2] = 5.0  # inside
    maps[0, 0, 0] = 1.0
    maps[0, 3, 3] = -2.0
    maps[1, 0, 3] = 4.0  # outside, Chebyshev distance 1, Euclidean sqrt(2) from (1, 2)
    maps[1, 2, 2] = 3.0
    return maps, masks


def test_pointing_game_hand() -> None:
    maps, masks = hand_case()
    assert PointingGame()(maps, masks).tolist() == [1.0, 0.0]
    assert PointingGame(tolerance=1.0)(maps, masks).tolist() == [1.0, 0.0]  # sqrt(2) > 1
    assert PointingGame(tolerance=1.5)(maps, masks).tolist() == [1.0, 1.0]
    assert PointingGame.higher_is_better and PointingGame.direction == "higher"


def test_pointing_game_uses_magnitude_by_default() -> None:
    maps, masks = hand_case()
    maps[0, 3, 3] = -9.0  # the largest magnitude, outside
    assert PointingGame()(maps, masks)[0].item() == 0.0
    assert PointingGame(reduction="sum")(maps, masks)[0].item() == 1.0


def test_pointing_game_ties_take_first_pixel() -> None:
    masks = torch.zeros(1, 3, 3, dtype=torch.bool)
    masks[0, 2, 2] = True
    maps = torch.ones(1, 3, 3)  # all tied: (0, 0) counts
    assert PointingGame()(maps, masks).item() == 0.0
    masks[0, 0, 0] = True
    assert PointingGame()(maps, masks).item() == 1.0


def test_relevance_mass_hand() -> None:
    maps, masks = hand_case()
    mass = RelevanceMass()(maps, masks)
    # sample 0: positive relevance 5 (in) + 1 (out); the -2 is ignored -> 5/6
    # sample 1: 3 (in) + 4 (out) -> 3/7
    torch.testing.assert_close(mass, torch.tensor([5 / 6, 3 / 7]))
    assert RelevanceMass()(-maps.abs(), masks).tolist() == [0.0, 0.0]  # no positive relevance
    summary = localisation_summary(PointingGame()(maps, masks), mass)
    assert summary["pointing_game"] == 0.5 and summary["relevance_mass"] == pytest.approx(
        (5 / 6 + 3 / 7) / 2
    )


def test_channel_maps_are_reduced() -> None:
    maps, masks = hand_case()
    three = maps.unsqueeze(1).repeat(1, 3, 1, 1) / 3  # sum over channels gives maps back
    torch.testing.assert_close(RelevanceMass()(three, masks), RelevanceMass()(maps, masks))
    assert PointingGame()(three, masks).tolist() == PointingGame()(maps, masks).tolist()


def test_dilate_disk() -> None:
    mask = torch.zeros(1, 5, 5, dtype=torch.bool)
    mask[0, 2, 2] = True
    assert dilate(mask, 1.0).sum().item() == 5  # plus shape
    assert dilate(mask, 1.5).sum().item() == 9
    assert torch.equal(dilate(mask, 0.0), mask)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(2, 6), st.integers(0, 10_000))
def test_scores_in_range_and_full_mask(batch, side, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    maps = torch.randn(batch, side, side, generator=gen)
    masks = torch.rand(batch, side, side, generator=gen) > 0.5
    masks[:, 0, 0] = True
    mass = RelevanceMass()(maps, masks)
    assert torch.all((mass >= 0) & (mass <= 1 + 1e-6))
    full = torch.ones_like(masks)
    assert torch.all(PointingGame()(maps, full) == 1)
    has_positive = (maps > 0).flatten(1).any(dim=1)
    torch.testing.assert_close(RelevanceMass()(maps, full), has_positive.float())


def test_bad_input() -> None:
    maps, masks = hand_case()
    with pytest.raises(ShapeError):
        PointingGame()(maps, masks[:, :3])
    with pytest.raises(ShapeError):
        RelevanceMass()(maps, masks[0])
    with pytest.raises(InputError):
        RelevanceMass()(maps[:0], masks[:0])
    with pytest.raises(InputError):
        PointingGame()(maps, torch.zeros_like(masks))  # empty masks
    with pytest.raises(InputError):
        PointingGame(tolerance=-1)
    with pytest.raises(InputError):
        RelevanceMass()(torch.full_like(maps, float("nan")), masks)


def test_cli_end_to_end_on_synthetic(tmp_path) -> None:
    """``neuralpath evaluate-attribution`` on the synthetic shapes (which have masks)."""
    import json

    from neuralpath.checkpoint import TargetMeta, save_target
    from neuralpath.cli import main
    from neuralpath.data import SYNTHETIC_CLASSES, SYNTHETIC_MEAN, SYNTHETIC_STD
    from neuralpath.models import build_model

    args = {
        "num_classes": len(SYNTHETIC_CLASSES),
        "in_channels": 3,
        "input_size": 16,
        "width": 0.125,
    }
    meta = TargetMeta(
        "vgg11",
        args,
        "synthetic",
        (3, 16, 16),
        len(SYNTHETIC_CLASSES),
        list(SYNTHETIC_CLASSES),
        SYNTHETIC_MEAN,
        SYNTHETIC_STD,
    )
    save_target(tmp_path / "ckpt", build_model("vgg11", **args), meta)
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate-attribution",
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--methods",
            "gradient,grad-cam",
            "--metrics",
            "lerf,insertion,localisation",
            "--limit",
            "6",
            "--steps",
            "4",
            "--percentages",
            "5,10",
            "--out",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    payload = json.loads((out / "results.json").read_text())
    assert payload["samples"] == 6 and set(payload["results"]) == {"gradient", "grad-cam"}
    for row in payload["results"].values():
        assert 0 <= row["localisation"]["relevance_mass"] <= 1
        assert len(row["lerf"]["curve"]) == 2 and 0 <= row["insertion"]["area"] <= 1
    table = (out / "results.md").read_text()
    assert "| gradient |" in table and "pointing" in table
    assert (out / "perturbation_curves.png").stat().st_size > 0
    bad = main(
        [
            "evaluate-attribution",
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--metrics",
            "lerf",
            "--methods",
            "gradient",
            "--percentages",
            "0,5",
            "--limit",
            "4",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert bad == 2
