"""DGR: Distillation Guided Routing (Wang, Su, Zhang, Hu, CVPR 2018), batched.

Per input ``x`` with teacher ``π = softmax(H(x))`` and predicted class ``ĉ``, learn control gates
``λ_l`` (one per channel, or per element, of every gated site; the network stays frozen) by
minimising::

    L(λ) = −Σ_j π_j log softmax(H_λ(x))_j + γ Σ_l ‖λ_l‖₁

with SGD with momentum (``v ← μ v + ∇L``, ``λ ← λ − lr·v``), clamping ``λ`` to
``[0, clamp_max]`` after every step. The released code's defaults: γ = 0.05, lr 0.1, μ = 0.9,
T = 30 iterations, clamp to [0, 5] (it used [0, 100] for ResNet-50 block outputs), gates start
at 1. The result is the iterate with the lowest loss among those whose prediction still equals
``ĉ``. DGR-R starts the gates from U(0, 1) instead.

Gated sites are :class:`~neuralpath.gating.GatedModel`'s, by default the output of the
activation after every conv. The released code multiplied the *conv outputs*; for ReLU networks
multiplying by a non-negative gate before or after the ReLU gives the same forward
(``relu(λ a) = λ relu(a)`` for ``λ ≥ 0``) and the same gradient with respect to ``λ``.

**Batching.** Gates ``[B, C_l]`` for ``B`` images are optimised at once. The loss minimised is
the *sum* of the per-sample losses, so the gradient for sample ``b``'s gates is exactly its own
single-image gradient (BatchNorm runs in eval mode; samples never interact), and best-iterate
bookkeeping is per sample: the batch equals the one-image-at-a-time loop.

**Which iterates count.** Iteration ``t = 0 .. T−1`` runs the gated forward at the current
gates ``λ_t`` (its loss and prediction belong to ``λ_t``), then steps to ``λ_{t+1}``. So the
starting gates are a candidate, and ``λ_{T−1}`` is the last one (the step to ``λ_T`` would never
be evaluated and is not taken). With gates starting at 1 the start is the full model, so some
iterate always keeps the prediction.

**Saturated teachers.** The distillation term is computed relative to the teacher's class ``ĉ``
(:func:`distillation_loss`), so its gradient does not vanish by rounding where the teacher's
softmax is exactly 1.0 in float32 (``1 − 1 = 0`` in the plain form); the value is unchanged.
Where even that gradient is negligible next to ``γ`` (a logit gap in the hundreds), every gate
gets the same L1 step and the gates stay tied.

**Binary pathway and kept_prediction.** ``"percentile"`` (the default) drops the gates at or below
the global ``sparsity`` percentile, except that a sample whose gates would all be dropped (every
gate tied at the threshold) keeps its gates tied at the top (when positive): ties never empty a
pathway; then every layer keeps its ``min_per_layer`` largest positive gates (a closed gate, 0,
is never reopened), so the threshold does not empty a layer either.
``kept_prediction`` is checked on that *binary* pathway: its pathway model must predict the
target, and a pathway that keeps no unit never counts (nothing of the input passes it).

**No iterate keeps the prediction** (possible with DGR-R, or for a ``target`` other than the
prediction): with ``retries > 0`` the sample is optimised again from the same start with
``γ·retry_factor`` (repeatedly, PathwayGrad's rule); if that never succeeds, the returned gates
are the starting gates (``kept_prediction`` then checks their binary pathway),
``best_iteration`` is −1 and ``best_loss`` is the loss at the start.

Cost per batch: 1 forward for the teacher + T gated forwards + T − 1 backwards to the gates
(the step after the last iterate is never evaluated, so it is not taken) + 1 forward of the
binary pathway (``kept_prediction``) ≈ ``3T`` forward-equivalents
(:meth:`DGR.forward_equivalents`); the backward needs no weight gradients, so the measured cost
is lower (see ``benchmarks/speed_dgr.py``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor

from neuralpath.gating import GatedModel, channels_last
from neuralpath.methods.base import (
    FinderConfig,
    PathwayFinder,
    make_config,
    register_finder,
    require,
)
from neuralpath.methods.connect import TEST_COST, Ranker, connect_pathway, taylor_ranker
from neuralpath.pathway import (
    Granularity,
    Pathway,
    check_sparsity,
    global_percentile,
    keep_per_layer,
)
from neuralpath.targets import TargetType, resolve_target

InitRule = Literal["ones", "uniform"]
InitDraw = Literal["per_sample", "shared"]
BinarizeRule = Literal["positive", "percentile"]
MemoryFormat = Literal["auto", "channels_last", "contiguous"]


@dataclass(frozen=True)
class DGRConfig(FinderConfig):
    """Settings of :class:`DGR` (``dgr``) and :class:`DGRR` (``dgr-r``).

    The optimisation's defaults are the released DGR code's (γ 0.05, lr 0.1, momentum 0.9,
    30 iterations, clamp 5, gates from 1), with ``granularity="channel"``: Wang et al. gate
    channels. ``init``: ``"ones"`` (DGR) or ``"uniform"`` (DGR-R: U(0, 1)). ``init_draw``
    **[ours]**, for DGR-R: ``"per_sample"`` draws each sample's start from a generator seeded
    with ``seed`` and a hash of the sample's values, so samples start apart (as in a per-image
    loop) while results still do not depend on how a data set is split into batches;
    ``"shared"``: one draw from ``seed`` for every sample (pathways then start alike, which
    inflates their overlap). ``binarize``: ``"percentile"`` (default) keeps the gates above the
    global ``sparsity`` percentile of all layers (:func:`~neuralpath.pathway.global_percentile`)
    at ``sparsity=0.9``, the protocol Khakzar et al. compare DGR in (every finder at the same
    sparsity), or the gates tied at the top where that would keep none; ``"positive"`` keeps
    every gate ``> 0`` (its own, per-sample sparsity). ``min_per_layer`` **[ours]**, default 1,
    for ``"percentile"``: every layer keeps its largest positive gates, so one threshold over
    channels cannot empty a layer (0: the plain percentile rule). ``retries``: how many times a
    sample none of whose iterates kept the prediction is re-optimised with ``γ`` multiplied by
    ``retry_factor``. ``memory_format`` **[ours]**: the layout the optimisation runs in;
    ``"auto"`` runs 4-D inputs channels-last when the model accepts them
    (:meth:`GatedModel.runs_channels_last`), which is faster on CPU (NCHW max-pooling is slow
    there); results agree to float tolerance. ``connect`` **[ours]**, default True: a sample whose
    binary pathway passes nothing of its input (zero gradient at the sample) is widened (:mod:`neuralpath.methods.connect`), open
    gates first by value, then closed gates by their Taylor score; ``kept_prediction`` is checked
    on the widened pathway. False: the binarised gates as they are.
    """

    gamma: float = 0.05
    lr: float = 0.1
    momentum: float = 0.9
    iterations: int = 30
    clamp_max: float = 5.0
    init: InitRule = "ones"
    init_draw: InitDraw = "per_sample"
    granularity: Granularity = "channel"
    binarize: BinarizeRule = "percentile"
    sparsity: float = 0.9
    min_per_layer: int = 1
    retries: int = 0
    retry_factor: float = 0.1
    seed: int = 0
    memory_format: MemoryFormat = "auto"
    connect: bool = True

    def check(self) -> None:
        require(self.gamma >= 0, f"gamma must be >= 0, got {self.gamma!r}")
        require(self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        require(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        require(
            self.iterations > 0, f"iterations must be a positive integer, got {self.iterations!r}"
        )
        require(self.clamp_max > 0, f"clamp_max must be > 0, got {self.clamp_max!r}")
        require(self.retries >= 0, f"retries must be a non-negative integer, got {self.retries!r}")
        require(
            0 < self.retry_factor < 1, f"retry_factor must be in (0, 1), got {self.retry_factor!r}"
        )
        require(self.min_per_layer >= 0, f"min_per_layer must be >= 0, got {self.min_per_layer}")
        check_sparsity(self.sparsity)

    @classmethod
    def pathwaygrad(cls, **changes: object) -> DGRConfig:
        """PathwayGrad's DGR variant: element gates, γ = 0.01, lr 0.01, 1000 iterations, one
        retry with γ/10 when no iterate kept the prediction. ``changes`` override any field."""
        preset: dict[str, object] = {
            "gamma": 0.01,
            "lr": 0.01,
            "iterations": 1000,
            "granularity": "element",
            "retries": 1,
            "retry_factor": 0.1,
        }
        preset.update(changes)
        return cls(**preset)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DGRResult:
    """Everything :meth:`DGR.optimise` learned for a batch of ``B`` samples.

    ``gates``: continuous gates (the best iterate) ``{site: [B, C] | [B, *shape]}``;
    ``pathway``: binarised per the config; ``kept_prediction``: ``[B]`` bool, the binary pathway
    keeps some unit and its pathway model predicts the target (``best_iteration >= 0``: some
    iterate of the continuous gates did); ``best_loss``/``best_iteration``/``gamma``: ``[B]``
    (``γ`` after retries);
    ``target``: ``[B]`` class each sample was explained for; ``losses``/``kept_history``:
    ``[T, B]`` per-iteration loss and prediction check of each sample's final attempt;
    ``forward_equivalents``: cost of the call in forward passes (retries counted pro rata).
    """

    gates: Pathway
    pathway: Pathway
    kept_prediction: Tensor
    best_loss: Tensor
    best_iteration: Tensor
    gamma: Tensor
    target: Tensor
    losses: Tensor
    kept_history: Tensor
    forward_equivalents: float


@dataclass
class _Attempt:
    best: dict[str, Tensor]
    best_loss: Tensor
    best_iteration: Tensor
    losses: Tensor
    kept: Tensor


@register_finder("dgr", DGRConfig, fixed={"init": "ones"})
class DGR(PathwayFinder):
    """Distillation Guided Routing: per-sample gates by distillation + L1 (see module docstring).

    >>> finder = DGR(GatedModel.discover(model, x[:1]))
    >>> result = finder.optimise(x)         # continuous gates, binary pathway, diagnostics
    >>> pathway = finder.find(x)            # binary pathway [B, C_l] per site
    """

    name = "dgr"

    def __init__(self, gated: GatedModel, config: DGRConfig | None = None, **changes: Any):
        super().__init__(gated)
        self.config = make_config(DGRConfig, config, changes)
        self.sparsity = self.config.sparsity if self.config.binarize == "percentile" else None

    def find(self, inputs: Tensor, target: TargetType = None) -> Pathway:
        """Binary pathway of ``inputs`` ``[B, *input_shape]`` (see :meth:`optimise`)."""
        return self.optimise(inputs, target).pathway

    def forward_equivalents(self) -> float:
        """Nominal cost per batch without retries: ``3T`` = teacher + ``T`` gated forwards +
        ``T − 1`` backwards (≈ 2 forwards each; the last iterate needs no step) + the binary
        pathway's forward; + 3 for the connectivity test when ``connect`` (repairs not counted)."""
        test = TEST_COST if self.config.connect else 0.0
        return 2.0 + _attempt_cost(self.config.iterations) + test

    def initial_gates(self, inputs: Tensor) -> dict[str, Tensor]:
        """Starting gates ``{site: [B, C] | [B, *shape]}`` for ``inputs`` ``[B, *input_shape]``:
        ones, or U(0, 1) draws per ``init_draw`` (made on the CPU in float64, so every device and
        dtype starts alike)."""
        cfg = self.config
        batch = inputs.shape[0]
        shapes = {site.name: site.mask_shape(cfg.granularity) for site in self.gated.sites}
        if cfg.init == "ones":
            return {
                name: torch.ones(batch, *shape, dtype=inputs.dtype, device=inputs.device)
                for name, shape in shapes.items()
            }
        if cfg.init_draw == "shared":
            seeds = [cfg.seed]
        else:
            seeds = [_sample_seed(cfg.seed, sample) for sample in inputs.detach().cpu()]
        draws = []
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            draws.append(
                {
                    n: torch.rand(s, generator=generator, dtype=torch.float64)
                    for n, s in shapes.items()
                }
            )
        return {
            name: torch.stack([draw[name] for draw in draws])
            .to(inputs.device, inputs.dtype)
            .expand(batch, *shape)
            .clone()
            for name, shape in shapes.items()
        }

    def optimise(self, inputs: Tensor, target: TargetType = None) -> DGRResult:
        """Optimise the gates of every sample of ``inputs`` ``[B, *input_shape]`` at once.

        ``target``: the class whose prediction an iterate must keep (None: the model's own
        prediction ``ĉ``, as in the paper); the distillation teacher is always ``softmax(H(x))``.
        """
        cfg = self.config
        self.gated.check_inputs(inputs)
        inputs = inputs.to(self.gated.device)
        if cfg.memory_format == "auto":
            inputs = self.gated.fast_layout(inputs)
        elif cfg.memory_format == "channels_last":
            inputs = channels_last(inputs)
        with torch.no_grad():
            logits = self.gated.forward(inputs)
        teacher = logits.softmax(dim=1)
        target = resolve_target(logits, target)
        batch = inputs.shape[0]
        start = self.initial_gates(inputs)

        attempt = self._run(inputs, teacher, target, start, cfg.gamma)
        gamma = torch.full((batch,), cfg.gamma, dtype=torch.float64, device=inputs.device)
        attempts = float(batch)  # samples optimised, retries included
        for retry in range(1, cfg.retries + 1):
            failed = (attempt.best_iteration < 0).nonzero().squeeze(1)
            if failed.numel() == 0:
                break
            retry_gamma = cfg.gamma * cfg.retry_factor**retry
            again = self._run(
                inputs[failed], teacher[failed], target[failed],
                {n: g[failed] for n, g in start.items()}, retry_gamma,
            )  # fmt: skip
            attempts += failed.numel()
            _scatter(attempt, again, failed)
            gamma[failed] = retry_gamma

        best = {name: gate.contiguous() for name, gate in attempt.best.items()}
        provenance = {"method": self.name, **_describe(cfg)}
        gates = Pathway(best, cfg.granularity, {**provenance, "continuous": True})
        pathway = self._binarize(best)
        pathway.metadata.update(provenance, binarize=cfg.binarize)
        if cfg.connect:
            pathway = connect_pathway(
                self.gated, inputs, pathway, target, rank=self._ranker(inputs, target, best)
            ).pathway
        with torch.no_grad(), self.gated.gate(pathway):
            predicted = self.gated.model(inputs).argmax(dim=1)
        kept_prediction = (predicted == target) & (pathway.kept_fraction() > 0)
        return DGRResult(
            gates=gates,
            pathway=pathway,
            kept_prediction=kept_prediction,
            best_loss=attempt.best_loss,
            best_iteration=attempt.best_iteration,
            gamma=gamma,
            target=target,
            losses=attempt.losses,
            kept_history=attempt.kept,
            forward_equivalents=2.0
            + _attempt_cost(cfg.iterations) * attempts / batch
            + (TEST_COST if cfg.connect else 0.0),
        )

    def _ranker(self, inputs: Tensor, target: Tensor, gates: dict[str, Tensor]) -> Ranker:
        """Unit ranks for the connecting repair: open gates by value, above every closed gate;
        closed gates by their Taylor score in the unmasked network."""
        taylor = taylor_ranker(self.gated, inputs, target, self.config.granularity)

        def rank(rows: Tensor) -> Mapping[str, Tensor]:
            ranks = {}
            for name, score in taylor(rows).items():
                gate = gates[name][rows.to(gates[name].device)]
                closed = score / (2 * score.max() + torch.finfo(score.dtype).tiny)  # in [0, 0.5]
                ranks[name] = torch.where(gate > 0, 1 + gate, closed)
            return ranks

        return rank

    def _binarize(self, gates: dict[str, Tensor]) -> Pathway:
        """Binary pathway of the continuous ``gates`` per ``config.binarize``; with
        ``"percentile"``, a sample whose gates all tie at or below the threshold keeps the ones
        tied at its top (when positive) instead of nothing, and every layer keeps its
        ``min_per_layer`` largest positive gates."""
        cfg = self.config
        if cfg.binarize == "positive":
            return Pathway({name: gate > 0 for name, gate in gates.items()}, cfg.granularity)
        pathway = global_percentile(gates, cfg.sparsity, cfg.granularity)
        empty = pathway.kept_fraction() == 0
        if empty.any():
            top = torch.stack([g.reshape(g.shape[0], -1).amax(dim=1) for g in gates.values()])
            top = top.amax(dim=0)  # [B]: each sample's largest gate
            masks = {}
            for name, mask in pathway.items():
                rows = (-1, *([1] * (mask.dim() - 1)))
                tied = (gates[name] == top.view(rows)) & (top.view(rows) > 0)
                masks[name] = torch.where(empty.view(rows), tied, mask)
            pathway = Pathway(masks, cfg.granularity, pathway.metadata)
        kept = keep_per_layer(pathway, gates, cfg.min_per_layer)
        masks = {name: mask & (gates[name] > 0) for name, mask in kept.items()}
        return Pathway(masks, cfg.granularity, kept.metadata)

    def _run(
        self,
        inputs: Tensor,
        teacher: Tensor,
        target: Tensor,
        start: dict[str, Tensor],
        gamma: float,
    ) -> _Attempt:
        """``T`` iterations of momentum SGD on gates ``start``; per-sample best kept iterate."""
        cfg = self.config
        batch = inputs.shape[0]
        gates = {n: g.clone().requires_grad_(True) for n, g in start.items()}
        velocity = {n: torch.zeros_like(g) for n, g in start.items()}
        best = {n: g.clone() for n, g in start.items()}
        best_loss = torch.full((batch,), math.inf, dtype=inputs.dtype, device=inputs.device)
        best_iteration = torch.full((batch,), -1, dtype=torch.long, device=inputs.device)
        losses = torch.empty(cfg.iterations, batch, dtype=inputs.dtype, device=inputs.device)
        kept_history = torch.empty(cfg.iterations, batch, dtype=torch.bool, device=inputs.device)
        names = list(gates)
        # One gate context for the whole loop: the hooks read the gate tensors, updated in place.
        # The last iteration's step would lead to gates never evaluated: it runs forward only.
        with self.gated.gate(gates):
            for step in range(cfg.iterations):
                last = step == cfg.iterations - 1
                with torch.set_grad_enabled(not last):
                    logits = self.gated.model(inputs)
                    distill = distillation_loss(logits, teacher)
                    l1 = sum(g.abs().reshape(batch, -1).sum(dim=1) for g in gates.values())
                    loss = distill + gamma * l1  # [B]
                with torch.no_grad():
                    kept = logits.argmax(dim=1) == target
                    better = kept & (loss < best_loss)
                    for name in names:
                        rows = better.view(-1, *([1] * (best[name].dim() - 1)))
                        best[name] = torch.where(rows, gates[name], best[name])
                    best_loss = torch.where(better, loss, best_loss)
                    best_iteration = torch.where(better, step, best_iteration)
                    losses[step], kept_history[step] = loss, kept
                if last:
                    break
                grads = torch.autograd.grad(loss.sum(), [gates[n] for n in names])
                with torch.no_grad():
                    for name, grad in zip(names, grads, strict=True):
                        velocity[name].mul_(cfg.momentum).add_(grad)
                        gates[name].sub_(cfg.lr * velocity[name]).clamp_(0.0, cfg.clamp_max)
        # Samples with no kept iterate keep their starting gates; report the starting loss.
        best_loss = torch.where(best_iteration >= 0, best_loss, losses[0])
        return _Attempt(best, best_loss, best_iteration, losses, kept_history)


