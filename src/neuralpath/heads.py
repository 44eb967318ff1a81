"""Attention heads as gate units: which modules have heads, and how their outputs are read.

A head's output is its slice of an attention module's output *before the output projection*:
per sample ``[T, H, d]`` (tokens, heads, head dimensions). Two kinds of modules are recognised:

* ``nn.MultiheadAttention`` (torchvision's ``VisionTransformer``). Its forward applies the
  output projection with ``F.linear`` (no module call a hook could catch) and, in eval mode
  without gradients, runs a fused kernel. neuralpath leaves that forward as it is: a forward
  hook recomputes the heads from the same inputs (:func:`mha_heads`, one more input projection
  and attention) and adds ``W_o (h' − h)`` to the module's output (:func:`mha_output_change`),
  ``h'`` being the gated heads. Where every head is kept, ``h' − h`` is exactly 0, so the output
  is bit-identical to the model's own, whichever kernel computed it; ``∂out/∂h' = W_o`` as in
  the module itself, so gradients reach the (gated) head outputs.
* *Projection-input* attention (timm's ``Attention`` in ViT / DeiT, and alike): a module with an
  integer ``num_heads`` and an ``nn.Linear`` child ``proj`` called on the concatenated heads
  ``[B, ..., H·d]``. The heads are that call's input: a forward pre-hook on ``proj`` replaces it
  by the gated heads (nothing is recomputed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neuralpath.errors import LayerError

HeadStyle = Literal["mha", "projection"]

_MHA_ARGUMENTS = (
    "query",
    "key",
    "value",
    "key_padding_mask",
    "need_weights",
    "attn_mask",
    "average_attn_weights",
    "is_causal",
)


def head_style(module: nn.Module) -> HeadStyle | None:
    """How the heads of ``module`` are read, or None when it is not a recognised attention."""
    if isinstance(module, nn.MultiheadAttention):
        return "mha"
    heads = getattr(module, "num_heads", None)
    proj = getattr(module, "proj", None)
    if isinstance(heads, int) and not isinstance(heads, bool) and isinstance(proj, nn.Linear):
        return "projection"
    return None


def attention_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The recognised attention modules of ``model`` (see the module docstring), by name."""
    return {name: m for name, m in model.named_modules() if head_style(m) is not None}


def projection(module: nn.Module) -> nn.Linear:
    """The output projection ``proj`` of a projection-input attention."""
    proj = getattr(module, "proj", None)
    if not isinstance(proj, nn.Linear):
        raise LayerError(f"{type(module).__name__} has no nn.Linear output projection 'proj'")
    return proj


def num_heads(module: nn.Module) -> int:
    """The number of heads of a recognised attention module."""
    heads = module.num_heads
    if not isinstance(heads, int):
        raise LayerError(f"{type(module).__name__}.num_heads is not an integer")
    return heads


