"""Pathway Gradient as a Quantus ``explain_func``, run by real Quantus metrics."""

from __future__ import annotations

import warnings

import numpy as np
import quantus
import torch

from neuralpath.attribution import quantus_explain_func

from toys import tiny_cnn


def test_quantus_metrics_call_pathway_gradient() -> None:
    model = tiny_cnn(seed=0)
    x = torch.randn(4, 3, 8, 8)
    y = model(x).argmax(1).numpy()
    direct = quantus_explain_func(model, x.numpy(), y, sparsity=0.8)
    assert direct.shape == (4, 3, 8, 8) and direct.dtype == np.float32
    kwargs = {
        "model": model,
        "x_batch": x.numpy(),
        "y_batch": y,
        "a_batch": None,
        "explain_func": quantus_explain_func,
        "explain_func_kwargs": {"sparsity": 0.8},
        "device": "cpu",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparseness = quantus.Sparseness(disable_warnings=True)(**kwargs)
        sensitivity = quantus.MaxSensitivity(nr_samples=3, disable_warnings=True)(**kwargs)
    assert len(sparseness) == 4 and all(0.0 <= s <= 1.0 for s in sparseness)
    assert len(sensitivity) == 4 and all(np.isfinite(sensitivity))
    # Quantus handed our maps the same inputs: Sparseness equals the Gini index of |map|.
    flat = np.sort(np.abs(direct).reshape(4, -1), axis=1)
    n = flat.shape[1]
    gini = ((2 * np.arange(1, n + 1) - n - 1) * flat).sum(1) / (n * flat.sum(1))
    np.testing.assert_allclose(sparseness, gini, rtol=1e-4)
