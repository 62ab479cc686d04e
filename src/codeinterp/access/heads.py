"""Per-head interventions at the input of the attention output projection.

A head's output is its `head_dim` slice of the output projection's input. An intervention
replaces it by `keep * output + (1 - keep) * fill`: keep=1 leaves the head alone, keep=0
with fill=0 is zero ablation, keep=0 with fill=mean output is mean ablation, and a
continuous keep in [0, 1] is the relaxed mask that Taylor scores and CMA-ES differentiate
or search over.

`keep` is [n_layers, n_heads] (the same for every sequence) or [batch, n_layers, n_heads]
(one mask per sequence: many ablations on the batch axis in a single forward).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from codeinterp.access.sites import head_out_proj, layout


def _hook(layer: int, keep: torch.Tensor, fill: torch.Tensor | None, n_heads: int, head_dim: int):
    def pre_hook(module, args):
        x = args[0]
        shape = x.shape
        heads = x.view(*shape[:-1], n_heads, head_dim)
        # The mask stays float32 and the product is formed in float32, so that its gradient (Taylor
        # scores) accumulates in float32 whatever the model computes in.
        k = keep[..., layer, :].to(device=x.device, dtype=torch.float32)
        # [H] -> [1, 1, H, 1] (all sequences); [B, H] -> [B, 1, H, 1] (one mask per sequence).
        k = k.view(1, 1, -1, 1) if k.dim() == 1 else k.view(k.shape[0], 1, -1, 1)
        if k.shape[0] not in (1, heads.shape[0]):
            raise ValueError(f"head mask batch {k.shape[0]} does not match input batch {heads.shape[0]}")
        out = heads.float() * k
        if fill is not None:
            out = out + (1 - k) * fill[layer].to(device=x.device, dtype=torch.float32)
        return (out.to(x.dtype).view(shape),) + tuple(args[1:])

    return pre_hook


@contextmanager
def head_intervention(model, keep: torch.Tensor, fill: torch.Tensor | None = None, layers=None):
    """Apply `keep`/`fill` to every layer in `layers` (all by default) while inside."""
    lay = layout(model)
    n_layers = len(lay.blocks)
    if keep.shape[-2:] != (n_layers, lay.n_heads):
        raise ValueError(f"head mask shape {tuple(keep.shape)} does not end in ({n_layers}, {lay.n_heads})")
    if fill is not None and fill.shape != (n_layers, lay.n_heads, lay.head_dim):
        raise ValueError(f"fill shape {tuple(fill.shape)} is not ({n_layers}, {lay.n_heads}, {lay.head_dim})")
    handles = []
    try:
        for layer in layers if layers is not None else range(n_layers):
            hook = _hook(layer, keep, fill, lay.n_heads, lay.head_dim)
            handles.append(head_out_proj(model, layer).register_forward_pre_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def full_mask(model) -> torch.Tensor:
    lay = layout(model)
    return torch.ones(len(lay.blocks), lay.n_heads)


def mask_from_heads(model, removed: list[tuple[int, int]]) -> torch.Tensor:
    keep = full_mask(model)
    for layer, head in removed:
        keep[layer, head] = 0.0
    return keep


@torch.no_grad()
def zero_heads_in_weights(model, removed: list[tuple[int, int]]) -> None:
    """Zero the output-projection columns of the removed heads, in place (pruned checkpoint).

    Equivalent to zero ablation with the hook, except for the projection's bias, which does
    not depend on any head and therefore stays.
    """
    lay = layout(model)
    for layer, head in removed:
        proj = head_out_proj(model, layer)
        cols = slice(head * lay.head_dim, (head + 1) * lay.head_dim)
        if lay.adapter.qkv == "conv1d":  # GPT-2's Conv1D stores the weight as [in, out]
            proj.weight[cols, :] = 0
        else:
            proj.weight[:, cols] = 0
