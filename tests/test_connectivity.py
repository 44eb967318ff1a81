"""Disconnected pathways (issue 15): detected per sample, reported, never counted faithful."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from neuralpath.errors import DisconnectedWarning
from neuralpath.gating import GatedModel
from neuralpath.interventions import MeanAblation
from neuralpath.methods.base import PathwayFinder
from neuralpath.metrics.connectivity import disconnect_warning, empty_layers, input_dependence
from neuralpath.metrics.faithfulness import pathway_outcome, summarize
from neuralpath.metrics.leakage import leakage_outcome, summarize_leakage
from neuralpath.pathway import Pathway
from neuralpath.reference import reference_statistics
from neuralpath.runner import run_finder


class TwoStage(nn.Module):
    """conv(1->2, 1x1) - ReLU (site ``a``) - conv(2->2, 1x1, ``groups``) - ReLU (site ``b``) -
    mean over H×W - linear(2->2). With ``groups=2`` (depthwise) channel k of ``b`` reads channel
    k of ``a`` only; with ``groups=1`` it reads both."""

    def __init__(self, groups: int, bias: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 1)
        self.a = nn.ReLU()
        self.conv2 = nn.Conv2d(2, 2, 1, groups=groups)
        self.b = nn.ReLU()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv1.weight.fill_(1.0)
            self.conv1.bias.fill_(bias)
            self.conv2.weight.fill_(1.0)
            self.conv2.bias.fill_(0.5)
            self.fc.weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
            self.fc.bias.copy_(torch.tensor([1.0, 0.0]))  # class 0 wins on any input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b(self.conv2(self.a(self.conv1(x)))).mean(dim=(2, 3)))


def gated_two_stage(groups: int, bias: float = 0.0) -> GatedModel:
    model = TwoStage(groups, bias).eval()
    gated = GatedModel.discover(model, torch.zeros(1, 1, 4, 4))
    assert gated.site_names == ["a", "b"]
    return gated


def channels(a: list[bool], b: list[bool], batch: int = 1) -> Pathway:
    return Pathway({"a": torch.tensor([a] * batch), "b": torch.tensor([b] * batch)}, "channel")


INPUTS = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.1


def connected(gated: GatedModel, pathway: Pathway, **kwargs: object) -> list[bool]:
    batch = INPUTS.shape[0]
    classes = torch.zeros(batch, dtype=torch.long)
    return input_dependence(gated, INPUTS, pathway.expand(batch), classes, **kwargs).tolist()  # type: ignore[arg-type]


def test_depthwise_conv_whose_kept_channels_do_not_connect_is_disconnected() -> None:
    depthwise = gated_two_stage(groups=2)
    # a keeps channel 0, b keeps channel 1: b's channel 1 reads a's dropped channel 1 only
    assert connected(depthwise, channels([True, False], [False, True])) == [False] * 3
    assert connected(depthwise, channels([True, False], [True, False])) == [True] * 3
    # the same masks through a dense conv connect (no false positive)
    dense = gated_two_stage(groups=1)
    assert connected(dense, channels([True, False], [False, True])) == [True] * 3
    assert empty_layers(channels([True, False], [False, True])).tolist() == [False]


def test_disconnection_holds_under_mean_ablation() -> None:
    depthwise = gated_two_stage(groups=2)
    statistics = reference_statistics(depthwise, torch.rand(8, 1, 4, 4), progress=False)
    mean = depthwise.with_intervention(MeanAblation(statistics))
    assert connected(mean, channels([True, False], [False, True])) == [False] * 3
    assert connected(mean, channels([False, True], [False, True])) == [True] * 3


def test_empty_layer_is_disconnected_and_named() -> None:
    dense = gated_two_stage(groups=1)
    pathway = channels([False, False], [True, True])
    assert connected(dense, pathway) == [False] * 3
    assert empty_layers(pathway).tolist() == [True]


class Residual(nn.Module):
    """conv - ReLU (site ``a``) - [conv - ReLU (site ``b``)] + skip from ``a`` - mean - linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.a = nn.Conv2d(1, 2, 1), nn.ReLU()
        self.conv2, self.b = nn.Conv2d(2, 2, 1), nn.ReLU()
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(self.conv1(x))
        return self.fc((self.b(self.conv2(a)) + a).mean(dim=(2, 3)))


def test_empty_layer_bypassed_by_a_skip_connection_is_connected() -> None:
    torch.manual_seed(0)
    gated = GatedModel.discover(Residual().eval(), torch.zeros(1, 1, 4, 4))
    pathway = channels([True, True], [False, False])
    assert empty_layers(pathway).tolist() == [True]
    assert connected(gated, pathway) == [True] * 3
    assert connected(gated, channels([False, False], [True, True])) == [False] * 3


