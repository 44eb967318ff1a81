"""Critical pathways (Khakzar et al., CVPR 2021): NeuronMCT and NeuronIntGrad (spec §2).

Both score every unit of every gated layer for the target logit ``y_c`` and keep the
highest-scoring units:

* ``cp-mct`` (:class:`NeuronMCT`): first-order Taylor contribution ``s = |a · ∂y_c/∂a|`` from one
  forward and one backward on the unmasked network;
* ``cp-intgrad`` (:class:`NeuronIntGrad`): for each gated layer in turn, that layer's activation is
  scaled by ``α`` (all other layers untouched), ``∂y_c/∂a`` is averaged over the steps, and
  ``s = |a · mean grad|``.

Gradients are taken with respect to *element gates* multiplying each site's output: the gradient
of ``y`` w.r.t. a gate of value ``g`` is ``a · ∂y/∂(g a)``, i.e. exactly ``a`` times the gradient
at the (scaled) activation. Under an intervention with replacement ``r`` (the gated model's
:mod:`~neuralpath.interventions`; ``a' = g a + (1 − g) r``) the gate's gradient is
``(a − r) · ∂y/∂a'``: the first-order effect of replacing the unit by ``r``, so under mean
ablation the scores, and the pathways, differ from zero ablation's. Channel granularity sums the element scores ``|a · ∂y/∂a|`` over H×W
(over the tokens of a transformer's MLP neurons and heads). A head's element unit is the head at
one token, a vector ``h`` of its ``d`` dimensions gated as one: its score is ``|h · ∂y/∂h|``, the
dot product over the head's dimensions (the first-order change of ``y`` when the head is removed
at that token).

Selection: one threshold over all layers together (:func:`~neuralpath.pathway.global_percentile`,
the paper's rule, over every unit type of a transformer at once), one such threshold per unit type
(``per_type``: heads, MLP neurons, conv channels each keep their share) or the top units of each
layer (:func:`~neuralpath.pathway.per_layer_topk`),
keeping at least ``min_per_layer`` units of every layer (**[ours]**, default 1). Every default
is stated once, in :class:`CriticalConfig` / :class:`IntGradConfig`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from neuralpath.errors import InputError
from neuralpath.gating import GatedModel, GateSite
from neuralpath.methods.base import (
    FinderConfig,
    PathwayFinder,
    make_config,
    register_finder,
    require,
)
from neuralpath.methods.connect import TEST_COST, connect_pathway, rows_of
from neuralpath.pathway import (
    Granularity,
    Pathway,
    check_sparsity,
    global_percentile,
    per_layer_topk,
)
from neuralpath.targets import TargetType, resolve_target, select_logit

Selection = Literal["global", "per_layer", "per_type"]
AlphaSchedule = Literal["uniform", "cumulative"]
ALPHA_SCHEDULES: tuple[AlphaSchedule, ...] = ("uniform", "cumulative")


def reduce_to_granularity(
    element_scores: Tensor, granularity: Granularity, site: GateSite
) -> Tensor:
    """Non-negative element scores ``[B, *site.element_shape]`` -> themselves or their sums
    per unit ``[B, units]`` (:meth:`~neuralpath.gating.GateSite.to_channels`)."""
    return element_scores if granularity == "element" else site.to_channels(element_scores)


def select_units(
    scores: Mapping[str, Tensor],
    sparsity: float,
    granularity: Granularity,
    selection: Selection,
    *,
    chunk_size: int | None = None,
    min_per_layer: int = 0,
    unit_types: Mapping[str, str] | None = None,
    type_sparsity: Mapping[str, float] | None = None,
) -> Pathway:
    """Binarise ``scores`` with the global percentile, per-type percentile or per-layer top-k
    rule, keeping at least ``min_per_layer`` units of every layer. ``per_type`` only:
    ``unit_types``, the type of each layer's units (e.g. :attr:`~neuralpath.gating.GateSite.kind`),
    and ``type_sparsity``, the sparsity of some types (others: ``sparsity``)."""
    if selection == "global":
        return global_percentile(
            scores, sparsity, granularity, chunk_size=chunk_size, min_per_layer=min_per_layer
        )
    if selection == "per_type":
        if unit_types is None or set(unit_types) != set(scores):
            raise InputError("per_type selection needs the unit type of every scored layer")
        budgets = {kind: sparsity for kind in unit_types.values()}
        budgets.update(type_sparsity or {})
        masks: dict[str, Tensor] = {}
        for kind in dict.fromkeys(unit_types.values()):
            part = {name: s for name, s in scores.items() if unit_types[name] == kind}
            masks.update(
                global_percentile(
                    part, budgets[kind], granularity, chunk_size=chunk_size,
                    min_per_layer=min_per_layer,
                )
            )  # fmt: skip
        metadata = {
            "rule": "per_type", "sparsity": sparsity, "type_sparsity": budgets,
            "min_per_layer": min_per_layer,
        }  # fmt: skip
        return Pathway({name: masks[name] for name in scores}, granularity, metadata)
    return per_layer_topk(scores, sparsity, granularity, min_per_layer=min_per_layer)


@dataclass(frozen=True)
class CriticalConfig(FinderConfig):
    """Settings of ``cp-mct`` (:class:`NeuronMCT`); :class:`IntGradConfig` adds ``cp-intgrad``'s.

    ``sparsity=0.9`` and ``granularity="element"``: Khakzar et al.'s setting (the top 10 % of
    single activations). Element units are the default because one global threshold over
    *channels* at 0.9 empties whole layers of small networks (77 of 200 MNIST images, issue 15);
    over elements it rarely does. ``selection``: ``"global"``, one threshold over all layers (the
    paper's rule; over heads and MLP neurons together in a transformer), ``"per_type"``, one
    threshold per unit type (:attr:`~neuralpath.gating.GateSite.kind`: heads and MLP neurons
    each keep ``1 - sparsity`` of their units; ``head_sparsity``, when set, is the heads' own)
    **[ours]**, or ``"per_layer"`` top-k. ``min_per_layer`` **[ours]**, default 1: a layer
    that would keep fewer units also keeps its highest-scoring ones
    (:func:`~neuralpath.pathway.keep_per_layer`), so no pathway empties a layer; 0 is the paper's
    rule exactly. A layer left with one or two channels may still pass nothing (a dead end):
    ``find`` reports such pathways as ``disconnected`` (:mod:`neuralpath.metrics.connectivity`).
    ``chunk_size``: samples per percentile computation (bounds its memory; None: the whole
    batch). ``token_budget`` **[ours]**, element granularity only: at most this many tokens per
    MLP neuron or head of a transformer's token sites (its highest-scoring kept tokens; None:
    no cap); a budget larger than a site's sequence is an :class:`InputError`. ``connect``
    **[ours]**, default True: a sample whose pathway passes nothing of its input (zero gradient of
    the explained logit at the sample) is widened, thin layers first, with its own scores (:mod:`neuralpath.methods.connect`; may exceed
    ``token_budget``), so the default never returns a disconnected pathway where the whole network
    connects; False returns the selection as is (the paper's rule with ``min_per_layer=0``).
    """

    sparsity: float = 0.9
    granularity: Granularity = "element"
    selection: Selection = "global"
    min_per_layer: int = 1
    chunk_size: int | None = None
    head_sparsity: float | None = None
    token_budget: int | None = None
    connect: bool = True

    def check(self) -> None:
        check_sparsity(self.sparsity)
        if self.token_budget is not None:
            require(self.token_budget >= 1, f"token_budget must be >= 1, got {self.token_budget}")
            require(
                self.granularity == "element",
                "token_budget needs granularity='element' (a channel unit spans every token)",
            )
        require(self.min_per_layer >= 0, f"min_per_layer must be >= 0, got {self.min_per_layer}")
        if self.head_sparsity is not None:
            check_sparsity(self.head_sparsity)
            require(
                self.selection == "per_type",
                f"head_sparsity needs selection='per_type', got selection={self.selection!r}",
            )
        require(
            self.chunk_size is None or self.chunk_size >= 1,
            f"chunk_size must be None or an integer >= 1, got {self.chunk_size!r}",
        )


@dataclass(frozen=True)
class IntGradConfig(CriticalConfig):
    """Settings of ``cp-intgrad`` (:class:`NeuronIntGrad`): :class:`CriticalConfig`'s, plus

    ``steps`` m = 10 and ``alpha_schedule="uniform"`` (the grid 0, 1/m, ..., 1 of the method as
    described; ``"cumulative"`` is what the released code computes, see :func:`alpha_steps`);
    ``internal_batch_size``: rows per forward + backward of the stacked α copies (None: all).
    """

    steps: int = 10
    alpha_schedule: AlphaSchedule = "uniform"
    internal_batch_size: int | None = None

    def check(self) -> None:
        super().check()
        require(self.steps >= 1, f"steps must be a positive integer, got {self.steps!r}")
        require(
            self.internal_batch_size is None or self.internal_batch_size >= 1,
            f"internal_batch_size must be None or an integer >= 1, got {self.internal_batch_size!r}",
        )


@torch.enable_grad()
def _gate_gradients(
    gated: GatedModel, inputs: Tensor, gates: dict[str, Tensor], target: TargetType
) -> tuple[dict[str, Tensor], Tensor]:
    """One gated forward + backward: ``(d y_c / d gate per site, resolved target [B'])``.

    ``gates`` are float leaves requiring grad; ``target`` is resolved on this forward's logits
    (so it must be a tensor already when the gates change the prediction). Gradients are
    enabled inside, so this also works under ``torch.no_grad()`` (as Captum's NoiseTunnel calls).
    """
    with gated.gate(gates):
        logits = gated.model(inputs)
    cls = resolve_target(logits.detach(), target)
    if not logits.requires_grad:
        raise InputError(
            "no gradient path from the gated layers to the output: the model's forward is not "
            "differentiable (argmax, round, detach or no_grad inside it?)"
        )
    names = list(gates)
    grads = torch.autograd.grad(
        select_logit(logits, cls).sum(), [gates[n] for n in names], allow_unused=True
    )
    missing = [n for n, g in zip(names, grads, strict=True) if g is None]
    if missing:
        raise InputError(
            f"no gradient reaches gate site(s) {missing} from the output: the forward after them "
            "is not differentiable (argmax, round, detach?) or does not use them"
        )
    return dict(zip(names, grads, strict=True)), cls


def token_sites(gated: GatedModel) -> list[GateSite]:
    """The sites of ``gated`` whose units repeat over tokens: MLP neurons ``(T, D)`` and heads
    ``(T, H, d)`` of a transformer (element shape ``[T, units]``)."""
    return [
        s for s in gated.sites if s.kind in ("token", "head") and s.element_shape[1:] == (s.units,)
    ]


def check_token_budget(gated: GatedModel, budget: int) -> None:
    """A clear :class:`InputError` unless ``gated`` has token sites and ``budget`` tokens fit in
    the sequence of every one of them."""
    sites = token_sites(gated)
    if not sites:
        raise InputError(
            f"token_budget={budget} needs a transformer's token sites (MLP neurons or heads, "
            f"--units heads,mlp); this model's gate sites are {gated.site_names}"
        )
    for site in sites:
        if budget > site.shape[0]:
            raise InputError(
                f"token_budget={budget} is larger than the sequence of {site.shape[0]} tokens of "
                f"gate site {site.name!r}"
            )


def cap_tokens(
    pathway: Pathway, scores: Mapping[str, Tensor], sites: list[GateSite], budget: int
) -> Pathway:
    """``pathway`` (element granularity) keeping, per sample and per unit of each token site in
    ``sites``, at most ``budget`` of its kept tokens: those of highest ``scores``
    ``[B, T, units]``."""
    masks = dict(pathway.items())
    for site in sites:
        kept = masks[site.name].bool()
        ranked = scores[site.name].masked_fill(~kept, float("-inf"))
        top = ranked.topk(budget, dim=1).indices
        capped = torch.zeros_like(kept).scatter_(1, top, True) & kept
        masks[site.name] = capped.to(masks[site.name].dtype)
    metadata = {**pathway.metadata, "token_budget": budget}
    return Pathway(masks, pathway.granularity, metadata)


def taylor_scores(
    gated: GatedModel,
    inputs: Tensor,
    target: TargetType = None,
    masks: Mapping[str, Tensor] | None = None,
    granularity: Granularity = "element",
) -> tuple[dict[str, Tensor], Tensor]:
    """First-order Taylor scores ``|a · ∂y_c/∂a|`` of every unit in the pathway model ``H_masks``.

    ``inputs`` ``[B, *input_shape]``; ``masks`` (optional, any granularity) are applied during the
    forward (``a`` is a site's output before its mask, the gradient is taken at the masked
    output). Returns ``({site: [B, *site.element_shape] or [B, C]}, target [B])``; one forward
    + backward.
    """
    gated.check_inputs(inputs)
    batch = inputs.shape[0]
    one = torch.ones((), dtype=inputs.dtype, device=inputs.device)
    gates = {}
    for site in gated.sites:
        gate = one.expand(batch, *site.element_shape)  # a broadcast view: no memory per unit
        if masks is not None and site.name in masks:
            mask = masks[site.name].to(device=inputs.device, dtype=inputs.dtype)
            gate = gate * (mask if mask.shape[1:] == site.element_shape else site.unit_view(mask))
        gates[site.name] = gate.requires_grad_(True)
    grads, cls = _gate_gradients(gated, inputs, gates, target)
    scores = {
        site.name: reduce_to_granularity(grads[site.name].abs(), granularity, site)
        for site in gated.sites
    }
    return scores, cls


class CriticalPathwayFinder(PathwayFinder):
    """Scores units, then keeps the top ``1 - sparsity`` of them (see :class:`CriticalConfig`).

    ``config`` (default: the class's config with its defaults) and keyword ``changes`` to it,
    e.g. ``NeuronMCT(gated, sparsity=0.8)``.
    """

    name: ClassVar[str] = "critical"
    config_class: ClassVar[type[CriticalConfig]] = CriticalConfig

    def __init__(self, gated: GatedModel, config: CriticalConfig | None = None, **changes: Any):
        super().__init__(gated)
        self.config = make_config(self.config_class, config, changes)
        self.sparsity = self.config.sparsity
        self.granularity: Granularity = self.config.granularity
        if self.config.token_budget is not None:
            check_token_budget(gated, self.config.token_budget)

    def scores(self, inputs: Tensor, target: TargetType = None) -> dict[str, Tensor]:
        """Unit scores ``{site: [B, *site.element_shape]}`` (element) or ``{site: [B, C]}``
        (channel), >= 0."""
        return self.scores_and_target(inputs, target)[0]

    @abstractmethod
    def scores_and_target(
        self, inputs: Tensor, target: TargetType = None
    ) -> tuple[dict[str, Tensor], Tensor]:
        """:meth:`scores` together with the resolved target class ``[B]``."""

    def find_with_target(
        self, inputs: Tensor, target: TargetType = None, *, connect: bool | None = None
    ) -> tuple[Pathway, Tensor]:
        """:meth:`find` together with the resolved target class ``[B]`` (saves a forward).
        ``connect``: whether to run the connecting repair (None: ``config.connect``)."""
        cfg = self.config
        scores, cls = self.scores_and_target(inputs, target)
        pathway = select_units(
            scores, cfg.sparsity, cfg.granularity, cfg.selection,
            chunk_size=cfg.chunk_size, min_per_layer=cfg.min_per_layer,
            unit_types={site.name: site.kind for site in self.gated.sites},
            type_sparsity=None if cfg.head_sparsity is None else {"head": cfg.head_sparsity},
        )  # fmt: skip
        if cfg.token_budget is not None:
            sites = token_sites(self.gated)
            pathway = cap_tokens(pathway, scores, sites, cfg.token_budget)
        pathway.metadata.update({"method": self.name, "selection": cfg.selection})
        if cfg.connect if connect is None else connect:
            found = connect_pathway(self.gated, inputs, pathway, cls, rank=rows_of(scores))
            pathway = found.pathway
        return pathway, cls

    def connect(
        self, inputs: Tensor, pathway: Pathway, classes: Tensor, connected: Tensor | None = None
    ) -> Pathway:
        """``pathway`` with its disconnected samples widened by their own scores (recomputed for
        those samples only; :func:`~neuralpath.methods.connect.connect_pathway`). ``connected``
        ``[B]``: the connectivity test's result, when the caller has it."""

        def rank(rows: Tensor) -> Mapping[str, Tensor]:
            index = rows.to(inputs.device)
            return self.scores_and_target(inputs[index], classes.to(inputs.device)[index])[0]

        return connect_pathway(
            self.gated, inputs, pathway, classes, rank=rank, connected=connected
        ).pathway

    def find(self, inputs: Tensor, target: TargetType = None) -> Pathway:
        return self.find_with_target(inputs, target)[0]


@register_finder("cp-mct", CriticalConfig)
class NeuronMCT(CriticalPathwayFinder):
    """``cp-mct``: ``s = |a · ∂y_c/∂a|`` per unit, one forward + one backward per batch."""

    name: ClassVar[str] = "cp-mct"

    def scores_and_target(
        self, inputs: Tensor, target: TargetType = None
    ) -> tuple[dict[str, Tensor], Tensor]:
        return taylor_scores(self.gated, inputs, target, granularity=self.granularity)

    def forward_equivalents(self) -> float:
        """One forward + backward of the scores, and one of the connectivity test when
        ``connect`` (repairs of disconnected samples not counted)."""
        return 3.0 + (TEST_COST if self.config.connect else 0.0)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def alpha_steps(steps: int, schedule: AlphaSchedule = "uniform") -> list[float]:
    """The ``steps + 1`` scaling factors: ``k / m`` (uniform) or ``Σ_{j<=k} j / m`` (cumulative).

    The cumulative schedule (0, 0.1, 0.3, ..., 5.5 for m = 10) is what the released PathwayGrad
    code computes; the uniform grid 0, 1/m, ..., 1 is the method as described.
    """
    if not _positive_int(steps):
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if schedule == "uniform":
        return [k / steps for k in range(steps + 1)]
    if schedule == "cumulative":
        return [k * (k + 1) / (2 * steps) for k in range(steps + 1)]
    raise InputError(f"alpha schedule must be one of {ALPHA_SCHEDULES}, got {schedule!r}")


@register_finder("cp-intgrad", IntGradConfig)
class NeuronIntGrad(CriticalPathwayFinder):
    """``cp-intgrad``: per layer, ``s = |a · mean_α ∂y_c/∂a (α a)|`` over ``α`` in :func:`alpha_steps`.

    The ``m + 1`` scaled copies of a batch are stacked into one batch of ``(m + 1) B`` rows (split
    into passes of at most ``internal_batch_size`` rows when given, but at least one α step of
    ``B`` rows per pass): one forward + backward of
    that stacked batch per gated layer, plus one plain forward to resolve the target. Channel
    granularity sums the element scores ``|a · mean grad|`` over H×W, as for NeuronMCT.
    """

    name: ClassVar[str] = "cp-intgrad"
    config_class: ClassVar[type[CriticalConfig]] = IntGradConfig
    config: IntGradConfig

    def __init__(self, gated: GatedModel, config: IntGradConfig | None = None, **changes: Any):
        super().__init__(gated, config, **changes)
        self.alphas = alpha_steps(self.config.steps, self.config.alpha_schedule)

    def _step_chunks(self, batch: int) -> list[list[float]]:
        per_pass = len(self.alphas)
        if self.config.internal_batch_size is not None:
            per_pass = max(1, min(per_pass, self.config.internal_batch_size // batch))
        return [self.alphas[i : i + per_pass] for i in range(0, len(self.alphas), per_pass)]

    def scores_and_target(
        self, inputs: Tensor, target: TargetType = None
    ) -> tuple[dict[str, Tensor], Tensor]:
        gated = self.gated
        gated.check_inputs(inputs)
        batch = inputs.shape[0]
        with torch.no_grad():
            cls = resolve_target(gated.forward(inputs), target)
        chunks = self._step_chunks(batch)
        scores = {}
        for site in gated.sites:
            shape = site.element_shape
            total = torch.zeros((batch, *shape), dtype=inputs.dtype, device=inputs.device)
            for alphas in chunks:
                steps = len(alphas)
                stacked = inputs.repeat(steps, *[1] * (inputs.dim() - 1))
                alpha = torch.tensor(alphas, dtype=inputs.dtype, device=inputs.device)
                gate = alpha.repeat_interleave(batch).reshape(-1, *[1] * len(shape))
                gate = gate.expand(steps * batch, *shape).clone().requires_grad_(True)
                grads, _ = _gate_gradients(gated, stacked, {site.name: gate}, cls.repeat(steps))
                total += grads[site.name].reshape(steps, batch, *shape).sum(dim=0)
            element = (total / len(self.alphas)).abs()
            scores[site.name] = reduce_to_granularity(element, self.granularity, site)
        return scores, cls

    def forward_equivalents(self) -> float:
        """See the class docstring; plus one forward + backward of the connectivity test when
        ``connect``."""
        test = TEST_COST if self.config.connect else 0.0
        return 1.0 + 3.0 * len(self.gated.sites) * len(self.alphas) + test
