"""Connectivity of pathway models: does the explained logit depend on the input at all?

A pathway **disconnects** the network for a sample when the explained logit ``y_c`` of its
pathway model ``H_P`` is the same for every input: no chain of kept units carries the input to
the output. Dropped units are constants under zero and mean ablation (and donor activations carry
no gradient under resample ablation), so then ``∂y_c(H_P(x))/∂x`` is exactly zero at every ``x``.
Typical causes: a layer with no kept unit (an *empty layer*), or kept channels on either side of a
depthwise or grouped conv that share no group (EfficientNet, MobileNet), so that every kept output
channel reads dropped inputs only. Such a pathway model predicts the same class for any image: its
agreement says nothing about the sample (:mod:`neuralpath.metrics.faithfulness` counts it unfaithful).

Detection (:func:`input_dependence`), for any architecture: one forward and one backward of ``H_P``
per batch. A sample whose input gradient is non-zero somewhere is *connected* (its output provably
depends on the input). A zero gradient can also come from a connected pathway whose kept units are
all inactive at this input (ReLU below zero, a saturated or clipped unit): such samples are tried
again at seeded noisy copies of the input (:data:`PROBE_SCALES`), and any non-zero gradient there
makes them connected. A sample is reported **disconnected** when its gradient is exactly zero at the
input and at every probe. A structural disconnection is always reported (its gradient is zero
everywhere). So is a *dead end*: kept units that are linked but never pass anything, e.g. one kept
channel (non-negative after a ReLU) whose weights into the only kept channel of the next layer
drive it below zero for any input; its output is then constant too (measured on the Fashion-MNIST
VGG-11: identical logits over 200 other test images). A pathway with a live chain is reported only
if it is locally constant at the input and at all probes.
A structural check of grouped convs is therefore not needed beside it; :func:`empty_layers` names
the cheap structural cause (a layer that keeps nothing; it disconnects the network unless a skip
connection bypasses that layer).
"""

from __future__ import annotations

import torch
from torch import Tensor

from neuralpath.gating import GatedModel
from neuralpath.pathway import Pathway
from neuralpath.seeding import sample_seeds
from neuralpath.targets import select_logit

PROBE_SCALES: tuple[float, ...] = (1.0, 4.0, 16.0)
"""Noise levels of the probes, in units of ``max(1, std(x))`` per sample: probe ``k`` is
``x + scale_k · max(1, std(x)) · ε_k`` with ``ε_k ~ N(0, I)`` drawn from a hash of ``x`` and the
seed (the same for a sample in any batch) [ours]. Measured on the demo's Fashion-MNIST targets
(channel critical pathways at sparsity 0.9, 200 test images): the gradient at the sample alone
reports 191 (VGG-11) and 92 (AlexNet) disconnected, 19 of AlexNet's with logits that vary over
the 200 images (false reports); with these three probes 188 and 19, none varying, the same as with
six scales from 0.5 to 16; two probes (2, 8) left 33 on AlexNet."""


def empty_layers(pathway: Pathway) -> Tensor:
    """Per sample, whether some layer keeps no unit at all: ``[B]`` bool on the CPU."""
    kept = pathway.kept_fraction_per_layer().values()
    return torch.stack([k.cpu() == 0 for k in kept]).any(dim=0)


def _gradient_reaches(
    gated: GatedModel, inputs: Tensor, pathway: Pathway, classes: Tensor
) -> Tensor:
    """``[B]`` bool (on the inputs' device): ``∂y_c(H_P(x))/∂x`` is non-zero somewhere."""
    with torch.enable_grad():
        leaf = gated.fast_layout(inputs.detach()).requires_grad_()
        logits = gated.forward(leaf, pathway)
        (grad,) = torch.autograd.grad(select_logit(logits, classes).sum(), leaf, allow_unused=True)
    if grad is None:
        return torch.zeros(inputs.shape[0], dtype=torch.bool, device=inputs.device)
    return grad.flatten(1).ne(0).any(dim=1)


def _probes(inputs: Tensor, seed: int, scale: float) -> Tensor:
    """``inputs`` ``[R, ...]`` plus seeded noise at ``scale · max(1, std(x))`` per sample."""
    noise = torch.stack(
        [
            torch.randn(inputs.shape[1:], generator=torch.Generator().manual_seed(s))
            for s in sample_seeds(seed, inputs)
        ]
    ).to(device=inputs.device, dtype=inputs.dtype)
    spread = inputs.flatten(1).std(dim=1, unbiased=False).clamp_min(1.0)
    return inputs + scale * spread.view(-1, *([1] * (inputs.dim() - 1))) * noise


def input_dependence(
    gated: GatedModel,
    inputs: Tensor,
    pathway: Pathway,
    classes: Tensor,
    *,
    seed: int = 0,
    probe_scales: tuple[float, ...] = PROBE_SCALES,
) -> Tensor:
    """Per sample, whether the logit ``classes`` ``[B]`` of ``H_P`` depends on the input
    (connected, True) or not (disconnected, False); ``[B]`` bool on the CPU.

    ``inputs``: ``[B, *gated.input_shape]``; ``pathway``: its ``[B, ...]`` masks, run under the
    gated model's intervention. See the module docstring for the rule; ``probe_scales`` ``()``
    keeps the plain gradient test (ReLU-dead samples then count as disconnected). Samples whose
    pathway empties a layer are probed too: a skip connection around that layer (ResNet,
    EfficientNet) may still carry the input. The passes run channels-last where the model allows
    it (:meth:`~neuralpath.gating.GatedModel.fast_layout`).
    """
    classes = classes.to(inputs.device)
    connected = _gradient_reaches(gated, inputs, pathway, classes)
    for scale in probe_scales:
        rows = (~connected).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        probes = _probes(inputs[rows], seed, scale)
        found = _gradient_reaches(
            gated, probes, pathway.select(rows.to(pathway.device)), classes[rows]
        )
        connected[rows] = found
    return connected.cpu()


def disconnect_warning(summary: dict[str, object], what: str) -> str | None:
    """A one-line warning when some of ``summary``'s pathways disconnect the network, else None."""
    count, total = summary.get("disconnected_n"), summary.get("n")
    if not isinstance(count, int) or count == 0:
        return None
    of = f" of {total}" if isinstance(total, int) else ""
    empty = summary.get("empty_layer_n")
    grouped = "kept channels on either side of a depthwise or grouped conv that do not connect"
    if isinstance(empty, int) and empty:
        cause = f" ({empty} keep no unit of some layer)"
    elif isinstance(empty, int):
        cause = f" (none empties a layer: e.g. {grouped})"
    else:
        cause = f" (a layer that keeps no unit, or {grouped})"
    return (
        f"{what}: {count}{of} pathways disconnect the network: their pathway model's output "
        f"does not depend on the input{cause}; they are counted unfaithful; lower the sparsity, "
        "use element units or a per-layer selection"
    )
