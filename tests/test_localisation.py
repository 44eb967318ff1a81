"""Pointing game and relevance mass on hand-built masks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from neuralpath.errors import InputError, ShapeError
from neuralpath.metrics.localisation import (
    LocalisationResult,
    PointingGame,
    RelevanceMass,
    dilate,
    localisation_summary,
)


def score(metric: PointingGame | RelevanceMass, maps: torch.Tensor, masks: torch.Tensor):
    """``metric``'s scores ``[B]`` of given ``maps`` (its call shape: model, inputs, targets,
    explanation; given maps need neither the model nor the targets)."""
    channels = maps.shape[1] if maps.dim() == 4 else 1
    inputs = torch.zeros(maps.shape[0], channels, *maps.shape[-2:])
    return metric(nn.Identity(), inputs, None, maps, masks=masks).scores


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
    assert score(PointingGame(), maps, masks).tolist() == [1.0, 0.0]
    assert score(PointingGame(tolerance=1.0), maps, masks).tolist() == [1.0, 0.0]  # sqrt(2) > 1
    assert score(PointingGame(tolerance=1.5), maps, masks).tolist() == [1.0, 1.0]
    assert PointingGame.higher_is_better and PointingGame.direction == "higher"


def test_pointing_game_uses_magnitude_by_default() -> None:
    maps, masks = hand_case()
    maps[0, 3, 3] = -9.0  # the largest magnitude, outside
    assert score(PointingGame(), maps, masks)[0].item() == 0.0
    assert score(PointingGame(reduction="sum"), maps, masks)[0].item() == 1.0


def test_pointing_game_ties_take_first_pixel() -> None:
    masks = torch.zeros(1, 3, 3, dtype=torch.bool)
    masks[0, 2, 2] = True
    maps = torch.ones(1, 3, 3)  # all tied: (0, 0) counts
    assert score(PointingGame(), maps, masks).item() == 0.0
    masks[0, 0, 0] = True
    assert score(PointingGame(), maps, masks).item() == 1.0


def test_relevance_mass_hand() -> None:
    maps, masks = hand_case()
    mass = score(RelevanceMass(), maps, masks)
    # sample 0: positive relevance 5 (in) + 1 (out); the -2 is ignored -> 5/6
    # sample 1: 3 (in) + 4 (out) -> 3/7
    torch.testing.assert_close(mass, torch.tensor([5 / 6, 3 / 7]))
    assert score(RelevanceMass(), -maps.abs(), masks).tolist() == [
        0.0,
        0.0,
    ]  # no positive relevance
    inputs = torch.zeros(2, 1, 4, 4)
    hits = PointingGame()(nn.Identity(), inputs, None, maps, masks=masks)
    both = RelevanceMass()(nn.Identity(), inputs, None, maps, masks=masks)
    assert isinstance(hits, LocalisationResult) and hits.summary()["score"] == 0.5
    summary = localisation_summary(hits, both)
    assert summary["pointing_game"] == 0.5 and summary["relevance_mass"] == pytest.approx(
        (5 / 6 + 3 / 7) / 2
    )


def test_channel_maps_are_reduced() -> None:
    maps, masks = hand_case()
    three = maps.unsqueeze(1).repeat(1, 3, 1, 1) / 3  # sum over channels gives maps back
    torch.testing.assert_close(
        score(RelevanceMass(), three, masks), score(RelevanceMass(), maps, masks)
    )
    assert (
        score(PointingGame(), three, masks).tolist() == score(PointingGame(), maps, masks).tolist()
    )


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
    mass = score(RelevanceMass(), maps, masks)
    assert torch.all((mass >= 0) & (mass <= 1 + 1e-6))
    full = torch.ones_like(masks)
    assert torch.all(score(PointingGame(), maps, full) == 1)
    has_positive = (maps > 0).flatten(1).any(dim=1)
    torch.testing.assert_close(score(RelevanceMass(), maps, full), has_positive.float())


def test_bad_input() -> None:
    maps, masks = hand_case()
    with pytest.raises(ShapeError):
        score(PointingGame(), maps, masks[:, :3])
    with pytest.raises(ShapeError):
        score(RelevanceMass(), maps, masks[0])
    with pytest.raises(InputError):
        score(RelevanceMass(), maps[:0], masks[:0])
    with pytest.raises(InputError):
        score(PointingGame(), maps, torch.zeros_like(masks))  # empty masks
    with pytest.raises(InputError):
        PointingGame(tolerance=-1)
    with pytest.raises(InputError):
        score(RelevanceMass(), torch.full_like(maps, float("nan")), masks)
    with pytest.raises(InputError, match="masks"):
        PointingGame()(nn.Identity(), torch.zeros(2, 1, 4, 4), None, maps)


def test_an_explainer_is_called_on_the_inputs_for_the_targets() -> None:
    """The one call shape: an explainer instead of maps gets the inputs and the targets (the
    model's prediction when None)."""
    maps, masks = hand_case()
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    inputs = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    seen = []

    def explain(x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        seen.append((x, targets))
        return maps

    result = PointingGame()(model, inputs, None, explain, masks=masks)
    assert result.scores.tolist() == [1.0, 0.0]
    assert torch.equal(seen[0][0], inputs) and torch.equal(seen[0][1], model(inputs).argmax(1))
    RelevanceMass()(model, inputs, torch.tensor([2, 1]), explain, masks=masks)
    assert seen[1][1].tolist() == [2, 1]


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
