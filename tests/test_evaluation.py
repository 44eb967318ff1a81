"""``evaluate_attribution``: the library orchestration behind ``neuralpath evaluate-attribution``."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from neuralpath.data import ImageDataset
from neuralpath.errors import DataError, InputError, ZeroMapsWarning
from neuralpath.evaluation import EvaluationConfig, evaluate_attribution, markdown_table
from neuralpath.metrics.perturbation import Deletion, LeRF, bind, method_explainer

from toys import tiny_cnn


@pytest.fixture(scope="module")
def dataset() -> ImageDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 8, 8, generator=generator)
    labels = torch.randint(0, 3, (6,), generator=generator)
    return ImageDataset(images, labels, "toy", "test", ["a", "b", "c"], (0.0,) * 3, (1.0,) * 3)


def test_payload_equals_the_metrics_called_directly(dataset) -> None:
    model = tiny_cnn()
    config = EvaluationConfig(
        metrics=("lerf", "deletion", "sanity"), percentages=(10.0, 50.0), steps=4,
        batch_size=4, sanity_limit=2, progress=False,
    )  # fmt: skip
    methods = ["gradient", "pathway-gradient:cp-mct"]
    payload = evaluate_attribution(model, dataset, methods, config)

    assert payload["methods"] == methods and payload["samples"] == 6
    gradient = bind(method_explainer("gradient"), model)
    lerf = LeRF((10.0, 50.0), batch_size=4)(model, dataset.images, explain=gradient).summary()
    deletion = Deletion(4, batch_size=4)(model, dataset.images, explain=gradient).summary()
    row = payload["results"]["gradient"]
    assert row["lerf"]["fractions"] == lerf["fractions"]
    assert row["lerf"]["curve"] == pytest.approx(lerf["curve"], abs=1e-6)
    assert row["deletion"]["area"] == pytest.approx(deletion["area"], abs=1e-6)
    assert len(row["sanity"]["similarity"]["ssim"]) == len(row["sanity"]["layers"])
    assert payload["results"]["pathway-gradient:cp-mct"]["lerf"]["samples"] == 6
    assert row["zero_maps"] == 0

    # channels at 99 %: the global threshold empties whole layers, so every map is zero
    cut = replace(config, metrics=("lerf",), sparsity=0.99, granularity="channel")
    with pytest.warns(ZeroMapsWarning) as caught:  # one warning for the run, not one per batch
        zero = evaluate_attribution(model, dataset, ["pathway-gradient:cp-mct"], cut)
    assert zero["results"]["pathway-gradient:cp-mct"]["zero_maps"] == 6
    assert [str(w.message) for w in caught] == [
        "all-zero maps, whose pixel rankings are ties only: pathway-gradient:cp-mct (6 of 6)"
    ]

    table = markdown_table(payload).splitlines()
    assert table[0].startswith("| method | LERF 10% ↓") and "deletion AUC ↓" in table[0]
    assert [line.split(" | ")[0] for line in table[2:]] == [f"| {m}" for m in methods]


def test_bad_requests_are_clear_errors(dataset) -> None:
    model = tiny_cnn()
    with pytest.raises(InputError, match="vibes"):
        evaluate_attribution(model, dataset, ["gradient"], EvaluationConfig(metrics=("vibes",)))
    with pytest.raises(InputError, match="at least one"):
        evaluate_attribution(model, dataset, [], EvaluationConfig(metrics=("lerf",)))
    with pytest.raises(InputError, match="lime"):
        evaluate_attribution(model, dataset, ["lime"], EvaluationConfig(metrics=("lerf",)))
    with pytest.raises(DataError, match="masks"):
        evaluate_attribution(
            model, dataset, ["gradient"], EvaluationConfig(metrics=("localisation",))
        )
    with pytest.raises(InputError, match="ROAR"):
        evaluate_attribution(model, dataset, ["gradient"], EvaluationConfig(metrics=("roar",)))