def distillation_loss(logits: Tensor, teacher: Tensor) -> Tensor:
    """``−Σ_j π_j log softmax(z)_j`` ``[B]`` for logits ``z`` and teacher ``π`` ``[B, K]``.

    Written relative to the teacher's class ``ĉ`` (``d = z − z_ĉ``, ``Σ π = 1``) as
    ``logsumexp(d) − Σ_j π_j d_j``: the same value, but the gradient reaching ``z_ĉ`` is
    ``−Σ_{j≠ĉ} (softmax(z)_j − π_j)``, a sum of small terms, instead of ``softmax(z)_ĉ − π_ĉ``,
    which rounds to ``1 − 1 = 0`` once both saturate (a logit gap above ~17 in float32).
    """
    reference = teacher.argmax(dim=1, keepdim=True)
    shifted = logits - logits.gather(1, reference)
    return shifted.logsumexp(dim=1) - (teacher * shifted).sum(dim=1)


def _attempt_cost(iterations: int) -> float:
    """Forward-equivalents of one optimisation: ``T`` forwards and ``T − 1`` backwards."""
    return 3.0 * iterations - 2.0


def _scatter(into: _Attempt, part: _Attempt, rows: Tensor) -> None:
    """Write ``part`` (an attempt on samples ``rows``) into ``into``."""
    for name in into.best:
        into.best[name][rows] = part.best[name]
    into.best_loss[rows] = part.best_loss
    into.best_iteration[rows] = part.best_iteration
    into.losses[:, rows] = part.losses
    into.kept[:, rows] = part.kept


def _sample_seed(seed: int, sample: Tensor) -> int:
    """A 63-bit seed from ``seed`` and the bytes of the CPU tensor ``sample`` (in NCHW order,
    whatever its layout): equal samples get equal seeds wherever they stand in a batch."""
    values = sample.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    digest = hashlib.blake2b(values, digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "little") >> 1


def _describe(cfg: DGRConfig) -> dict[str, object]:
    return {
        "gamma": cfg.gamma, "lr": cfg.lr, "momentum": cfg.momentum, "iterations": cfg.iterations,
        "clamp_max": cfg.clamp_max, "init": cfg.init, "seed": cfg.seed,
        **({"init_draw": cfg.init_draw} if cfg.init == "uniform" else {}),
    }  # fmt: skip


@register_finder("dgr-r", DGRConfig, fixed={"init": "uniform"})
class DGRR(DGR):
    """DGR-R: DGR with gates starting from a seeded U(0, 1) draw (``init`` is always
    ``"uniform"``)."""

    name = "dgr-r"

    def __init__(self, gated: GatedModel, config: DGRConfig | None = None, **changes: Any):
        super().__init__(gated, replace(make_config(DGRConfig, config, changes), init="uniform"))
