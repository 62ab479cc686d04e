"""Where things live inside a Hugging Face decoder, named once.

Every analysis asks this module for the decoder blocks, the per-head output site (the
input of the attention output projection, split by query head: GQA-aware because the
projection's input always has `n_heads * head_dim` columns, whatever the KV head count),
the final norm and the readout to logits. How each architecture computes (norms around
attention and MLP, rotary tables, masks, softcapping) is `architectures`' business; this
module re-exports its names so that callers need only one import.
"""

from __future__ import annotations

import torch

from codeinterp.access.architectures import (
    ADAPTERS,
    Adapter,
    Layout,
    RunnerMismatch,
    UnsupportedArchitecture,
    adapter_for,
    head_out_proj,
    head_out_weights,
    layer_kinds,
    layout,
)

__all__ = [
    "ADAPTERS", "Adapter", "Layout", "RunnerMismatch", "UnsupportedArchitecture", "adapter_for",
    "head_out_proj", "head_out_weights", "layer_kinds", "layout", "logit_lens",
]


def logit_lens(model, hidden: torch.Tensor, is_last: bool = False) -> torch.Tensor:
    """Logits read off a residual-stream state through the model's own readout (final norm,
    unembedding, final-logit softcapping), in float32.

    The last block's output in `hidden_states` already has the final norm applied by
    transformers, so it skips the norm.
    """
    return layout(model).logits(hidden, normed=is_last)
