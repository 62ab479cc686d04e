"""Where things live inside a Hugging Face decoder, named once.

Every analysis asks this module for the decoder blocks, the per-head output site (the
input of the attention output projection, split by query head: GQA-aware because the
projection's input always has `n_heads * head_dim` columns, whatever the KV head count),
the final norm and the unembedding. Supported: Llama-like (llama, qwen2, mistral, ...)
and GPT-2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError


@dataclass(frozen=True)
class Layout:
    blocks: nn.ModuleList
    final_norm: nn.Module
    unembed: nn.Module  # maps the normed residual to logits
    n_heads: int
    head_dim: int
    attn_attr: str  # attribute of a block holding the attention module
    out_proj_attr: str  # attribute of the attention module whose input is the head outputs


def layout(model) -> Layout:
    cfg = model.config
    if hasattr(model, "model") and hasattr(model.model, "layers"):
        n_heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
        return Layout(model.model.layers, model.model.norm, model.lm_head, n_heads, head_dim, "self_attn", "o_proj")
    if hasattr(model, "transformer") and hasattr(model.transformer, "h"):
        n_heads = cfg.n_head
        return Layout(model.transformer.h, model.transformer.ln_f, model.lm_head, n_heads, cfg.n_embd // n_heads, "attn", "c_proj")
    raise ConfigError(f"model type {cfg.model_type!r} is not supported (Llama-like or GPT-2 only)")


def head_out_proj(model, layer: int) -> nn.Module:
    """The module whose input holds the per-head outputs of `layer`, concatenated."""
    lay = layout(model)
    return getattr(getattr(lay.blocks[layer], lay.attn_attr), lay.out_proj_attr)


def logit_lens(model, hidden: torch.Tensor, is_last: bool = False) -> torch.Tensor:
    """Logits read off a residual-stream state: final norm, then the unembedding, in float32.

    The last block's output in `hidden_states` already has the final norm applied by
    transformers, so it goes straight to the unembedding.
    """
    lay = layout(model)
    normed = hidden if is_last else lay.final_norm(hidden)
    return lay.unembed(normed).float()
