"""The connecting repair (:mod:`neuralpath.methods.connect`): hand-computed widening on a toy MLP,
connected samples untouched, batch = loop, the unrepairable case, per-sample metadata, and the
finders and Pathway Gradient that run it."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from neuralpath.attribution import PathwayGradient
from neuralpath.errors import ZeroMapsWarning
from neuralpath.gating import GatedModel
from neuralpath.methods import FinderOptions, build_finder
from neuralpath.methods.connect import connect_pathway, rows_of
from neuralpath.methods.critical import NeuronMCT
from neuralpath.methods.dgr import DGR, DGRConfig
from neuralpath.metrics.connectivity import input_dependence
from neuralpath.pathway import CONNECT_FLOOR, Pathway, repaired_samples
from neuralpath.runner import run_finder

from toys import tiny_cnn


class DeadEndMLP(nn.Module):
    """``a1 = relu(x)`` (3 units); ``a2 = relu(-a1_0 - 1, a1_0, a1_2)``; ``y = (Σ a2, 0)``.

    ``a2_0`` is dead for every input (``a1 >= 0``), so a pathway keeping only ``a2_0`` in the
    second layer passes nothing: ``y_0 = 0`` whatever the input.
    """

    def __init__(self, live: bool = True) -> None:
        super().__init__()
        self.fc1, self.act1 = nn.Linear(3, 3, bias=False), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(3, 3), nn.ReLU()
        self.fc3 = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.eye(3))
            self.fc2.weight.copy_(torch.tensor([[-1.0, 0, 0], [1, 0, 0], [0, 0, 1]]))
            self.fc2.bias.copy_(torch.tensor([-1.0, 0, 0]))
            self.fc3.weight.copy_(torch.tensor([[1.0, 1, 1], [0, 0, 0]]) * float(live))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _mlp(live: bool = True) -> tuple[GatedModel, torch.Tensor]:
    x = torch.tensor([[1.0, 2.0, 3.0], [0.5, 1.0, 2.0]], dtype=torch.float64)
    model = DeadEndMLP(live).double().eval()
    return GatedModel.discover(model, x[:1], layers=["act1", "act2"]), x


def _pathway(rows: list[tuple[list[int], list[int]]]) -> Pathway:
    masks = {
        "act1": torch.tensor([r[0] for r in rows], dtype=torch.bool),
        "act2": torch.tensor([r[1] for r in rows], dtype=torch.bool),
    }
    return Pathway(masks, "channel", {"min_per_layer": 1})


SCORES = {
    "act1": torch.tensor([[3.0, 1.0, 2.0]] * 2, dtype=torch.float64),
    "act2": torch.tensor([[3.0, 2.0, 1.0]] * 2, dtype=torch.float64),
}


def test_hand_computed_widening_and_untouched_connected_sample() -> None:
    """Sample 0 keeps a1_0 -> a2_0 (dead): floor 2 adds the next-ranked unit of each layer, a1_2
    and a2_1, and a2_1 = a1_0 = x_0 carries the input. Sample 1 keeps a1_2 -> a2_2: connected,
    returned as it was."""
    gated, x = _mlp()
    pathway = _pathway([([1, 0, 0], [1, 0, 0]), ([0, 0, 1], [0, 0, 1])])
    classes = torch.zeros(2, dtype=torch.long)
    assert input_dependence(gated, x, pathway, classes).tolist() == [False, True]
    found = connect_pathway(gated, x, pathway, classes, rank=rows_of(SCORES))
    assert found.connected.tolist() == [True, True]
    assert found.pathway["act1"].tolist() == [[True, False, True], [False, False, True]]
    assert found.pathway["act2"].tolist() == [[True, True, False], [False, False, True]]
    assert found.pathway.metadata[CONNECT_FLOOR] == [2, 0]
    assert repaired_samples(found.pathway).tolist() == [True, False]
    with torch.no_grad():  # y_0 = a2_1 = relu(x_0) through the widened pathway
        assert gated.forward(x, found.pathway)[0, 0].item() == pytest.approx(1.0)
    # batch = loop
    alone = [
        connect_pathway(gated, x[i : i + 1], pathway.select(i), classes[i : i + 1],
                        rank=rows_of({n: s[i : i + 1] for n, s in SCORES.items()}))
        for i in range(2)
    ]  # fmt: skip
    joined = Pathway.cat([a.pathway for a in alone])
    assert all(torch.equal(joined[n], found.pathway[n]) for n in joined)
    assert joined.metadata[CONNECT_FLOOR] == [2, 0]


def test_a_network_that_never_connects_keeps_the_original_pathway() -> None:
    gated, x = _mlp(live=False)  # y_0 = 0 for every input, even through the whole network
    pathway = _pathway([([1, 0, 0], [1, 0, 0]), ([0, 0, 1], [0, 0, 1])])
    found = connect_pathway(
        gated, x, pathway, torch.zeros(2, dtype=torch.long), rank=rows_of(SCORES)
    )
    assert found.connected.tolist() == [False, False]
    assert all(torch.equal(found.pathway[n], pathway[n]) for n in pathway)
    assert found.pathway.metadata[CONNECT_FLOOR] == [0, 0]


def test_default_rank_is_the_taylor_score_and_bad_arguments() -> None:
    gated, x = _mlp()
    pathway = _pathway([([1, 0, 0], [1, 0, 0])] * 2)
    classes = torch.zeros(2, dtype=torch.long)
    found = connect_pathway(gated, x, pathway, classes)
    # Taylor ranks |a·∂y_0/∂a|: act1 (x_0, 0, x_2), act2 (0, x_0, x_2); floor 2 adds each layer's
    # top two to what it keeps
    assert found.connected.all() and found.pathway.metadata[CONNECT_FLOOR] == [2, 2]
    assert found.pathway["act1"].tolist() == [[True, False, True]] * 2
    assert found.pathway["act2"].all()
    with pytest.raises(Exception, match="binary"):
        connect_pathway(gated, x, pathway.float(), classes)
    with pytest.raises(Exception, match="growth"):
        connect_pathway(gated, x, pathway, classes, growth=1)


def test_per_sample_metadata_follows_select_cat_expand_and_save(tmp_path) -> None:
    pathway = _pathway([([1, 0, 0], [1, 0, 0]), ([0, 0, 1], [0, 0, 1])])
    pathway.metadata[CONNECT_FLOOR] = [4, 0]
    assert pathway.select(torch.tensor([1, 0])).metadata[CONNECT_FLOOR] == [0, 4]
    assert pathway.select(1).metadata[CONNECT_FLOOR] == [0]
    assert pathway.select(slice(0, 1)).expand(3).metadata[CONNECT_FLOOR] == [4, 4, 4]
    plain = _pathway([([1, 1, 1], [1, 1, 1])])
    assert Pathway.cat([pathway, plain]).metadata[CONNECT_FLOOR] == [4, 0, 0]
    pathway.save(tmp_path / "p.safetensors")
    assert Pathway.load(tmp_path / "p.safetensors").metadata[CONNECT_FLOOR] == [4, 0]


@pytest.fixture
def cnn() -> tuple[GatedModel, torch.Tensor]:
    inputs = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return GatedModel.discover(tiny_cnn(), inputs[:1]), inputs


CUT = {"granularity": "channel", "sparsity": 0.95, "min_per_layer": 0}
"""Channels at 0.95 of a 4 + 6 channel toy with the paper's rule: every pathway empties a layer."""


