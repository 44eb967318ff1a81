"""The GEN-CNP pathway generator (Lin et al. 2023): RFE -> PDN -> RPD -> DAQ.

Names and roles of the parts are the paper's; their shapes are ours [ours], all configurable
through :class:`GeneratorConfig`:

* **RFE_l** (Recursive Feature Embedder), one per gated layer: a stride-2 conv 3×3 + GroupNorm +
  ReLU block (``rfe_width`` channels) applied recursively until the map is at most
  ``resolution``×``resolution`` (then adaptive average pooling to exactly that size if needed),
  then a 1×1 projection to ``width`` channels (+ GroupNorm + ReLU); the ``[D, S, S]`` embedding
  is flattened and linearly mapped to one ``D``-dim layer token [ours]. The ``"mlp"`` variant
  (the ablation) global-average-pools the map and applies an MLP. FC sites (``[C]`` outputs)
  always use the MLP. Token sites of a transformer (``[T, D]`` MLP neurons, ``[T, H, d]`` heads)
  use the MLP on their units pooled over tokens, or, with ``rfe="token"``, the token RFE: a
  per-token linear embedding (``rfe_width``) + LayerNorm + ReLU, average-pooled over the token
  sequence to ``resolution²`` groups, flattened and linearly mapped to the layer token, so the
  token layout reaches the generator as the spatial layout does through the conv RFE [ours]. GroupNorm (not BatchNorm) keeps every sample independent, so a batch
  equals a loop and DDP needs no synchronised statistics [ours].
* **PDN** (Pathway Distillation Network), shared across layers: a pre-norm transformer encoder
  over the ``L`` layer tokens plus a learned layer embedding [ours]. Attention lets the token of a
  shallow layer read the deep layers' tokens (class semantics flow into shallow layers'
  importance) for any number of layers, with one set of weights; ``[E_l ; E_L]`` would only see
  the last layer. The ablation ``pdn="per-layer"`` gives every layer its own MLP on its own token
  (no sharing, no access to other layers).
* **RPD_l** (Recursive Pathway Decoder): a GRU cell run over the layers in forward order carries
  the decoded state from layer to layer [ours]; a per-layer linear head maps the state to
  ``C_l`` logits, ``s_l = sigmoid(logits)``; the head biases start around ``init_logit`` (with
  a spread ``init_spread``) so the initial pathway keeps (almost) every unit: a faithful
  starting point [ours].
* **DAQ**: ``m_l = DAQ(s_l)`` (:mod:`neuralpath.methods.gencnp.daq`), exactly binary in the forward pass.

Input: the clean post-activation maps ``{site: [B, C_l, H_l, W_l] or [B, C_l]}``. Output:
:class:`GeneratorOutput` with scores ``s_l`` ``[B, C_l]`` and masks ``m_l`` ``[B, C_l]``.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor, nn

from neuralpath.errors import InputError, ShapeError
from neuralpath.gating import GateSite
from neuralpath.methods.gencnp.daq import DAQ, DEFAULT_BETA, DEFAULT_SIGMA

RfeKind = Literal["conv", "mlp", "token"]
PdnKind = Literal["shared", "per-layer"]


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of the generator [ours unless stated].

    ``width``: token width D; ``rfe_width``: channels of the RFE's stride-2 conv blocks (kept
    small so the generator costs less than one target forward); ``resolution``: the common side
    S of the RFE maps (capped at the smallest conv site side); ``rfe``: ``"conv"`` (paper),
    ``"mlp"`` (ablation) or ``"token"`` (conv RFE on conv sites, token RFE on token sites); ``pdn``: ``"shared"`` (paper) or ``"per-layer"`` (ablation);
    ``pdn_depth``/``heads``: encoder layers and attention heads of the shared PDN;
    ``init_logit``/``init_spread``: mean and standard deviation of the units' initial score
    logits (a spread makes units cross the 0.5 threshold one after another instead of all at
    once, which can kill whole layers); ``daq_beta``/``daq_sigma``: DAQ parameters (paper
    defaults 2 and 1).
    """

    width: int = 64
    rfe_width: int = 16
    resolution: int = 4
    rfe: RfeKind = "conv"
    pdn: PdnKind = "shared"
    pdn_depth: int = 1
    heads: int = 4
    init_logit: float = 3.0
    init_spread: float = 1.0
    daq_beta: float = DEFAULT_BETA
    daq_sigma: float = DEFAULT_SIGMA

    def __post_init__(self) -> None:
        if self.rfe not in ("conv", "mlp", "token"):
            raise InputError(f"rfe must be 'conv', 'mlp' or 'token', got {self.rfe!r}")
        if self.pdn not in ("shared", "per-layer"):
            raise InputError(f"pdn must be 'shared' or 'per-layer', got {self.pdn!r}")
        for name in ("width", "rfe_width", "resolution", "pdn_depth", "heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"generator {name} must be a positive integer, got {value!r}")
        if self.width % self.heads:
            raise InputError(f"width {self.width} must be divisible by heads {self.heads}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> GeneratorConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(payload) - known
        if unknown:
            raise InputError(f"unknown generator config keys: {sorted(unknown)}")
        return cls(**dict(payload))


@dataclass(frozen=True)
class GeneratorOutput:
    """Scores ``s_l`` in [0, 1] and DAQ masks ``m_l`` (exactly 0/1), each ``{site: [B, C_l]}``."""

    scores: dict[str, Tensor]
    masks: dict[str, Tensor]

    def sparsity_penalty(self) -> Tensor:
        """``Σ_l ‖s_l‖²₂ / Σ_l C_l`` per sample: ``[B]``."""
        total = sum(s.shape[1] for s in self.scores.values())
        squares = (s.pow(2).sum(dim=1) for s in self.scores.values())
        return functools.reduce(operator.add, squares) / total

    def kept_fraction(self) -> Tensor:
        """Fraction of units kept by the binary masks per sample: ``[B]``."""
        total = sum(m.shape[1] for m in self.masks.values())
        kept = (m.detach().sum(dim=1) for m in self.masks.values())
        return functools.reduce(operator.add, kept) / total


def _groups(channels: int) -> int:
    """Largest of 8, 4, 2, 1 dividing ``channels`` (GroupNorm groups)."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class ConvRFE(nn.Module):
    """``[B, C, H, W]`` -> token ``[B, D]``: recursive stride-2 conv blocks (``hidden`` channels)
    to S×S, 1×1 projection to D, flatten, linear to the token."""

    def __init__(self, shape: tuple[int, ...], resolution: int, hidden: int, width: int):
        super().__init__()
        current, height, wide = shape
        blocks: list[nn.Module] = []
        while max(height, wide) > resolution:
            blocks += [
                nn.Conv2d(current, hidden, 3, stride=2, padding=1, bias=False),
                nn.GroupNorm(_groups(hidden), hidden),
                nn.ReLU(),
            ]
            current, height, wide = hidden, math.ceil(height / 2), math.ceil(wide / 2)
        self.down = nn.Sequential(*blocks)
        square = (height, wide) == (resolution, resolution)
        self.pool: nn.Module = nn.Identity() if square else nn.AdaptiveAvgPool2d(resolution)
        self.project = nn.Sequential(
            nn.Conv2d(current, width, 1), nn.GroupNorm(_groups(width), width), nn.ReLU()
        )
        self.token = nn.Linear(width * resolution * resolution, width)

    def forward(self, features: Tensor) -> Tensor:
        embedded = self.project(self.pool(self.down(features)))  # [B, D, S, S]
        token: Tensor = self.token(embedded.flatten(1))
        return token


class TokenRFE(nn.Module):
    """Token features ``[B, *shape]`` (tokens on the dimensions before ``unit_dim``: ``[B, T, D]``
    or heads ``[B, T, H, d]``) -> token ``[B, D']``: per-token linear embedding to ``hidden``,
    average-pooled over the tokens to ``groups`` groups, flattened, linear to ``width``."""

    def __init__(self, shape: tuple[int, ...], unit_dim: int, groups: int, hidden: int, width: int):
        super().__init__()
        if unit_dim < 1:
            raise InputError(f"the token RFE needs token dimensions before the units, got {shape}")
        self.token_dims = unit_dim
        tokens, features = math.prod(shape[:unit_dim]), math.prod(shape[unit_dim:])
        self.embed = nn.Sequential(nn.Linear(features, hidden), nn.LayerNorm(hidden), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool1d(min(groups, tokens))
        self.token = nn.Linear(hidden * min(groups, tokens), width)

    def forward(self, features: Tensor) -> Tensor:
        per_token = features.flatten(1, self.token_dims).flatten(2)  # [B, T, F]
        grouped = self.pool(self.embed(per_token).transpose(1, 2))  # [B, hidden, groups]
        token: Tensor = self.token(grouped.flatten(1))
        return token


class MlpRFE(nn.Module):
    """``[B, C, H, W]`` or ``[B, C]`` -> token ``[B, D]``: global average pool, then an MLP."""

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(channels, width), nn.LayerNorm(width), nn.ReLU(), nn.Linear(width, width)
        )

    def forward(self, features: Tensor) -> Tensor:
        pooled = features.flatten(2).mean(dim=2) if features.dim() > 2 else features
        token: Tensor = self.mlp(pooled)
        return token


class SharedPDN(nn.Module):
    """Attention over the ``L`` layer tokens + a learned layer embedding: ``[B, L, D] -> same``."""

    def __init__(self, layers: int, width: int, depth: int, heads: int):
        super().__init__()
        self.layer_embedding = nn.Parameter(torch.zeros(layers, width))
        nn.init.normal_(self.layer_embedding, std=0.02)
        block = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(block, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: Tensor) -> Tensor:
        features: Tensor = self.norm(self.encoder(tokens + self.layer_embedding))
        return features


class PerLayerPDN(nn.Module):
    """Ablation: an independent MLP per layer on its own token: ``[B, L, D] -> [B, L, D]``."""

    def __init__(self, layers: int, width: int):
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width),
                nn.Linear(width, 2 * width),
                nn.GELU(),
                nn.Linear(2 * width, width),
                nn.LayerNorm(width),
            )
            for _ in range(layers)
        )

    def forward(self, tokens: Tensor) -> Tensor:
        return torch.stack([mlp(tokens[:, i]) for i, mlp in enumerate(self.mlps)], dim=1)


class RecursivePathwayDecoder(nn.Module):
    """Decode PDN features ``[B, L, D]`` into scores ``[B, C_l]`` layer by layer (GRU state)."""

    def __init__(self, units: Sequence[int], width: int, init_logit: float, init_spread: float):
        super().__init__()
        self.cell = nn.GRUCell(width, width)
        heads = [nn.Linear(width, c) for c in units]
        self.heads = nn.ModuleList(heads)
        for head in heads:
            nn.init.normal_(head.weight, std=0.01)
            nn.init.normal_(head.bias, mean=init_logit, std=init_spread)

    def forward(self, features: Tensor) -> list[Tensor]:
        state = features.new_zeros(features.shape[0], features.shape[2])
        scores = []
        for i, head in enumerate(self.heads):
            state = self.cell(features[:, i], state)
            scores.append(torch.sigmoid(head(state)))
        return scores


class PathwayGenerator(nn.Module):
    """GEN-CNP generator for the gate sites ``sites`` (channel granularity).

    The generator is a pure function of the clean features: no dropout and per-sample
    normalisation only, so a batch equals a loop over its samples.

    ``forward(features)``: ``{site: [B, *site.shape]}`` (clean post-activation maps) ->
    :class:`GeneratorOutput` (scores and DAQ masks ``[B, C_l]`` per site).
    """

    def __init__(self, sites: Sequence[GateSite], config: GeneratorConfig | None = None):
        super().__init__()
        if not sites:
            raise InputError("the generator needs at least one gate site")
        self.config = config or GeneratorConfig()
        self.sites: tuple[GateSite, ...] = tuple(sites)
        cfg = self.config
        conv_sides = [max(s.shape[1:]) for s in self.sites if s.spatial]
        self.resolution = min([cfg.resolution, *conv_sides])
        self.rfe = nn.ModuleList(self._embedder(s) for s in self.sites)
        layers = len(self.sites)
        self.pdn: nn.Module = (
            SharedPDN(layers, cfg.width, cfg.pdn_depth, cfg.heads)
            if cfg.pdn == "shared"
            else PerLayerPDN(layers, cfg.width)
        )
        self.rpd = RecursivePathwayDecoder(
            [s.units for s in self.sites], cfg.width, cfg.init_logit, cfg.init_spread
        )
        self.daq = DAQ(cfg.daq_beta, cfg.daq_sigma)
        self.fit_history: list[dict[str, Any]] = []  # per-epoch records, set by fit_gencnp

    def _embedder(self, site: GateSite) -> nn.Module:
        """The RFE of ``site`` (see the module docstring). Token and head sites (units not
        first) without the token RFE: the MLP RFE on their units, pooled over tokens (and head
        dimensions) once the units are moved first."""
        cfg = self.config
        if cfg.rfe != "mlp" and site.spatial:
            return ConvRFE(site.shape, self.resolution, cfg.rfe_width, cfg.width)
        if cfg.rfe == "token" and site.unit_dim > 0:
            groups = self.resolution * self.resolution
            return TokenRFE(site.shape, site.unit_dim, groups, cfg.rfe_width, cfg.width)
        return MlpRFE(site.units, cfg.width)

    @property
    def site_names(self) -> list[str]:
        return [s.name for s in self.sites]

    def forward(self, features: Mapping[str, Tensor]) -> GeneratorOutput:
        missing = [s.name for s in self.sites if s.name not in features]
        if missing:
            raise ShapeError(f"features are missing for layers {missing}")
        tokens = []
        for site, rfe in zip(self.sites, self.rfe, strict=True):
            fmap = features[site.name]
            if tuple(fmap.shape[1:]) != site.shape:
                raise ShapeError(
                    f"features of layer {site.name!r} have shape {list(fmap.shape[1:])}, "
                    f"the generator expects {list(site.shape)}"
                )
            tokens.append(
                rfe(fmap if isinstance(rfe, TokenRFE) else fmap.movedim(1 + site.unit_dim, 1))
            )
        decoded = self.rpd(self.pdn(torch.stack(tokens, dim=1)))
        scores = dict(zip(self.site_names, decoded, strict=True))
        masks = {name: self.daq(s) for name, s in scores.items()}
        return GeneratorOutput(scores, masks)
