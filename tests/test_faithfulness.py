"""Faithfulness and class-relevance metrics: exact values on hand-built cases."""

from __future__ import annotations

import math

import pytest
import torch

from neuralpath.gating import GatedModel
from neuralpath.metrics.faithfulness import (
    HIGHER_IS_BETTER,
    PathwayOutcome,
    average_class_iou,
    mean_decrease_in_confidence,
    mean_increase_in_confidence,
    pathway_outcome,
    summarize,
)
from neuralpath.pathway import Pathway

from toys import HandModel


def test_mdc_and_mic_hand_values() -> None:
    p = torch.tensor([0.5, 0.8, 0.4])
    p_path = torch.tensor([0.25, 0.9, 0.4])
    # drops: 0.25/0.5 = 0.5, 0, 0 -> mean 1/6; increases: 0, 0.1, 0 -> mean 1/30
    assert mean_decrease_in_confidence(p, p_path) == pytest.approx(100 / 6)
    assert mean_increase_in_confidence(p, p_path) == pytest.approx(100 / 30)
    assert HIGHER_IS_BETTER["mdc"] is False and HIGHER_IS_BETTER["mic"] is True


def test_aciou_hand_value() -> None:
    masks = torch.tensor(
        [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 1]]
    ).bool()
    classes = torch.tensor([0, 0, 1, 1, 2])  # class 2 has one instance: skipped
    # class 0: J = 1/2; class 1: J = 1/2  -> 50 %
    assert average_class_iou(Pathway({"a": masks}), classes) == pytest.approx(50.0)
    assert math.isnan(average_class_iou(Pathway({"a": masks[:2]}), torch.tensor([0, 1])))


def test_pathway_outcome_and_summary_on_hand_model() -> None:
    model = HandModel()
    x = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    gm = GatedModel.discover(model, x[:1], include_fc=True)
    # sample 0: h = [1, 2, 0], y = [5, 0];   sample 1: h = [2, 1, 1], y = [7, -1.5]
    pathway = Pathway({"act": torch.tensor([[True, False, True], [True, True, True]])})
    out = pathway_outcome(gm, x, pathway)
    # sample 0 with unit 1 dropped: h = [1, 0, 0], y = [1, -1]; sample 1 unchanged.
    expected_p0 = torch.softmax(torch.tensor([5.0, 0.0]), 0)[0]
    expected_pp0 = torch.softmax(torch.tensor([1.0, -1.0]), 0)[0]
    assert out.prediction.tolist() == [0, 0] and out.pathway_prediction.tolist() == [0, 0]
    assert out.confidence[0].item() == pytest.approx(expected_p0.item())
    assert out.pathway_confidence[0].item() == pytest.approx(expected_pp0.item())
    assert out.kept_fraction.tolist() == pytest.approx([2 / 3, 1.0])
    summary = summarize(out, pathway, torch.tensor([0, 1]))
    assert summary["agreement"] == 1.0 and summary["accuracy"] == 0.5
    drop = (expected_p0 - expected_pp0) / expected_p0
    assert summary["mdc"] == pytest.approx(100 * drop.item() / 2, rel=1e-5)
    assert summary["mic"] == 0.0 and summary["ic_fraction"] == 0.0
    assert summary["kept_fraction_mean"] == pytest.approx(5 / 6)
    assert summary["kept_fraction_std"] == pytest.approx(1 / 6)
    assert summary["aciou"] == pytest.approx(100 * 2 / 3)  # both explained as class 0


def test_outcome_cat() -> None:
    one = PathwayOutcome(*(torch.tensor([v]) for v in (0, 1, 1, 0.5, 0.4, 0.3, True, False, False)))
    both = PathwayOutcome.cat([one, one])
    assert both.confidence.tolist() == [0.5, 0.5]
    assert both.connected.tolist() == [True, True] and both.empty_layer.tolist() == [False] * 2