@pytest.mark.parametrize("method", ["cp-mct", "cp-intgrad", "dgr", "dgr-r"])
def test_finders_repair_by_default_and_not_when_asked(method, cnn) -> None:
    gated, inputs = cnn
    cheap = {"iterations": 3} if method.startswith("dgr") else {}
    cheap |= {"steps": 2} if method == "cp-intgrad" else {}
    settings = {k: v for k, v in CUT.items() if k == "min_per_layer"} | cheap
    options = FinderOptions(sparsity=0.95, granularity="channel", settings=settings)
    with torch.no_grad():
        classes = gated.forward(inputs).argmax(1)
    plain = build_finder(method, gated, FinderOptions(
        sparsity=0.95, granularity="channel", settings=settings | {"connect": False}
    )).find(inputs)  # fmt: skip
    assert not input_dependence(gated, inputs, plain, classes).any()
    repaired = build_finder(method, gated, options).find(inputs)
    assert input_dependence(gated, inputs, repaired, classes).all()
    assert repaired_samples(repaired).all()
    for name in plain:  # a widening: everything the method kept stays kept
        assert (repaired[name] | ~plain[name]).all()
    assert (repaired.kept_fraction() > plain.kept_fraction()).all()


def test_connected_pathways_are_returned_exactly_as_selected(cnn) -> None:
    gated, inputs = cnn
    on, off = NeuronMCT(gated).find(inputs), NeuronMCT(gated, connect=False).find(inputs)
    assert all(torch.equal(on[n], off[n]) for n in on)
    assert on.metadata[CONNECT_FLOOR] == [0] * 6


