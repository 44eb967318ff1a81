"""Distance-Aware Quantization, 1 bit (spec §5)."""

from __future__ import annotations

import math

import pytest
import torch

from neuralpath.errors import InputError
from neuralpath.methods.gencnp.daq import DAQ, daq, daq_soft


def test_forward_is_exactly_the_rounded_level() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.rand(10_000, generator=g)
    s = torch.cat([s, torch.tensor([0.0, 0.5, 1.0, 0.4999999, 0.5000001])])
    out = daq(s)
    assert out.dtype == s.dtype
    assert torch.equal(out, torch.round(s))
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_soft_quantiser_equals_hard_level_up_to_rounding() -> None:
    s = torch.rand(1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for beta, sigma in ((2.0, 1.0), (5.0, 2.0), (0.5, 0.7)):
        # exact in exact arithmetic without the epsilon; the epsilon shifts it by O(eps)
        torch.testing.assert_close(
            daq_soft(s, beta, sigma, eps=0.0), torch.round(s), atol=1e-12, rtol=0
        )
        torch.testing.assert_close(daq_soft(s, beta, sigma), torch.round(s), atol=1e-5, rtol=0)


def test_gradients_finite_nonzero_and_largest_near_half() -> None:
    s = torch.linspace(0.01, 0.99, 99, requires_grad=True)
    daq(s).sum().backward()
    grad = s.grad
    assert torch.isfinite(grad).all()
    assert (grad > 0).all()
    peak = float(s.detach()[grad.argmax()])
    assert abs(peak - 0.5) <= 0.011
    # monotone: rises towards 0.5 from both ends
    left, right = grad[:49], grad[50:]
    assert (left[1:] >= left[:-1]).all() and (right[1:] <= right[:-1]).all()


def test_gradient_matches_closed_form() -> None:
    beta, sigma = 2.0, 1.0
    s = torch.tensor([0.2], dtype=torch.float64, requires_grad=True)
    daq(s, beta, sigma).sum().backward()
    c = math.exp(-1 / sigma**2)
    x = 0.2  # nearer level 0: u0 = e^{-x}, u1 = c e^{-(1-x)}
    u0, u1 = math.exp(-x), c * math.exp(-(1 - x))
    bstar = beta / (u0 - u1 + 1e-6)
    w1 = 1 / (1 + math.exp(-bstar * (u1 - u0)))
    expected = (1 + 2 / math.expm1(beta)) * w1 * (1 - w1) * bstar * (u1 + u0)
    assert s.grad.item() == pytest.approx(expected, rel=1e-6)


def test_module_and_shapes() -> None:
    module = DAQ(beta=3.0, sigma=2.0)
    s = torch.rand(4, 5, 6, requires_grad=True)
    out = module(s)
    assert out.shape == s.shape
    out.sum().backward()
    assert s.grad.shape == s.shape and torch.isfinite(s.grad).all()
    assert "beta=3.0" in repr(module)


@pytest.mark.parametrize("kwargs", [{"beta": 0.0}, {"sigma": -1.0}, {"beta": float("nan")}])
def test_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(InputError):
        DAQ(**kwargs)