def split_heads(concatenated: Tensor, heads: int, name: str) -> Tensor:
    """``[B, ..., H·d]`` -> ``[B, ..., H, d]``; :class:`LayerError` unless ``H`` divides it."""
    width = concatenated.shape[-1]
    if width % heads:
        raise LayerError(
            f"attention {name!r}: the input of its output projection has {width} features, "
            f"not a multiple of its {heads} heads"
        )
    split: Tensor = concatenated.unflatten(-1, (heads, width // heads))
    return split


def _mha_call(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    call = dict(zip(_MHA_ARGUMENTS, args, strict=False))
    call.update(kwargs)
    return call


def _mha_qkv(
    mha: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Queries, keys and values ``[B, H, T, d]`` of one call of ``mha`` (see :func:`mha_heads`
    for what is supported)."""
    call = _mha_call(args, kwargs)
    unsupported = [
        key for key in ("key_padding_mask", "attn_mask") if call.get(key) is not None
    ] + (["is_causal"] if call.get("is_causal") else [])
    if mha.bias_k is not None or mha.bias_v is not None:
        unsupported.append("bias_k/bias_v")
    if mha.add_zero_attn:
        unsupported.append("add_zero_attn")
    if unsupported:
        raise LayerError(
            f"heads of attention {name!r} cannot be read: nn.MultiheadAttention called with "
            f"{', '.join(unsupported)} is not supported"
        )
    query, key, value = call["query"], call["key"], call["value"]
    if not all(isinstance(t, Tensor) and t.dim() == 3 for t in (query, key, value)):
        raise LayerError(f"heads of attention {name!r} need batched [B, T, D] inputs")
    if not mha.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    if mha._qkv_same_embed_dim:
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    b_q = b_k = b_v = None
    if mha.in_proj_bias is not None:
        b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
    shape = (mha.num_heads, mha.head_dim)
    q = F.linear(query, w_q, b_q).unflatten(-1, shape).transpose(1, 2)  # [B, H, T, d]
    k = F.linear(key, w_k, b_k).unflatten(-1, shape).transpose(1, 2)
    v = F.linear(value, w_v, b_v).unflatten(-1, shape).transpose(1, 2)
    return q, k, v


def mha_heads(
    mha: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str
) -> Tensor:
    """The head outputs ``[B, T, H, d]`` of one call of ``mha`` (in eval mode: no dropout).

    Supports batched self- and cross-attention without ``attn_mask``, ``key_padding_mask``,
    causal masking, ``bias_k``/``bias_v`` or ``add_zero_attn`` (vision transformers use none of
    these); anything else is a :class:`LayerError` naming the module.
    """
    q, k, v = _mha_qkv(mha, args, kwargs, name)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # [B, T, H, d]


def _projection_qk(
    module: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str
) -> tuple[Tensor, Tensor, float]:
    """Queries and keys ``[B, H, T, d]`` and the logit scale of one call of a projection-input
    attention with a fused ``qkv`` linear (timm's ``Attention``), its ``q_norm``/``k_norm``
    applied."""
    qkv = getattr(module, "qkv", None)
    if not isinstance(qkv, nn.Linear):
        raise LayerError(
            f"the attention weights of {name!r} ({type(module).__name__}) cannot be read: it "
            "has no fused nn.Linear 'qkv'"
        )
    x = args[0] if args else kwargs.get("x")
    if kwargs.get("attn_mask") is not None or kwargs.get("is_causal") or len(args) > 1:
        raise LayerError(f"attention {name!r} was called with a mask: not supported")
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise LayerError(f"attention {name!r} needs batched [B, T, D] inputs")
    q, k, _ = qkv(x).unflatten(-1, (3, num_heads(module), -1)).permute(2, 0, 3, 1, 4).unbind(0)
    for key in ("q_norm", "k_norm"):
        norm = getattr(module, key, None)
        if isinstance(norm, nn.Module):
            if key == "q_norm":
                q = norm(q)
            else:
                k = norm(k)
    scale = getattr(module, "scale", None)
    return q, k, float(scale) if isinstance(scale, int | float) else q.shape[-1] ** -0.5


def attention_weights(
    module: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str
) -> Tensor:
    """The attention probabilities ``[B, H, T, S]`` (rows sum to 1) of one call of a recognised
    attention module, recomputed from its inputs (eval mode: no dropout)."""
    if isinstance(module, nn.MultiheadAttention):
        q, k, _ = _mha_qkv(module, args, kwargs, name)
        scale = q.shape[-1] ** -0.5
    else:
        q, k, scale = _projection_qk(module, args, kwargs, name)
    return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)


def mha_output_change(mha: nn.MultiheadAttention, change: Tensor) -> Tensor:
    """``W_o · change`` for a change of the heads ``[B, T, H, d]``, in ``mha``'s output layout
    (``[B, T, D]``, or ``[T, B, D]`` unless ``batch_first``); no bias."""
    out = F.linear(change.flatten(-2), mha.out_proj.weight)
    return out if mha.batch_first else out.transpose(0, 1)


def transformer_blocks(model: nn.Module) -> list[str]:
    """The names of the blocks of a transformer ``model``: the parents of its recognised
    attention modules (:func:`attention_modules`), in module order (``""`` for an attention at
    the top level)."""
    return [name.rpartition(".")[0] for name in attention_modules(model)]


def block_index(module_name: str, blocks: list[str]) -> int | None:
    """The index in ``blocks`` (:func:`transformer_blocks`) of the block holding module
    ``module_name``, or None when it lies in no block (the innermost block wins)."""
    found = None
    for index, block in enumerate(blocks):
        inside = block == "" or module_name == block or module_name.startswith(block + ".")
        if inside and (found is None or len(block) >= len(blocks[found])):
            found = index
    return found