def test_dgr_ranks_open_gates_above_closed_ones(cnn) -> None:
    gated, inputs = cnn
    finder = DGR(gated, DGRConfig(iterations=2))
    with torch.no_grad():
        target = gated.forward(inputs).argmax(1)
    gates = {s.name: torch.zeros(6, s.units, dtype=inputs.dtype) for s in gated.sites}
    gates["features.1"][:, 2] = 0.01  # one open gate, tiny
    ranks = finder._ranker(inputs, target, gates)(torch.arange(6))
    top = ranks["features.1"].argmax(dim=1)
    assert (top == 2).all() and (ranks["features.1"][:, 2] > 1).all()
    assert (ranks["features.4"] <= 0.5).all() and (ranks["features.4"] >= 0).all()


def test_pathway_gradient_repairs_from_its_own_gradient(cnn) -> None:
    """PG's zero maps are the connectivity test: the repaired maps equal the gradient through the
    pathway the finder itself returns, and a connected batch runs no extra forward."""
    gated, inputs = cnn
    finder = NeuronMCT(gated, **CUT)  # type: ignore[arg-type]
    maps = PathwayGradient(gated, finder).attribute(inputs)
    pathway = finder.find(inputs)
    assert repaired_samples(pathway).all()
    expected = PathwayGradient(gated, finder).attribute(inputs, pathway=pathway)
    torch.testing.assert_close(maps, expected, rtol=0, atol=0)
    assert (maps.flatten(1).abs().amax(1) > 0).all()

    # a pathway the caller gives is used as given, even when it passes nothing
    given = NeuronMCT(gated, **CUT, connect=False).find(inputs)  # type: ignore[arg-type]
    with pytest.warns(ZeroMapsWarning):
        blank = PathwayGradient(gated, finder).attribute(inputs, pathway=given)
    assert (blank == 0).all()

    calls = []
    handle = gated.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        counts = []
        for connect in (True, False):
            calls.clear()
            PathwayGradient(gated, NeuronMCT(gated, connect=connect)).attribute(inputs)
            counts.append(len(calls))
    finally:
        handle.remove()
    assert counts[0] == counts[1]


def test_run_summary_counts_repaired_pathways(cnn) -> None:
    gated, inputs = cnn
    data = TensorDataset(inputs, torch.zeros(6, dtype=torch.long))
    run = run_finder(NeuronMCT(gated, **CUT), data, batch_size=4, progress=False)  # type: ignore[arg-type]
    summary = run.summary()
    assert summary["repaired_n"] == 6 and summary["disconnected_n"] == 0
    floors = run.pathway.metadata[CONNECT_FLOOR]  # two batches, concatenated in order
    assert len(floors) == 6 and all(f >= 2 for f in floors)


