"""ROAD's noisy linear imputation as a pixel-removal mode: hand values, a dense float64
re-implementation, determinism, batch independence, the metrics and ROAR, and Quantus's ROAD."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import quantus
import torch
from quantus.functions.perturb_func import noisy_linear_imputation as quantus_imputation
from torch import nn

import neuralpath.metrics.roar as roar_module
from neuralpath.attribution import make_explainer
from neuralpath.data import ImageDataset
from neuralpath.errors import InputError, ShapeError
from neuralpath.gating import GatedModel
from neuralpath.metrics.perturbation import (
    DEFAULT_NOISE_STD,
    Deletion,
    Insertion,
    LeRF,
    MoRF,
    noisy_linear_imputation,
    order_ranks,
    pixel_count,
    pixel_relevance,
    relevance_order,
    remove_pixels,
    top_mask,
)
from neuralpath.metrics.roar import ROAR

from contract import check_batch_equals_loop
from toys import tiny_cnn

# The 3x3 hand image (one channel), not a linear ramp so that the neighbour means are not trivial.
HAND = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 10.0]], dtype=torch.float64)


def impute(image: torch.Tensor, removed: torch.Tensor, **kwargs) -> torch.Tensor:
    """Impute one ``[C, H, W]`` image with a ``[H, W]`` mask, noise-free unless told."""
    kwargs.setdefault("noise_std", 0.0)
    return noisy_linear_imputation(image[None], removed[None], **kwargs)[0]


def dense_reference(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """A literal float64 re-implementation: one equation per removed pixel and channel,
    ``x_i = Σ_j w_ij x_j / Σ_j w_ij`` over the neighbours j inside the image (1/6 direct,
    1/12 diagonal), solved densely with numpy."""
    channels, height, width = image.shape
    cells = [(r, c) for r in range(height) for c in range(width) if removed[r, c]]
    index = {cell: i for i, cell in enumerate(cells)}
    out = image.copy()
    for channel in range(channels):
        matrix = np.zeros((len(cells), len(cells)))
        rhs = np.zeros(len(cells))
        for i, (r, c) in enumerate(cells):
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    rr, cc = r + dr, c + dc
                    if (dr, dc) == (0, 0) or not (0 <= rr < height and 0 <= cc < width):
                        continue
                    weight = 1 / 6 if dr == 0 or dc == 0 else 1 / 12
                    matrix[i, i] += weight
                    if removed[rr, cc]:
                        matrix[i, index[(rr, cc)]] -= weight
                    else:
                        rhs[i] += weight * image[channel, rr, cc]
        solution = np.linalg.solve(matrix, rhs)
        for i, (r, c) in enumerate(cells):
            out[channel, r, c] = solution[i]
    return out


def test_hand_values_centre_corner_and_a_pair() -> None:
    centre = torch.zeros(3, 3, dtype=torch.bool)
    centre[1, 1] = True
    # direct neighbours 2+4+6+8 = 20 at 1/6, diagonal 1+3+7+10 = 21 at 1/12: 40/12 + 21/12
    assert impute(HAND[None], centre)[0, 1, 1].item() == pytest.approx(61 / 12, abs=1e-12)
    corner = torch.zeros(3, 3, dtype=torch.bool)
    corner[0, 0] = True
    # inside: (0,1)=2 and (1,0)=4 at 1/6, (1,1)=5 at 1/12; weights renormalised by 5/12
    expected = (2 / 6 + 4 / 6 + 5 / 12) / (5 / 12)
    assert impute(HAND[None], corner)[0, 0, 0].item() == pytest.approx(expected, abs=1e-12)
    pair = corner.clone()
    pair[0, 1] = True
    # a = x[0, 0], b = x[0, 1], coupled: (5/12) a = b/6 + 4/6 + 5/12 and, with b's neighbours
    # a, 3 and 5 direct and 4, 6 diagonal, (8/12) b = a/6 + 3/6 + 5/6 + 10/12; a = b = 13/3
    out = impute(HAND[None], pair)[0]
    assert out[0, 0].item() == pytest.approx(13 / 3, abs=1e-12)
    assert out[0, 1].item() == pytest.approx(13 / 3, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_equals_dense_float64_reimplementation(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    channels, height, width = 1 + seed % 3, 4 + seed % 3, 5 + seed % 2
    image = torch.randn(channels, height, width, generator=gen, dtype=torch.float64)
    removed = torch.rand(height, width, generator=gen) < 0.2 + 0.12 * seed
    removed[0, 0] = True
    removed[-1, -1] = False  # at least one kept pixel
    expected = dense_reference(image.numpy(), removed.numpy())
    np.testing.assert_allclose(impute(image, removed).numpy(), expected, rtol=0, atol=1e-12)


def test_kept_pixels_exact_removed_changed_constant_stays_constant() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 7, 6, generator=gen)
    removed = torch.rand(4, 1, 7, 6, generator=gen) < 0.4
    for noise_std in (0.0, DEFAULT_NOISE_STD):
        out = noisy_linear_imputation(x, removed, noise_std=noise_std)
        keep = ~removed.expand_as(x)
        assert out.dtype == x.dtype and torch.equal(out[keep], x[keep])
        assert torch.all(out[~keep] != x[~keep])
    constant = torch.full((2, 3, 5, 5), -0.75)
    out = noisy_linear_imputation(constant, removed[:2, :, :5, :5], noise_std=0.0)
    torch.testing.assert_close(out, constant, rtol=0, atol=1e-6)


def test_everything_removed_gives_fill_plus_noise() -> None:
    x = torch.randn(2, 2, 3, 3)
    everything = torch.ones(2, 1, 3, 3, dtype=torch.bool)
    assert torch.equal(noisy_linear_imputation(x, everything, noise_std=0.0), torch.zeros_like(x))
    filled = noisy_linear_imputation(x, everything, noise_std=0.0, fill=torch.tensor([1.0, 2.0]))
    assert torch.equal(filled[:, 1], torch.full((2, 3, 3), 2.0))
    noisy = noisy_linear_imputation(x, everything, noise_std=0.5)
    assert 0 < noisy.std().item() < 1.5


def test_seeded_noise_is_deterministic_and_batch_independent() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, 6, 6, generator=gen)
    x[3] = x[0]  # the same image twice in the batch
    removed = torch.rand(5, 1, 6, 6, generator=gen) < 0.5
    removed[3] = removed[0]
    out = noisy_linear_imputation(x, removed, noise_std=0.2, seed=7)
    assert torch.equal(out, noisy_linear_imputation(x, removed, noise_std=0.2, seed=7))
    assert not torch.equal(out, noisy_linear_imputation(x, removed, noise_std=0.2, seed=8))
    for i in range(5):
        single = noisy_linear_imputation(x[i : i + 1], removed[i : i + 1], noise_std=0.2, seed=7)
        assert torch.equal(out[i : i + 1], single)
    assert torch.equal(out[3], out[0])
    flipped = noisy_linear_imputation(x.flip(0), removed.flip(0), noise_std=0.2, seed=7)
    assert torch.equal(flipped, out.flip(0))
    # the noise is noise_std times one seeded standard normal draw per image
    clean = noisy_linear_imputation(x, removed, noise_std=0.0)
    mask = removed.expand_as(x)
    unit = (out - clean)[mask] / 0.2
    other = (noisy_linear_imputation(x, removed, noise_std=0.05, seed=7) - clean)[mask] / 0.05
    torch.testing.assert_close(unit, other, rtol=0, atol=1e-4)
    assert 0.7 < unit.std().item() < 1.3


def test_remove_pixels_modes_and_bad_settings() -> None:
    x = torch.randn(2, 1, 4, 4)
    removed = torch.zeros(2, 4, 4, dtype=torch.bool)
    removed[:, 1, 2] = True
    base = remove_pixels(x, removed, "baseline", baseline=3.0)
    assert torch.equal(base[:, 0, 1, 2], torch.full((2,), 3.0))
    noisy = remove_pixels(x, removed, "noisy-linear", noise_std=0.0)
    torch.testing.assert_close(noisy, noisy_linear_imputation(x, removed, noise_std=0.0))
    for removal, noise_std in (("blur", 0.0), ("noisy-linear", -0.1), ("noisy-linear", np.nan)):
        bad = {"removal": removal, "noise_std": noise_std}
        for make in (LeRF, MoRF, Deletion, Insertion):
            with pytest.raises(InputError):
                make(**bad)
        with pytest.raises(InputError):
            ROAR("unused", **bad)
        with pytest.raises(InputError):
            remove_pixels(x, removed, **bad)
    with pytest.raises(InputError):
        LeRF(removal="noisy-linear", seed=1.5)
    with pytest.raises(ShapeError):
        noisy_linear_imputation(x, removed.float())
    with pytest.raises(ShapeError):
        noisy_linear_imputation(x, removed[:, :3])


def test_curves_with_noisy_linear_removal_on_a_toy_model() -> None:
    model = tiny_cnn(seed=0)
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    explain = make_explainer("gradient", GatedModel.discover(model, x[:1]))
    for make in (LeRF, MoRF):
        metric = make([5, 20, 50], removal="noisy-linear")
        result = metric(model, x, None, explain)
        assert result.curve.shape == (6, 3)
        # |p - p'| / p is bounded by 1 whenever p' <= 2 p, which holds for this fixed toy
        assert torch.all((result.curve >= 0) & (result.curve <= 1))
        assert torch.equal(result.curve, metric(model, x, None, explain).curve)
        check_batch_equals_loop(lambda i, t, m=metric: m(model, i, t, explain).curve, x)
    baseline = LeRF([5, 20, 50])(model, x, None, explain).curve
    imputed = LeRF([5, 20, 50], removal="noisy-linear")(model, x, None, explain).curve
    assert not torch.equal(baseline, imputed)
    for make in (Deletion, Insertion):  # their ends remove every pixel: the fill plus noise
        result = make(steps=4, removal="noisy-linear")(model, x, None, explain)
        assert torch.all((result.curve >= 0) & (result.curve <= 1))
        assert torch.all((result.area >= 0) & (result.area <= 1))


def _road_dataset(n: int, seed: int, split: str) -> ImageDataset:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=gen)
    images = torch.randn(n, 1, 6, 6, generator=gen) + labels.view(-1, 1, 1, 1)
    return ImageDataset(images, labels, "toy", split, ["a", "b"], (0.0,), (1.0,))


def test_roar_imputes_chunk_independently_and_keys_the_cache_by_removal(
    tmp_path, monkeypatch
) -> None:
    model = tiny_cnn(seed=0, in_channels=1, num_classes=2)
    train, test = _road_dataset(10, 0, "train"), _road_dataset(6, 1, "test")
    seen: list[tuple[ImageDataset, ImageDataset]] = []

    def trainer(train_set: ImageDataset, test_set: ImageDataset, seed: int) -> float:
        seen.append((train_set, test_set))
        return 0.5

    calls = []

    def explain(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x.abs()

    monkeypatch.setattr(roar_module, "_PERTURB_CHUNK", 3)  # chunks of 3 equal one whole batch
    settings = {"percentages": (50,), "trainer": trainer, "progress": False, "seed": 4}
    noisy = ROAR(tmp_path, removal="noisy-linear", noise_std=0.1, **settings)
    result = noisy(model, "alexnet", {}, train, test, {"abs": explain})
    assert result.trained == 2
    assert result.config["removal"] == {"mode": "noisy-linear", "noise_std": 0.1}
    removed = top_mask(order_ranks(relevance_order(train.images.abs().sum(1))), 18, (6, 6))
    expected = noisy_linear_imputation(train.images, removed, noise_std=0.1, seed=4)
    assert torch.equal(seen[-1][0].images, expected)

    baseline = ROAR(tmp_path, **settings)
    assert baseline.training_key != noisy.training_key and "noisy-linear0.1" in noisy.training_key
    assert ROAR(tmp_path, removal="noisy-linear", **settings).training_key != noisy.training_key
    explained = len(calls)
    again = baseline(model, "alexnet", {}, train, test, {"abs": explain})
    assert again.trained == 2 and len(calls) == explained  # new cells, cached ranks
    assert torch.equal(seen[-1][0].images, torch.where(removed, 0.0, train.images))
    assert noisy(model, "alexnet", {}, train, test, {"abs": explain}).trained == 0


def test_cli_passes_and_records_the_removal(tmp_path, capsys) -> None:
    from neuralpath.checkpoint import TargetMeta, save_target
    from neuralpath.cli import main
    from neuralpath.data import SYNTHETIC_CLASSES, SYNTHETIC_MEAN, SYNTHETIC_STD
    from neuralpath.io import read_json
    from neuralpath.models import build_model

    classes = len(SYNTHETIC_CLASSES)
    args = {"num_classes": classes, "in_channels": 3, "input_size": 16, "width": 0.125}
    meta = TargetMeta(
        "vgg11", args, "synthetic", (3, 16, 16), classes, list(SYNTHETIC_CLASSES),
        SYNTHETIC_MEAN, SYNTHETIC_STD,
    )  # fmt: skip
    save_target(tmp_path / "ckpt", build_model("vgg11", **args), meta)
    common = [
        "evaluate-attribution", "--checkpoint", str(tmp_path / "ckpt"), "--methods", "gradient",
        "--metrics", "lerf,deletion", "--limit", "4", "--steps", "2", "--percentages", "5,50",
        "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    assert main([*common, "--removal", "noisy-linear", "--out", str(tmp_path / "road")]) == 0
    payload = read_json(tmp_path / "road" / "results.json")
    assert payload["config"]["removal"] == "noisy-linear"
    assert payload["config"]["noise_std"] == DEFAULT_NOISE_STD
    assert len(payload["results"]["gradient"]["lerf"]["curve"]) == 2
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    plain = read_json(tmp_path / "plain" / "results.json")
    assert plain["config"]["removal"] == "baseline" and plain["config"]["noise_std"] is None
    assert plain["results"]["gradient"]["lerf"] != payload["results"]["gradient"]["lerf"]
    capsys.readouterr()
    assert main([*common, "--removal", "blur", "--out", str(tmp_path / "bad")]) == 2
    assert "invalid choice" in capsys.readouterr().err


# ------------------------------------------------------------------ Quantus's ROAD
#
# quantus.ROAD (quantus/metrics/faithfulness/road.py) ranks the flattened map with a plain
# descending np.argsort (MoRF order, ties unordered), removes the first int(H*W * p / 100)
# pixels (floor) of each image with quantus.functions.perturb_func.noisy_linear_imputation, and
# reports, per percentage, the accuracy of the model's argmax on the imputed images against
# y_batch. Its noise is noise * np.random.randn (global, unseeded); noise=0 switches it off. Its
# indices are pixel indices of H*W only when the map has one channel as the image, so we compare
# on one-channel images. Our MoRF reports |p - p'|/p instead of accuracy and rounds counts half
# up; with 10x10 images, integer percentages and maps of distinct values (no ties), the removed
# pixels are identical, so we compare (1) the imputation function on the same masks and (2) the
# accuracies computed from our ranking and our imputation with Quantus's ROAD numbers.


def test_imputation_equals_quantus_on_the_same_mask() -> None:
    rng = np.random.default_rng(0)
    for channels in (1, 3):
        for fraction in (0.05, 0.3, 0.9):
            image = rng.standard_normal((channels, 9, 7))
            indices = rng.choice(63, int(63 * fraction), replace=False)
            theirs = quantus_imputation(image.copy(), indices, noise=0.0)
            removed = np.zeros(63, dtype=bool)
            removed[indices] = True
            ours = impute(torch.from_numpy(image), torch.from_numpy(removed.reshape(9, 7)))
            # both solve the same float64 sparse system (theirs with the sign flipped), so only
            # rounding in the LU factorisation differs: ~1e-16 observed, 1e-12 allowed
            np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-12)


def test_road_accuracies_equal_quantus_road() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(100, 4)).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1, 10, 10, generator=gen)
    y = model(x).argmax(1)
    maps = torch.stack([torch.randperm(100, generator=gen) + 1 for _ in range(32)])
    maps = maps.float().view(32, 1, 10, 10)
    percentages = [10, 30, 50, 70, 90]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = quantus.ROAD(percentages=percentages, noise=0.0, disable_warnings=True)(
            model=model,
            x_batch=x.numpy(),
            y_batch=y.numpy(),
            a_batch=maps.numpy(),
            channel_first=True,
            device="cpu",
            batch_size=32,
        )
    ranks = order_ranks(relevance_order(pixel_relevance(maps)))
    morf = MoRF(percentages, removal="noisy-linear", noise_std=0.0)(model, x, None, maps)
    p = model(x).softmax(1).gather(1, y[:, None]).squeeze(1)
    ours = {}
    for column, q in enumerate(percentages):
        removed = top_mask(ranks, pixel_count(q, 100), (10, 10))
        imputed = noisy_linear_imputation(x, removed, noise_std=0.0)
        with torch.no_grad():
            probs = model(imputed).softmax(1)
        ours[q] = (probs.argmax(1) == y).double().mean().item()
        # MoRF perturbs exactly these images
        change = (p - probs.gather(1, y[:, None]).squeeze(1)).abs() / p
        torch.testing.assert_close(morf.curve[:, column], change.detach())
    # exact: same masks, same system, float64 solutions cast to float32 in both; a flip would
    # need a logit tie within float32 rounding
    assert ours == {q: float(theirs[q]) for q in percentages}
    assert ours == {10: 0.78125, 30: 0.59375, 50: 0.6875, 70: 0.59375, 90: 0.5}
