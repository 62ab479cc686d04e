"""Where each architecture keeps the weights of its heads and MLPs, with the norm gains folded in.

All matrices act on row vectors of the residual stream (`x @ W`), in float32:
- per query head h: W_Q[h] [D, d]; per KV group g: W_K[g], W_V[g] [D, d] (head h reads group
  h // (n_heads / n_kv_heads)); W_O[h] [d, D];
- per layer: the MLP's input matrix [D, I] (gate and up side by side for gated MLPs) and its
  output matrix [I, D].

Folded gains, so that a norm that was rescaled while the matrices after it were rescaled
back does not read as a change: the pre-attention norm's gain into the input side of
W_Q/W_K/W_V, a per-head q/k norm's gain into the output side of W_Q/W_K, a post-attention
norm's gain into the output side of W_O, and the same for the MLP's norms. A norm's gain is
read from the module itself (its output on an input of ones, times sqrt(1 + eps)), so that
conventions such as Gemma's `1 + weight` need no special case. What folding cannot make
exact (the RMS a q/k norm or a post-norm divides by depends on the input) is stated in
`Weights.notes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from codeinterp.access.architectures import adapter_for, head_out_weights, layout
from codeinterp.errors import ConfigError


@dataclass
class Weights:
    model_type: str
    dims: dict
    W_Q: list[torch.Tensor] = field(default_factory=list)  # per layer [H, D, d]
    W_K: list[torch.Tensor] = field(default_factory=list)  # per layer [G, D, d]
    W_V: list[torch.Tensor] = field(default_factory=list)  # per layer [G, D, d]
    W_O: list[torch.Tensor] = field(default_factory=list)  # per layer [H, d, D]
    mlp_in: list[torch.Tensor] = field(default_factory=list)  # per layer [D, I]
    mlp_out: list[torch.Tensor] = field(default_factory=list)  # per layer [I, D]
    notes: list[str] = field(default_factory=list)

    def group(self, head: int) -> int:
        return head // (self.dims["n_heads"] // self.dims["n_kv_heads"])


def norm_gain(norm: nn.Module, width: int) -> torch.Tensor:
    """The per-feature gain of a norm module, from its own forward (an RMSNorm maps a vector of
    ones to gain / sqrt(1 + eps); LayerNorm's weight is its gain)."""
    if isinstance(norm, nn.LayerNorm):
        return norm.weight.detach().float().clone()
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    param = next(norm.parameters())
    with torch.no_grad():
        out = norm(torch.ones(1, width, dtype=param.dtype, device=param.device)).float()[0]
    return out * (1.0 + eps) ** 0.5


def _linear_t(module) -> torch.Tensor:
    """[in, out] of an nn.Linear ([out, in]) or a GPT-2 Conv1D (already [in, out])."""
    w = module.weight.detach().float()
    return w if type(module).__name__ == "Conv1D" else w.t()


def _qkv(attn, ad, D: int, H: int, G: int, d: int):
    """W_Q [D, H*d], W_K and W_V [D, G*d] before folding."""
    if ad.qkv == "conv1d":
        w = _linear_t(attn.c_attn)
        return w[:, : H * d], w[:, H * d : H * d + G * d], w[:, H * d + G * d :]
    if ad.qkv == "fused":
        w = _linear_t(attn.qkv_proj)
        return w[:, : H * d], w[:, H * d : (H + G) * d], w[:, (H + G) * d :]
    return _linear_t(attn.q_proj), _linear_t(attn.k_proj), _linear_t(attn.v_proj)


def _mlp(mlp) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(mlp, "gate_up_proj"):  # Phi-3: gate and up fused
        return _linear_t(mlp.gate_up_proj), _linear_t(mlp.down_proj)
    if hasattr(mlp, "gate_proj"):
        return torch.cat([_linear_t(mlp.gate_proj), _linear_t(mlp.up_proj)], dim=1), _linear_t(mlp.down_proj)
    if hasattr(mlp, "c_fc"):  # GPT-2
        return _linear_t(mlp.c_fc), _linear_t(mlp.c_proj)
    raise ConfigError(f"MLP {type(mlp).__name__}: no gate/up/down or c_fc/c_proj matrices to compare")


def weights(model) -> Weights:
    """Every head's and MLP's matrices of `model`, norm gains folded (see the module docstring)."""
    ad, lay, cfg = adapter_for(model), layout(model), model.config
    H, d = lay.n_heads, lay.head_dim
    D = cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.n_embd
    G = getattr(cfg, "num_key_value_heads", None) or H
    if ad.qkv == "conv1d":
        G = H
    dims = {"architecture": ad.name, "n_layers": len(lay.blocks), "n_heads": H, "n_kv_heads": G, "head_dim": d,
            "hidden_size": D}
    out = Weights(ad.name, dims)
    if ad.qk_norm:
        out.notes.append("q/k norms: their gains are folded into W_Q/W_K, but they also divide by the RMS of each "
                         "query and key, so W_Q^T W_K is the bilinear form only up to that per-token scale")
    if ad.post_attn_norm or ad.post_mlp_norm:
        out.notes.append("post-norms: their gains are folded into the output side, but they also divide by the RMS "
                         "of the block's output")
    for layer, block in enumerate(lay.blocks):
        attn = getattr(block, ad.attn)
        wq, wk, wv = _qkv(attn, ad, D, H, G, d)
        if ad.pre_attn_norm:
            g = norm_gain(getattr(block, ad.pre_attn_norm), D)[:, None]
            wq, wk, wv = g * wq, g * wk, g * wv
        if ad.qk_norm == "full":  # OLMo 2: over the whole projection
            wq = wq * norm_gain(attn.q_norm, H * d)[None, :]
            wk = wk * norm_gain(attn.k_norm, G * d)[None, :]
        wq, wk, wv = (w.reshape(D, -1, d).permute(1, 0, 2).contiguous() for w in (wq, wk, wv))
        if ad.qk_norm == "head":  # Qwen 3, Gemma 3: over head_dim, shared by the heads
            wq = wq * norm_gain(attn.q_norm, d)[None, None, :]
            wk = wk * norm_gain(attn.k_norm, d)[None, None, :]
        wo = head_out_weights(model, layer).detach().float()
        if ad.post_attn_norm:
            wo = wo * norm_gain(getattr(block, ad.post_attn_norm), D)[None, None, :]
        w_in, w_out = _mlp(getattr(block, ad.mlp))
        if ad.pre_mlp_norm:
            w_in = norm_gain(getattr(block, ad.pre_mlp_norm), D)[:, None] * w_in
        if ad.post_mlp_norm:
            w_out = w_out * norm_gain(getattr(block, ad.post_mlp_norm), D)[None, :]
        out.W_Q.append(wq)
        out.W_K.append(wk)
        out.W_V.append(wv)
        out.W_O.append(wo)
        out.mlp_in.append(w_in)
        out.mlp_out.append(w_out)
    out.dims["intermediate_size"] = int(out.mlp_out[0].shape[0]) if out.mlp_out else 0
    return out