def test_kept_channels_on_either_side_of_a_depthwise_conv_are_joined() -> None:
    """Site ``a`` keeps channel 0, the depthwise conv's output ``b`` keeps channel 1, which reads
    only ``a``'s dropped channel 1: disconnected. Floor 2 keeps both channels of each layer."""
    from test_connectivity import INPUTS, channels, gated_two_stage

    gated = gated_two_stage(groups=2)
    pathway = channels([True, False], [False, True], batch=3)
    classes = torch.zeros(3, dtype=torch.long)
    assert not input_dependence(gated, INPUTS, pathway, classes).any()
    found = connect_pathway(gated, INPUTS, pathway, classes)
    assert found.connected.all() and found.pathway.metadata[CONNECT_FLOOR] == [2, 2, 2]
    assert found.pathway["a"].all() and found.pathway["b"].all()


def test_cli_find_defaults_never_return_a_disconnected_pathway(tmp_path, capsys) -> None:
    """The paper's rule at 0.99 over channels empties layers of the toy VGG; the default widens
    those pathways (counted in ``repaired_n``); ``connect=false`` reports and warns instead."""
    import json

    from neuralpath.cli import main

    from toys import save_centred_vgg

    target = save_centred_vgg(tmp_path / "t", seed=0)
    common = [
        "find", "--checkpoint", str(target), "--method", "cp-mct", "--granularity", "channel",
        "--sparsity", "0.99", "--set", "min_per_layer=0", "--data", "synthetic", "--limit", "8",
        "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "a.safetensors")]) == 0
    printed = capsys.readouterr()
    summary = json.loads(printed.out)
    assert summary["disconnected_n"] == 0 and summary["repaired_n"] == 8
    assert "disconnect" not in printed.err
    floors = Pathway.load(tmp_path / "a.safetensors").metadata[CONNECT_FLOOR]
    assert len(floors) == 8 and min(floors) >= 2
    off = [*common, "--set", "connect=false", "--out", str(tmp_path / "b.safetensors")]
    assert main(off) == 0
    printed = capsys.readouterr()
    summary = json.loads(printed.out)
    assert summary["disconnected_n"] == 8 and summary["repaired_n"] == 0
    assert "8 of 8 pathways disconnect the network" in printed.err


class ThirdRankedLive(nn.Module):
    """``a1 = relu(x)`` and ``a2`` of 4 units each; only ``a2_2 = relu(a1_2)`` is alive (the others
    are ``relu(-a1_0 - 1) = 0``); ``y = (Σ a2, 0)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act1 = nn.Linear(4, 4, bias=False), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(4, 4), nn.ReLU()
        self.fc3 = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.eye(4))
            dead = [-1.0, 0, 0, 0]
            self.fc2.weight.copy_(torch.tensor([dead, dead, [0, 0, 1.0, 0], dead]))
            self.fc2.bias.copy_(torch.tensor([-1.0, -1, 0, -1]))
            self.fc3.weight.copy_(torch.tensor([[1.0] * 4, [0.0] * 4]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


def test_the_floor_is_bisected_to_the_smallest_that_connects() -> None:
    """Ranks put the live unit third in both layers: floor 2 fails, 4 passes, and bisection
    finds 3 (one unit less per layer than doubling alone)."""
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    gated = GatedModel.discover(ThirdRankedLive().double().eval(), x, layers=["act1", "act2"])
    one = torch.tensor([[True, False, False, False]])
    pathway = Pathway({"act1": one, "act2": one}, "channel", {"min_per_layer": 1})
    ranks = torch.tensor([[4.0, 3.0, 2.0, 1.0]], dtype=torch.float64)
    found = connect_pathway(
        gated, x, pathway, torch.zeros(1, dtype=torch.long),
        rank=rows_of({"act1": ranks, "act2": ranks}),
    )  # fmt: skip
    assert found.connected.tolist() == [True] and found.pathway.metadata[CONNECT_FLOOR] == [3]
    assert found.pathway["act1"].tolist() == [[True, True, True, False]]
    assert found.pathway["act2"].tolist() == [[True, True, True, False]]
