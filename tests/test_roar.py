"""ROAR on a tiny synthetic problem: runs, resumes without retraining, ranks maps sensibly."""

from __future__ import annotations

import json

import pytest
import torch

from neuralpath.data import ImageDataset, subset
from neuralpath.errors import CheckpointError, InputError
from neuralpath.metrics.roar import ROAR, make_trainer
from neuralpath.models import build_model

ARCH = "alexnet"
ARCH_ARGS = {"num_classes": 2, "in_channels": 1, "input_size": 8, "width": 0.0625}


def split(n: int, seed: int, name: str) -> ImageDataset:
    """Class = sign of the left half (columns 0-3); the right half is noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=gen)
    images = 0.5 * torch.randn(n, 1, 8, 8, generator=gen)
    images[:, :, :, :4] += (2.0 * labels - 1.0).view(-1, 1, 1, 1)
    return ImageDataset(images, labels, "left-right", name, ["neg", "pos"], (0.0,), (1.0,))


def informative(x: torch.Tensor, _t: torch.Tensor) -> torch.Tensor:
    relevance = torch.zeros_like(x)
    relevance[..., :4] = 1.0
    return relevance


def random_map(x: torch.Tensor, _t: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(x.abs().sum().item() * 1000) % 2**31)
    return torch.rand(x.shape, generator=gen)


class Counting:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, *args):
        self.calls += 1
        return self.inner(*args)


@pytest.fixture(scope="module")
def data():
    return split(400, 0, "train"), split(200, 1, "test")


def test_roar_runs_resumes_and_separates_maps(tmp_path, data) -> None:
    train, test = data
    model = build_model(ARCH, **ARCH_ARGS).eval()
    trainer = Counting(make_trainer(ARCH, ARCH_ARGS, epochs=4, batch_size=32))
    explainers = {"informative": Counting(informative), "random": Counting(random_map)}
    roar = ROAR(tmp_path, percentages=(50,), target="label", trainer=trainer, progress=False)
    result = roar(model, ARCH, ARCH_ARGS, train, test, explainers)

    assert trainer.calls == 3 and result.trained == 3  # unperturbed + 2 methods x 1 q
    assert result.unperturbed > 0.9
    # the informative map removes the whole left half: nothing to learn from
    assert result.accuracy["informative"][50.0] < 0.7
    assert result.accuracy["random"][50.0] > 0.9
    assert (tmp_path / "ranks" / "informative.safetensors").exists()
    cell = json.loads(
        (tmp_path / "results" / roar.training_key / "random" / "q50.json").read_text()
    )
    assert cell["accuracy"] == result.accuracy["random"][50.0]

    calls = [explainers["informative"].calls, explainers["random"].calls]
    again = roar(model, ARCH, ARCH_ARGS, train, test, explainers)
    assert trainer.calls == 3 and again.trained == 0
    assert [explainers["informative"].calls, explainers["random"].calls] == calls  # masks cached
    assert again.accuracy == result.accuracy and again.unperturbed == result.unperturbed
    assert again.summary()["accuracy"]["random"]["50"] == result.accuracy["random"][50.0]

    # a new q reuses the cached ranks and trains only the missing cells
    more = ROAR(tmp_path, percentages=(50, 90), target="label", trainer=trainer, progress=False)
    extended = more(model, ARCH, ARCH_ARGS, train, test, explainers)
    assert extended.trained == 2 and trainer.calls == 5
    assert [explainers["informative"].calls, explainers["random"].calls] == calls

    # another retraining recipe reuses the rankings and retrains every cell
    longer = ROAR(
        tmp_path, percentages=(50,), epochs=2, target="label", trainer=trainer, progress=False
    )
    assert longer(model, ARCH, ARCH_ARGS, train, test, explainers).trained == 3
    assert [explainers["informative"].calls, explainers["random"].calls] == calls

    with pytest.raises(CheckpointError):  # rankings for other data must not be reused
        ROAR(tmp_path, percentages=(50,), target="label", trainer=trainer, progress=False)(
            model, ARCH, ARCH_ARGS, subset(train, 300, 0), test, explainers
        )
    with pytest.raises(CheckpointError):
        ROAR(tmp_path, percentages=(50,), target="prediction", trainer=trainer, progress=False)(
            model, ARCH, ARCH_ARGS, train, test, explainers
        )
    retrained = build_model(ARCH, **ARCH_ARGS).eval()  # same architecture, other weights
    with torch.no_grad():
        next(retrained.parameters()).add_(0.01)
    with pytest.raises(CheckpointError, match="model"):  # its rankings would differ
        ROAR(tmp_path, percentages=(50,), target="label", trainer=trainer, progress=False)(
            retrained, ARCH, ARCH_ARGS, train, test, explainers
        )


def test_maps_made_with_other_settings_are_refused(tmp_path, data) -> None:
    train, test = data
    model = build_model(ARCH, **ARCH_ARGS).eval()
    trainer = Counting(make_trainer(ARCH, ARCH_ARGS, epochs=1, batch_size=32))
    explainers = {"informative": Counting(informative)}
    roar = ROAR(
        tmp_path,
        percentages=(50,),
        target="label",
        trainer=trainer,
        progress=False,
        include_unperturbed=False,
    )
    roar(model, ARCH, ARCH_ARGS, train, test, explainers, {"informative": {"sparsity": 0.9}})
    calls = explainers["informative"].calls
    assert trainer.calls == 1
    again = roar(
        model, ARCH, ARCH_ARGS, train, test, explainers, {"informative": {"sparsity": 0.9}}
    )
    assert again.trained == 0 and explainers["informative"].calls == calls  # same settings: cached
    with pytest.raises(CheckpointError, match="other settings"):  # cached cells would be stale
        roar(model, ARCH, ARCH_ARGS, train, test, explainers, {"informative": {"sparsity": 0.5}})
    with pytest.raises(CheckpointError, match="other settings"):
        roar(model, ARCH, ARCH_ARGS, train, test, explainers)


def test_removed_pixels_are_the_top_ranked(tmp_path, data) -> None:
    train, _ = data
    roar = ROAR(tmp_path, percentages=(25,), progress=False)
    order = torch.arange(64).flip(0).expand(3, 64)  # pixel 63 most relevant
    perturbed = roar._perturbed(subset(train, 3, 0), order, 25)
    removed = perturbed.images == 0
    assert removed.flatten(1).sum(dim=1).tolist() == [16, 16, 16]
    assert removed.flatten(1)[:, 48:].all()


def test_subset_and_bad_input(data) -> None:
    train, _ = data
    small = subset(train, 10, seed=1)
    assert len(small) == 10 and torch.equal(small.images, subset(train, 10, seed=1).images)
    assert subset(train, None, 0) is train
    for bad in ({"percentages": (0,)}, {"percentages": (150,)}, {"epochs": 0}, {"target": "other"}):
        with pytest.raises(InputError):
            ROAR("unused", **bad)
    model = build_model(ARCH, **ARCH_ARGS)
    with pytest.raises(InputError):
        ROAR("unused", progress=False)(model, ARCH, ARCH_ARGS, train, train, {})
    with pytest.raises(InputError):
        ROAR("unused", progress=False)(model, ARCH, ARCH_ARGS, train, train, {"a/b": informative})