def test_relu_dead_but_connected_pathway_is_connected() -> None:
    # bias -1: at x = 0 every unit of a is below zero, so the gradient there is exactly zero,
    # but a brighter input passes: the pathway connects; the probes find it.
    dead = gated_two_stage(groups=2, bias=-1.0)
    zeros = torch.zeros(2, 1, 4, 4)
    pathway = channels([True, False], [True, False], batch=2)
    classes = torch.zeros(2, dtype=torch.long)
    assert input_dependence(dead, zeros, pathway, classes, probe_scales=()).tolist() == [False] * 2
    assert input_dependence(dead, zeros, pathway, classes).tolist() == [True] * 2
    # a disconnected pathway stays disconnected at every probe
    cut = channels([True, False], [False, True], batch=2)
    assert input_dependence(dead, zeros, cut, classes).tolist() == [False] * 2


def test_disconnected_samples_are_never_counted_faithful() -> None:
    gated = gated_two_stage(groups=2)
    x = INPUTS[:2]
    pathway = Pathway(
        {
            "a": torch.tensor([[True, True], [True, False]]),
            "b": torch.tensor([[True, True], [False, True]]),
        },
        "channel",
    )
    outcome = pathway_outcome(gated, x, pathway)
    # both pathway models predict class 0 like the model (its bias decides) ...
    assert outcome.pathway_prediction.tolist() == outcome.prediction.tolist() == [0, 0]
    assert outcome.connected.tolist() == [True, False]
    summary = summarize(outcome, pathway, torch.tensor([0, 0]))
    # ... but sample 1's does so for any input: it scores as p' = 0
    assert summary["agreement"] == 0.5 and summary["accuracy"] == 0.5
    assert summary["disconnected"] == 0.5 and summary["disconnected_n"] == 1
    assert summary["empty_layer_n"] == 0
    assert summary["mdc"] == pytest.approx(100.0 / 2)  # sample 0 keeps everything: no drop
    assert summary["mic"] == 0.0
    # connected samples score exactly as before
    alone = summarize(pathway_outcome(gated, x[:1], pathway.select([0])), None, None)
    assert alone["agreement"] == 1.0 and alone["mdc"] == 0.0 and alone["disconnected_n"] == 0
    leak = leakage_outcome(gated, x, pathway, outcome=outcome)
    assert summarize_leakage(leak)["disconnected_n"] == 1
    recomputed = leakage_outcome(gated, x, pathway)
    assert recomputed.connected.tolist() == [True, False]


class FixedFinder(PathwayFinder):
    """Returns the same pathway for every sample."""

    name = "fixed"

    def __init__(self, gated: GatedModel, pathway: Pathway):
        super().__init__(gated)
        self.pathway = pathway

    def find(self, inputs: torch.Tensor, target: object = None) -> Pathway:
        return self.pathway.expand(inputs.shape[0])


def test_run_finder_reports_and_warns_about_disconnected_pathways() -> None:
    gated = gated_two_stage(groups=2)
    data = torch.utils.data.TensorDataset(INPUTS, torch.zeros(3, dtype=torch.long))
    finder = FixedFinder(gated, channels([True, False], [False, True]))
    run = run_finder(finder, data, batch_size=2, progress=False)
    summary = run.summary()
    assert summary["disconnected_n"] == 3 and summary["disconnected"] == 1.0
    assert summary["agreement"] == 0.0
    with pytest.warns(DisconnectedWarning, match="3 of 3 pathways disconnect the network"):
        run.warn_if_disconnected()
    good = run_finder(
        FixedFinder(gated, channels([True, True], [True, True])), data, progress=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        good.warn_if_disconnected()
    assert good.summary()["disconnected_n"] == 0 and good.summary()["agreement"] == 1.0


def test_disconnect_warning_names_the_cause() -> None:
    assert disconnect_warning({"disconnected_n": 0, "n": 5}, "m") is None
    empty = disconnect_warning({"disconnected_n": 2, "n": 5, "empty_layer_n": 2}, "m")
    assert empty is not None and "2 of 5" in empty and "keep no unit of some layer" in empty
    grouped = disconnect_warning({"disconnected_n": 1, "n": 5, "empty_layer_n": 0}, "m")
    assert grouped is not None and "depthwise or grouped conv" in grouped


def test_cli_prints_the_disconnection_warning_as_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from neuralpath.cli import _one_line_warnings

    display = _one_line_warnings(lambda *args, **kwargs: None)
    display("m: 3 of 3 pathways disconnect the network", DisconnectedWarning, "file.py", 1)
    assert (
        capsys.readouterr().err
        == "neuralpath: warning: m: 3 of 3 pathways disconnect the network\n"
    )
