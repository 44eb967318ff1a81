"""Distance-Aware Quantization (Kim, Lee, Ham, ICCV 2021), 1 bit: binarise scores in [0, 1].

Forward: exactly the rounded level ``round(s)`` (0 or 1, round-half-to-even, so 0.5 -> 0).
Backward: the gradient of DAQ's soft assignment (spec §5):

1. distances to the levels ``q = (0, 1)``: ``m_i = exp(-|s - q_i|)``;
2. a kernel around the nearer level ``i*``: ``k_i = exp(-(q_i - q_{i*})² / σ²)``;
   ``u_i = m_i k_i``;
3. an adaptive temperature ``β* = β / (|u_0 - u_1| + ε)``, detached;
4. ``w = softmax(β* u)`` and ``soft = w_0 q̃_0 + w_1 q̃_1`` with the shifted levels
   ``q̃_0 = -1/(e^β - 1)``, ``q̃_1 = 1 + 1/(e^β - 1)``.

Because ``β* |u_0 - u_1| = β`` (up to ε) and the nearer level always has the larger ``u``, the
winning weight is always ``e^β / (1 + e^β)`` and ``soft`` equals the hard level in exact
arithmetic. In floating point it is off by ~1e-7, so the returned value is the straight-through
combination ``hard + (soft - soft.detach())`` [ours]: its forward value is the exact level and its
gradient is ``d soft / d s``. That gradient is ``(q̃_1 - q̃_0) w_0 w_1 β* d(u_1 - u_0)/ds``:
finite, positive everywhere in [0, 1], and largest next to 0.5 where ``|u_0 - u_1|`` is smallest.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from neuralpath.errors import InputError

DEFAULT_BETA = 2.0
DEFAULT_SIGMA = 1.0
DEFAULT_EPS = 1e-6


def _check(beta: float, sigma: float, eps: float) -> None:
    for name, value in (("beta", beta), ("sigma", sigma)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise InputError(f"DAQ {name} must be a positive finite number, got {value!r}")
    if not (isinstance(eps, int | float) and eps >= 0):
        raise InputError(f"DAQ eps must be >= 0, got {eps!r}")


def daq_soft(
    scores: Tensor,
    beta: float = DEFAULT_BETA,
    sigma: float = DEFAULT_SIGMA,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """DAQ's soft quantiser ``w_0 q̃_0 + w_1 q̃_1`` for ``scores`` in [0, 1] (any shape).

    Equals ``round(scores)`` up to float rounding; differentiable with respect to ``scores``.
    """
    _check(beta, sigma, eps)
    hard = torch.round(scores.detach())
    m0 = torch.exp(-scores.abs())
    m1 = torch.exp(-(scores - 1.0).abs())
    far = math.exp(-1.0 / sigma**2)  # kernel value of the farther level (|q_0 - q_1| = 1)
    u0 = m0 * torch.where(hard > 0, far, 1.0)
    u1 = m1 * torch.where(hard > 0, 1.0, far)
    beta_star = (beta / ((u0 - u1).abs() + eps)).detach()
    # softmax over the two levels: w_1 = sigmoid(β* (u_1 - u_0)), w_0 = 1 - w_1.
    w1 = torch.sigmoid(beta_star * (u1 - u0))
    shift = 1.0 / math.expm1(beta)
    q0, q1 = -shift, 1.0 + shift
    return q0 + (q1 - q0) * w1


def daq(
    scores: Tensor,
    beta: float = DEFAULT_BETA,
    sigma: float = DEFAULT_SIGMA,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    """1-bit DAQ of ``scores`` in [0, 1]: forward exactly ``round(scores)``, DAQ gradient backward.

    Same shape and dtype as ``scores``.
    """
    soft = daq_soft(scores, beta, sigma, eps)
    hard = torch.round(scores.detach())
    return hard + (soft - soft.detach())


class DAQ(nn.Module):
    """:func:`daq` as a module: ``DAQ(beta=2, sigma=1)(s)`` with ``s`` in [0, 1], any shape."""

    def __init__(
        self, beta: float = DEFAULT_BETA, sigma: float = DEFAULT_SIGMA, eps: float = DEFAULT_EPS
    ):
        super().__init__()
        _check(beta, sigma, eps)
        self.beta, self.sigma, self.eps = float(beta), float(sigma), float(eps)

    def forward(self, scores: Tensor) -> Tensor:
        return daq(scores, self.beta, self.sigma, self.eps)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, sigma={self.sigma}, eps={self.eps}"
