"""The Pathway type: algebra, binarisation, class aggregation, storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from neuralpath.errors import CheckpointError, InputError, ShapeError
from neuralpath.io import pack_bits, state_digest, unpack_bits
from neuralpath.pathway import (
    ClassPathways,
    Pathway,
    aggregate_by_class,
    global_percentile,
    per_layer_topk,
    threshold_scores,
)

from toys import tiny_cnn

LAYER_SIZES = st.lists(st.integers(1, 12), min_size=1, max_size=4)


@st.composite
def binary_pathways(draw: st.DrawFn, batch: int | None = None) -> Pathway:
    sizes = draw(LAYER_SIZES)
    b = batch or draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    density = draw(st.floats(0.0, 1.0))
    gen = torch.Generator().manual_seed(seed)
    return Pathway(
        {f"l{i}": torch.rand(b, c, generator=gen) < density for i, c in enumerate(sizes)}
    )


@st.composite
def pathway_pairs(draw: st.DrawFn) -> tuple[Pathway, Pathway]:
    first = draw(binary_pathways())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    second = Pathway({n: torch.rand(m.shape, generator=gen) < 0.5 for n, m in first.items()})
    return first, second


@settings(max_examples=60, deadline=None)
@given(pathway_pairs())
def test_jaccard_is_symmetric_bounded_and_one_on_itself(pair: tuple[Pathway, Pathway]) -> None:
    p, q = pair
    j_pq, j_qp = p.jaccard(q), q.jaccard(p)
    assert torch.equal(j_pq, j_qp)
    assert ((j_pq >= 0) & (j_pq <= 1)).all()
    assert torch.equal(p.jaccard(p), torch.ones(p.batch_size))
    for name, per_layer in p.jaccard_per_layer(q).items():
        assert torch.equal(per_layer, q.jaccard_per_layer(p)[name])


@settings(max_examples=60, deadline=None)
@given(binary_pathways())
def test_pairwise_jaccard_matches_samplewise_definition(p: Pathway) -> None:
    pairwise = p.pairwise_jaccard()
    assert torch.allclose(pairwise, pairwise.T)
    assert torch.allclose(pairwise.diagonal(), torch.ones(p.batch_size))
    flat = p.flatten().numpy()
    for i in range(p.batch_size):
        for j in range(p.batch_size):
            union = np.logical_or(flat[i], flat[j]).sum()
            expected = 1.0 if union == 0 else np.logical_and(flat[i], flat[j]).sum() / union
            assert pairwise[i, j].item() == pytest.approx(expected, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(binary_pathways())
def test_kept_fraction_counts_units_over_all_layers(p: Pathway) -> None:
    flat = p.flatten()
    assert torch.allclose(p.kept_fraction(), flat.float().mean(dim=1))
    per_layer = p.kept_fraction_per_layer()
    weighted = sum(per_layer[n] * p.units[n] for n in p) / p.units_total
    assert torch.allclose(weighted, p.kept_fraction())


def _distinct_scores(sizes: list[int], batch: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    perm = torch.stack([torch.randperm(total, generator=gen) for _ in range(batch)]).float()
    chunks = perm.split(sizes, dim=1)
    return {f"l{i}": c for i, c in enumerate(chunks)}


@settings(max_examples=80, deadline=None)
@given(LAYER_SIZES, st.integers(1, 4), st.floats(0.0, 0.99), st.integers(0, 1000))
def test_global_percentile_achieves_requested_sparsity(sizes, batch, sparsity, seed) -> None:
    scores = _distinct_scores(sizes, batch, seed)
    pathway = global_percentile(scores, sparsity)
    total = sum(sizes)
    achieved = 1 - pathway.kept_fraction()
    assert (achieved - sparsity).abs().max() <= 0.5 / total + 1e-6
    # The kept units are exactly the highest-scoring ones, across layers.
    flat_scores = torch.cat(list(scores.values()), dim=1)
    flat_mask = pathway.flatten()
    for row in range(batch):
        kept, dropped = flat_scores[row][flat_mask[row]], flat_scores[row][~flat_mask[row]]
        if kept.numel() and dropped.numel():
            assert kept.min() > dropped.max()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 1000), st.floats(0.05, 0.95))
def test_global_percentile_drops_ties_and_inactive_units_first(seed, sparsity) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = {"a": torch.randint(0, 4, (3, 10), generator=gen).float(), "b": torch.zeros(3, 6)}
    pathway = global_percentile(scores, sparsity)
    # Dropped at or below the threshold, so never less sparse than asked (up to rounding).
    assert ((1 - pathway.kept_fraction()) >= sparsity - 0.5 / 16 - 1e-6).all()
    assert not pathway["b"].any()  # zero scores always go first
    # Literal reference: threshold = k-th smallest score with k = round(s * N).
    flat = torch.cat([scores["a"], scores["b"]], dim=1).numpy()
    k = int(round(sparsity * 16))
    for row in range(3):
        threshold = np.sort(flat[row])[k - 1]
        assert np.array_equal(pathway.flatten()[row].numpy(), flat[row] > threshold)


def test_global_percentile_chunked_equals_unchunked() -> None:
    scores = {"a": torch.rand(7, 5, 3, 3), "b": torch.rand(7, 9)}
    whole = global_percentile(scores, 0.8, "element")
    chunked = global_percentile(scores, 0.8, "element", chunk_size=3)
    assert all(torch.equal(whole[n], chunked[n]) for n in whole)


def test_sparsity_zero_keeps_everything_and_bad_sparsity_is_an_error() -> None:
    scores = {"a": torch.rand(2, 5)}
    assert global_percentile(scores, 0.0).kept_fraction().eq(1).all()
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(InputError, match="sparsity"):
            global_percentile(scores, bad)
    with pytest.raises(InputError, match="NaN"):
        global_percentile({"a": torch.tensor([[float("nan"), 1.0]])}, 0.5)
    inf = float("inf")
    with pytest.raises(InputError, match="NaN"):  # among infinities (their sum is NaN too)
        global_percentile({"a": torch.tensor([[inf, -inf, float("nan"), 1.0]])}, 0.5)
    # infinite scores without a NaN are scores: their NaN sum is not taken for a NaN score
    both = global_percentile({"a": torch.tensor([[inf, -inf, 0.0, 1.0]])}, 0.5)
    assert both["a"].tolist() == [[True, False, False, True]]
    with pytest.raises(ShapeError, match="batch"):
        global_percentile({"a": torch.rand(2, 3), "b": torch.rand(3, 3)}, 0.5)


@settings(max_examples=40, deadline=None)
@given(LAYER_SIZES, st.floats(0.0, 0.95), st.integers(0, 100))
def test_per_layer_topk_keeps_exact_counts(sizes, sparsity, seed) -> None:
    scores = _distinct_scores(sizes, 2, seed)
    pathway = per_layer_topk(scores, sparsity)
    for name, mask in pathway.items():
        expected = max(1, int(round((1 - sparsity) * mask.shape[1])))
        assert mask.sum(dim=1).eq(expected).all()
        kept, dropped = scores[name][mask], scores[name][~mask]
        if dropped.numel():
            assert kept.view(2, -1).min(1).values.ge(dropped.view(2, -1).max(1).values).all()


def test_threshold_and_binarize() -> None:
    scores = {"a": torch.tensor([[0.1, 0.5, 0.9]])}
    assert threshold_scores(scores, 0.5)["a"].tolist() == [[False, False, True]]
    gates = Pathway({"a": torch.tensor([[0.0, 0.3, 2.0]])})
    assert not gates.is_binary
    assert gates.binarize()["a"].tolist() == [[False, True, True]]


def test_select_cat_expand() -> None:
    p = Pathway({"a": torch.tensor([[1, 0], [0, 1], [1, 1]]).bool(), "b": torch.eye(3).bool()})
    assert p.select(1)["a"].tolist() == [[False, True]]
    assert p.select([2, 0])["b"].tolist() == [[False, False, True], [True, False, False]]
    again = Pathway.cat([p.select(slice(0, 1)), p.select(slice(1, 3))])
    assert all(torch.equal(again[n], p[n]) for n in p)
    assert p.select(0).expand(4).batch_size == 4
    with pytest.raises(ShapeError, match="one-sample"):
        p.expand(4)
    with pytest.raises(ShapeError, match="different layers"):
        Pathway.cat([p, Pathway({"a": torch.ones(1, 2, dtype=torch.bool)})])


def test_construction_errors() -> None:
    with pytest.raises(ShapeError, match="batch"):
        Pathway({"a": torch.ones(2, 3), "b": torch.ones(3, 3)})
    with pytest.raises(ShapeError, match=r"\[B, C\]"):
        Pathway({"a": torch.ones(2, 3, 4, 4)}, "channel")
    with pytest.raises(InputError, match="granularity"):
        Pathway({"a": torch.ones(2, 3)}, "neuron")  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="granularity"):
        Pathway({"a": torch.ones(2, 3)}).jaccard(Pathway({"a": torch.ones(2, 3)}, "element"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=70))
def test_pack_bits_round_trip(bits: list[bool]) -> None:
    mask = torch.tensor(bits)
    packed = pack_bits(mask)
    assert packed.numel() == (len(bits) + 7) // 8
    assert torch.equal(unpack_bits(packed, (len(bits),)), mask)


@settings(max_examples=25, deadline=None)
@given(binary_pathways(), st.sampled_from(["channel", "element"]))
def test_save_load_round_trip(
    tmp_path_factory: pytest.TempPathFactory, p: Pathway, granularity: str
) -> None:
    path = tmp_path_factory.mktemp("pw") / "p.safetensors"
    source = Pathway({n: m for n, m in p.items()}, granularity, {"method": "test", "sparsity": 0.5})  # type: ignore[arg-type]
    source.save(path)
    loaded = Pathway.load(path)
    assert loaded.granularity == granularity and loaded.metadata == source.metadata
    assert loaded.layer_names == source.layer_names
    assert all(torch.equal(loaded[n], source[n]) for n in source)


def test_element_and_continuous_round_trip_and_packing(tmp_path) -> None:
    element = Pathway(
        {"conv": torch.rand(3, 5, 7, 7) > 0.5, "fc": torch.rand(3, 9) > 0.5}, "element"
    )
    element.save(tmp_path / "e.safetensors")
    bits = 3 * (5 * 49 + 9)
    assert (tmp_path / "e.safetensors").stat().st_size < 1024 + bits // 8 + 16
    loaded = Pathway.load(tmp_path / "e.safetensors")
    assert all(torch.equal(loaded[n], element[n]) for n in element)
    gates = Pathway({"a": torch.rand(2, 4)})
    gates.save(tmp_path / "g.safetensors")
    assert torch.equal(Pathway.load(tmp_path / "g.safetensors")["a"], gates["a"])


def test_corrupt_truncated_and_foreign_files_are_clear_errors(tmp_path) -> None:
    p = Pathway({"a": torch.ones(2, 10, dtype=torch.bool)})
    path = tmp_path / "p.safetensors"
    p.save(path)
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 5)
    for name in ("trunc.safetensors", "junk.safetensors", "missing.safetensors"):
        with pytest.raises(CheckpointError):
            Pathway.load(tmp_path / name)
    ClassPathways(Pathway({"a": torch.ones(1, 10)}), torch.ones(1, dtype=torch.long), 0.5).save(
        tmp_path / "c.st"
    )
    with pytest.raises(CheckpointError, match="not a neuralpath pathway"):
        Pathway.load(tmp_path / "c.st")
    # A failed save leaves the previous file intact and no temporary files behind.
    with pytest.raises(TypeError):
        Pathway({"a": torch.ones(2, 10, dtype=torch.bool)}, metadata={"x": object()}).save(path)
    assert Pathway.load(path)["a"].all()
    assert sorted(f.name for f in tmp_path.iterdir()) == [
        "c.st",
        "junk.safetensors",
        "p.safetensors",
        "trunc.safetensors",
    ]


def test_aggregate_by_class_hand_example(tmp_path) -> None:
    masks = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1], [1, 1, 1, 0]]).bool()
    labels = torch.tensor([0, 0, 1, 0])
    classes = aggregate_by_class(Pathway({"a": masks}), labels, num_classes=3, theta=0.5)
    assert classes.counts.tolist() == [3, 1, 0]
    assert torch.allclose(classes.frequency["a"][0], torch.tensor([1.0, 2 / 3, 2 / 3, 0.0]))
    assert classes.pathway["a"].tolist()[:2] == [
        [True, True, True, False],
        [False, False, True, True],
    ]
    first_two = aggregate_by_class(Pathway({"a": masks}), labels, 3, theta=0.75, per_class_limit=2)
    assert first_two.counts.tolist() == [2, 1, 0]
    assert first_two.pathway["a"][0].tolist() == [True, False, False, False]
    transferred = classes.for_labels(torch.tensor([1, 0, 1]))
    assert transferred["a"].tolist() == [
        [False, False, True, True],
        [True, True, True, False],
        [False, False, True, True],
    ]
    with pytest.raises(InputError, match="no class pathway for classes \\[2\\]"):
        classes.for_labels(torch.tensor([2]))
    classes.save(tmp_path / "classes.safetensors")
    loaded = ClassPathways.load(tmp_path / "classes.safetensors")
    assert torch.equal(loaded.counts, classes.counts) and loaded.theta == 0.5
    assert torch.equal(loaded.pathway["a"], classes.pathway["a"])


def test_aggregate_errors() -> None:
    p = Pathway({"a": torch.ones(2, 3, dtype=torch.bool)})
    with pytest.raises(InputError, match="binary"):
        aggregate_by_class(p.float(), torch.tensor([0, 1]), 2)
    with pytest.raises(InputError, match="labels"):
        aggregate_by_class(p, torch.tensor([0, 5]), 2)
    with pytest.raises(ShapeError):
        aggregate_by_class(p, torch.tensor([0]), 2)
    with pytest.raises(InputError, match="theta"):
        aggregate_by_class(p, torch.tensor([0, 1]), 2, theta=0.0)


def test_state_digest_tracks_weights_and_buffers() -> None:
    model = tiny_cnn()
    digest = state_digest(model)
    assert digest == state_digest(tiny_cnn()) and len(digest) == 64
    with torch.no_grad():
        model.features[3].running_mean[0] += 1e-6  # a buffer
    assert state_digest(model) != digest
    assert state_digest(model.to(torch.bfloat16)) != state_digest(model.float())
