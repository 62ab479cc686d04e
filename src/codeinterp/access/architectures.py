"""The one module that knows how a Hugging Face decoder computes, architecture by architecture.

An `Adapter` per supported `model_type` says where the blocks and norms are and how a block
is put together: embedding (Gemma's sqrt(hidden) scale lives inside its embedding module;
GPT-2 adds learned positions), the attention half `resid + post_attn_norm(attn(pre_attn_norm(
resid)))`, the MLP half `mid + post_mlp_norm(mlp(pre_mlp_norm(mid)))` (a norm that an
architecture lacks is the identity), rotary embeddings per layer type (Gemma 3: local and
global), the attention mask per layer type (full or sliding window, built by transformers'
own mask functions with the model's config), and the readout (final norm, unembedding,
final-logit softcapping).

`BlockRunner` runs blocks on residual streams by calling the model's own submodules
(attention module, MLP, norms), so the only arithmetic it owns is the residual additions.
The single exception is `last_block_at`, which re-derives the last block's attention with
queries at the scored positions only; it reads the projections, q/k norms, rotary tables,
scaling, logit softcap and the 4D mask from the model, and its result is compared with
the model's own forward on the first batch of every run (`BlockRunner.verify`).

Anything else (other model types, multimodal Gemma 3, bidirectional Gemma 3, GPT-2 with
cross-attention) is refused with one line rather than computed approximately.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from codeinterp.errors import ConfigError


class UnsupportedArchitecture(ConfigError):
    """The model's architecture has no adapter: no number is computed for it."""


class RunnerMismatch(ConfigError):
    """A fast path disagrees with the model's own forward: its numbers would be wrong."""


@dataclass(frozen=True)
class Adapter:
    name: str
    stack: str = "model"  # attribute of the CausalLM holding the blocks and final norm
    blocks: str = "layers"
    final_norm: str = "norm"
    attn: str = "self_attn"
    out_proj: str = "o_proj"  # its input is the per-head outputs, concatenated
    mlp: str = "mlp"
    pre_attn_norm: str | None = "input_layernorm"
    post_attn_norm: str | None = None
    pre_mlp_norm: str | None = "post_attention_layernorm"
    post_mlp_norm: str | None = None
    qkv: str = "split"  # split: q/k/v_proj; fused: Phi-3's qkv_proj; conv1d: GPT-2's c_attn
    qk_norm: str | None = None  # "head": over head_dim (Qwen3, Gemma 3); "full": over the projection (OLMo 2)
    rope: str | None = "shared"  # None: learned positions (GPT-2); "per_kind": one table per layer type
    kinds: str = "full"  # "full"; "window": every layer sliding iff config.sliding_window; "layer_types"
    softcap: bool = False  # attention and final-logit softcapping read from the config


_GEMMA2_NORMS = dict(post_attn_norm="post_attention_layernorm", pre_mlp_norm="pre_feedforward_layernorm",
                     post_mlp_norm="post_feedforward_layernorm")

ADAPTERS: dict[str, Adapter] = {
    a.name: a
    for a in (
        Adapter("llama"),
        Adapter("mistral", kinds="window"),
        Adapter("qwen2", kinds="layer_types"),
        Adapter("qwen3", kinds="layer_types", qk_norm="head"),
        Adapter("gemma"),
        Adapter("gemma2", kinds="layer_types", softcap=True, **_GEMMA2_NORMS),
        Adapter("gemma3_text", kinds="layer_types", softcap=True, qk_norm="head", rope="per_kind", **_GEMMA2_NORMS),
        Adapter("phi3", kinds="window", qkv="fused"),
        Adapter("olmo2", pre_attn_norm=None, post_attn_norm="post_attention_layernorm", pre_mlp_norm=None,
                post_mlp_norm="post_feedforward_layernorm", qk_norm="full"),
        Adapter("gpt2", stack="transformer", blocks="h", final_norm="ln_f", attn="attn", out_proj="c_proj",
                pre_attn_norm="ln_1", pre_mlp_norm="ln_2", qkv="conv1d", rope=None),
    )
}

_HINTS = {"gemma3": "load the text-only Gemma3ForCausalLM (model_type gemma3_text)"}


def _refuse(model, why: str):
    raise UnsupportedArchitecture(f"model type {model.config.model_type!r} ({type(model).__name__}): {why}")


def adapter_for(model) -> Adapter:
    cfg = model.config
    ad = ADAPTERS.get(cfg.model_type)
    if ad is None:
        hint = _HINTS.get(cfg.model_type, f"supported: {', '.join(sorted(ADAPTERS))}")
        _refuse(model, f"no adapter for its block structure ({hint})")
    stack = getattr(model, ad.stack, None)
    if stack is None or not hasattr(stack, ad.blocks) or not hasattr(model, "lm_head"):
        _refuse(model, f"expected a causal LM with .{ad.stack}.{ad.blocks} and .lm_head")
    if getattr(cfg, "use_bidirectional_attention", False):
        _refuse(model, "bidirectional attention is not a causal decoder")
    if getattr(cfg, "add_cross_attention", False):
        _refuse(model, "cross-attention is not supported")
    return ad


@dataclass(frozen=True)
class Layout:
    blocks: nn.ModuleList
    final_norm: nn.Module
    unembed: nn.Module  # maps the normed residual to logits, before any softcapping
    n_heads: int
    head_dim: int
    attn_attr: str  # attribute of a block holding the attention module
    out_proj_attr: str  # attribute of the attention module whose input is the head outputs
    adapter: Adapter
    body: nn.Module  # the model without its head: `body(input_ids=...).last_hidden_state` is normed
    final_softcap: float | None

    @property
    def model_type(self) -> str:
        return self.adapter.name

    def logits(self, hidden: torch.Tensor, normed: bool = False) -> torch.Tensor:
        """The model's readout of residual states, in float32: final norm (unless `normed`),
        unembedding, and final-logit softcapping where the architecture has it."""
        logits = self.unembed(hidden if normed else self.final_norm(hidden))
        if self.final_softcap:
            logits = torch.tanh(logits / self.final_softcap) * self.final_softcap
        return logits.float()

    def frozen_norm(self, final: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        """The final norm linearised at the residual state `final` [..., D] and applied to a
        component `part` [..., D] of it (as TransformerLens folds a cached scale): the norm's
        scale (RMS, or LayerNorm's standard deviation) is that of `final`, so the parts of a
        residual state add up to the norm of the whole. Bias and softcapping are left out."""
        norm = self.final_norm
        eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        layer_norm = isinstance(norm, nn.LayerNorm)

        def scale(x):
            x = x.float()
            spread = x.var(-1, unbiased=False, keepdim=True) if layer_norm else x.pow(2).mean(-1, keepdim=True)
            return torch.sqrt(spread + eps)

        bias = norm.bias.float() if layer_norm and norm.bias is not None else 0.0
        # N(c) - N's bias, rescaled from c's own scale to the whole state's.
        return (norm(part).float() - bias) * scale(part) / scale(final)


def layout(model) -> Layout:
    ad = adapter_for(model)
    cfg = model.config
    stack = getattr(model, ad.stack)
    n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    head_dim = getattr(cfg, "head_dim", None) or hidden // n_heads
    blocks = getattr(stack, ad.blocks)
    proj = getattr(getattr(blocks[0], ad.attn), ad.out_proj)
    width = proj.weight.shape[0] if ad.qkv == "conv1d" else proj.weight.shape[1]
    if width != n_heads * head_dim:
        _refuse(model, f"output projection takes {width} inputs, not {n_heads} heads x {head_dim}")
    softcap = getattr(cfg, "final_logit_softcapping", None) if ad.softcap else None
    return Layout(blocks, getattr(stack, ad.final_norm), model.lm_head, int(n_heads), int(head_dim), ad.attn,
                  ad.out_proj, ad, stack, softcap)


def head_out_proj(model, layer: int) -> nn.Module:
    """The module whose input holds the per-head outputs of `layer`, concatenated."""
    lay = layout(model)
    return getattr(getattr(lay.blocks[layer], lay.attn_attr), lay.out_proj_attr)


def head_out_weights(model, layer: int) -> torch.Tensor:
    """[H, d, D]: head h's output z_h [.., d] adds z_h @ W[h] to the attention output."""
    lay = layout(model)
    proj = head_out_proj(model, layer)
    w = proj.weight if lay.adapter.qkv == "conv1d" else proj.weight.t()  # GPT-2's Conv1D stores [in, out]
    return w.reshape(lay.n_heads, lay.head_dim, w.shape[-1])


def layer_kinds(model) -> list[str]:
    """Attention type of every layer, as the model's own forward picks its mask."""
    ad, cfg = adapter_for(model), model.config
    n = len(layout(model).blocks)
    if ad.kinds == "layer_types":
        return list(cfg.layer_types)
    if ad.kinds == "window" and getattr(cfg, "sliding_window", None) is not None:
        return ["sliding_attention"] * n
    return ["full_attention"] * n


def _identity(x):
    return x


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] features of each head (all of them unless partial, as Phi-3)."""
    rd = cos.shape[-1]
    rot, rest = x[..., :rd], x[..., rd:]
    return torch.cat((rot * cos + _rotate_half(rot) * sin, rest), dim=-1)


def _scored_losses(logits: torch.Tensor, labels: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    """Mean float32 cross-entropy per owner, on the CPU (where the analyses collect results)."""
    ce = F.cross_entropy(logits.float(), labels.to(logits.device), reduction="none").cpu()
    owner = owner.cpu()
    sums = torch.zeros(n, dtype=ce.dtype).index_add_(0, owner, ce)
    return sums / torch.zeros(n, dtype=ce.dtype).index_add_(0, owner, torch.ones_like(ce))


@torch.no_grad()
def model_losses(model, batch) -> torch.Tensor:
    """Per-target code losses from the model's own forward (`model(...).logits`), one row at a
    time so that only the scored positions' logits are materialised (vocabularies of 256k)."""
    out = torch.empty(len(batch.target_ids))
    for i in range(len(batch.target_ids)):
        sel = batch.owner == i
        length = int(batch.attention_mask[i].sum())
        positions = batch.positions[sel]
        logits = model(
            input_ids=batch.input_ids[i : i + 1, :length],
            attention_mask=batch.attention_mask[i : i + 1, :length],
            logits_to_keep=positions,
        ).logits[0]
        out[i] = F.cross_entropy(logits.float(), batch.labels[sel].to(logits.device)).cpu()
    return out


class BlockRunner:
    """Runs the blocks of `model` on residual streams for one batch geometry.

    `attention_mask` is the usual [B, T] 0/1 padding mask. Residuals may carry any whole
    multiple of B rows (the batch repeated `rep` times, row `j * B + b` being a copy of
    row `b`); the 4D mask is built (and cached) for each such size and layer type.
    """

    def __init__(self, model, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None):
        self.model = model
        self.lay = layout(model)
        self.ad = self.lay.adapter
        self.attention_mask = attention_mask
        self.B, self.T = attention_mask.shape
        if position_ids is None:
            position_ids = torch.arange(self.T, device=attention_mask.device).unsqueeze(0)
        self.position_ids = position_ids
        self.layer_types = layer_kinds(model)
        self._masks: dict[tuple[int, str], torch.Tensor | None] = {}
        self._ropes: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def n_layers(self) -> int:
        return len(self.lay.blocks)

    def _norm(self, layer: int, which: str | None):
        return _identity if which is None else getattr(self.lay.blocks[layer], which)

    def _attn(self, layer: int) -> nn.Module:
        return getattr(self.lay.blocks[layer], self.ad.attn)

    # -- inputs of the blocks ------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        emb = self.model.get_input_embeddings()(input_ids)
        if self.ad.rope is None:  # GPT-2: learned absolute positions, then embedding dropout
            stack = self.lay.body
            emb = stack.drop(emb + stack.wpe(self.position_ids))
        return emb

    def mask(self, layer: int, like: torch.Tensor):
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        rows = like.shape[0]
        if rows % self.B:
            raise ValueError(f"residual batch {rows} is not a multiple of the batch {self.B}")
        kind = self.layer_types[layer]
        key = (rows, kind)
        if key not in self._masks:
            make = create_sliding_window_causal_mask if kind == "sliding_attention" else create_causal_mask
            self._masks[key] = make(
                config=self.model.config,
                inputs_embeds=like,
                attention_mask=self.attention_mask.repeat(rows // self.B, 1),
                past_key_values=None,
                position_ids=self.position_ids,
            )
        return self._masks[key]

    def rope(self, layer: int, like: torch.Tensor):
        kind = self.layer_types[layer] if self.ad.rope == "per_kind" else None
        if kind not in self._ropes:
            emb = self.lay.body.rotary_emb
            self._ropes[kind] = emb(like, self.position_ids, kind) if kind else emb(like, self.position_ids)
        return self._ropes[kind]

    # -- the two halves of a block -------------------------------------------------------
    def attn_out(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """The attention module's output (the output projection's, before any post-attention
        norm): the quantity that is linear in the per-head outputs."""
        attn = self._attn(layer)
        h = self._norm(layer, self.ad.pre_attn_norm)(resid)
        if self.ad.rope is None:
            out, _ = attn(h, attention_mask=self.mask(layer, resid))
        else:
            out, _ = attn(
                hidden_states=h,
                position_embeddings=self.rope(layer, resid),
                attention_mask=self.mask(layer, resid),
                position_ids=self.position_ids,
            )
        return out

    def attn_add(self, layer: int, resid: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return resid + self._norm(layer, self.ad.post_attn_norm)(out)

    def attn_half(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        return self.attn_add(layer, resid, self.attn_out(layer, resid))

    def mlp_half(self, layer: int, mid: torch.Tensor) -> torch.Tensor:
        blk = self.lay.blocks[layer]
        out = getattr(blk, self.ad.mlp)(self._norm(layer, self.ad.pre_mlp_norm)(mid))
        return mid + self._norm(layer, self.ad.post_mlp_norm)(out)

    def block(self, layer: int, resid: torch.Tensor) -> torch.Tensor:
        return self.mlp_half(layer, self.attn_half(layer, resid))

    def run(self, resid: torch.Tensor, start_layer: int = 0, end_layer: int | None = None) -> torch.Tensor:
        """Blocks start_layer..end_layer-1 (all remaining by default); no final norm."""
        for layer in range(start_layer, self.n_layers if end_layer is None else end_layer):
            resid = self.block(layer, resid)
        return resid

    # -- last block restricted to the query positions that are read ----------------------
    def can_restrict_last_block(self) -> bool:
        """Whether `last_block_at` reproduces this model's last attention (every adapter's
        eager attention is; GPT-2's reordered-and-upcast variant is not re-derived)."""
        attn = self._attn(self.n_layers - 1)
        return not getattr(attn, "reorder_and_upcast_attn", False) and hasattr(attn, "scaling")

    def _qkv(self, attn: nn.Module, hq: torch.Tensor, h: torch.Tensor):
        """Queries from `hq` [R, S, D], keys and values from `h` [R, T, D], per head."""
        H, d = self.lay.n_heads, self.lay.head_dim
        R, T = h.shape[:2]
        if self.ad.qkv == "conv1d":
            split = attn.split_size
            w, b = attn.c_attn.weight, attn.c_attn.bias  # Conv1D: [in, 3 * hidden]
            q = F.linear(hq, w[:, :split].t(), b[:split])
            kv = F.linear(h, w[:, split:].t(), b[split:])
            k, v = kv[..., :split], kv[..., split:]
        elif self.ad.qkv == "fused":
            w = attn.qkv_proj.weight
            b = attn.qkv_proj.bias
            nq = H * d
            q = F.linear(hq, w[:nq], None if b is None else b[:nq])
            kv = F.linear(h, w[nq:], None if b is None else b[nq:])
            k, v = kv[..., : kv.shape[-1] // 2], kv[..., kv.shape[-1] // 2 :]
        else:
            q, k, v = attn.q_proj(hq), attn.k_proj(h), attn.v_proj(h)
        if self.ad.qk_norm == "full":
            q, k = attn.q_norm(q), attn.k_norm(k)
        q = q.view(R, -1, H, d)
        k = k.view(R, T, -1, d)
        v = v.view(R, T, -1, d)
        if self.ad.qk_norm == "head":
            q, k = attn.q_norm(q), attn.k_norm(k)
        return q, k, v

    def last_block_at(
        self,
        resid: torch.Tensor,
        rows: torch.Tensor,
        positions: torch.Tensor,
        keep: torch.Tensor | None = None,
        fill: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Output of the last block at (rows, positions) only: [N, D].

        Keys and values come from every position; queries, attention output, output
        projection and MLP only at the requested positions. Equal (to round-off) to
        `self.block(last, resid)[rows, positions]`, but much cheaper when few positions are
        read. Forward hooks on the output projection are NOT run; a head intervention on the
        last layer is passed instead as `keep` ([R, H], one mask per residual row) and
        `fill` ([H, head_dim] or None), with the semantics of `heads.head_intervention`.
        """
        layer = self.n_layers - 1
        attn = self._attn(layer)
        n_heads, head_dim = self.lay.n_heads, self.lay.head_dim
        R, T = resid.shape[:2]
        # Queries per row, padded to the longest: slot s of row r is position grid[r, s].
        counts = torch.bincount(rows, minlength=R)
        order = torch.argsort(rows, stable=True)
        slot = torch.empty_like(rows)
        slot[order] = torch.arange(len(rows)) - (torch.cumsum(counts, 0) - counts)[rows[order]]
        grid = torch.zeros(R, int(counts.max()), dtype=torch.long)
        grid[rows, slot] = positions
        ridx = torch.arange(R)[:, None]
        h = self._norm(layer, self.ad.pre_attn_norm)(resid)
        q, k, v = self._qkv(attn, h[ridx, grid], h)  # [R, S, H, d], [R, T, Hkv, d] x 2
        if self.ad.rope is not None:
            cos, sin = self.rope(layer, resid)  # [1, T, rd]
            q = _apply_rope(q, cos[0][grid].unsqueeze(2), sin[0][grid].unsqueeze(2))
            k = _apply_rope(k, cos[0][None, :, None], sin[0][None, :, None])
        n_kv = k.shape[2]
        group = n_heads // n_kv
        S = grid.shape[1]
        # [R, S, Hkv, G, d] -> [R, Hkv, G * S, d]: each KV head serves its G query heads at once.
        qg = q.view(R, S, n_kv, group, head_dim).permute(0, 2, 3, 1, 4).reshape(R, n_kv, group * S, head_dim)
        k = k.transpose(1, 2)  # [R, Hkv, T, d]
        v = v.transpose(1, 2)
        scores = torch.matmul(qg, k.transpose(2, 3)) * attn.scaling  # [R, Hkv, G * S, T]
        cap = getattr(attn, "attn_logit_softcapping", None) if self.ad.softcap else None
        if cap:
            scores = torch.tanh(scores / cap) * cap
        scores = scores + self._query_mask(layer, resid, grid).repeat(1, group, 1).unsqueeze(1)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        z = torch.matmul(weights, v)  # [R, Hkv, G * S, d]
        z = z.view(R, n_kv, group, S, head_dim).permute(0, 3, 1, 2, 4).reshape(R, S, n_heads, head_dim)
        if keep is not None:
            kk = keep.to(z.dtype).view(R, 1, n_heads, 1)
            z = z * kk + ((1 - kk) * fill.to(z.dtype) if fill is not None else 0)
        z = z.reshape(R, S, n_heads * head_dim)[rows, slot]  # [N, H * d]
        proj = getattr(attn, self.ad.out_proj)
        if self.ad.qkv == "conv1d":
            out = torch.addmm(proj.bias, z, proj.weight)
        else:
            out = F.linear(z, proj.weight, proj.bias)
        mid = self.attn_add(layer, resid[rows, positions], out)
        return self.mlp_half(layer, mid)

    def _query_mask(self, layer: int, resid: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """The model's own additive 4D mask of this layer, at the query rows in `grid`: [R, S, T]."""
        R, T = resid.shape[:2]
        m = self.mask(layer, resid)
        dtype = resid.dtype
        if m is None:  # the attention implementation relies on causality alone
            keys = torch.arange(T)
            m = (keys[None, None, :] <= keys[None, :, None]) & self.attention_mask.bool().repeat(R // self.B, 1)[:, None, :]
            m = m.unsqueeze(1)
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype).masked_fill(~m, torch.finfo(dtype).min)
        m = m.expand(R, -1, -1, -1)[:, 0]  # [R, T, T]
        return m[torch.arange(R)[:, None], grid]

    # -- readout and the self-check --------------------------------------------------------
    def losses_at(self, hidden: torch.Tensor, batch, rep: int) -> torch.Tensor:
        """Per-target code losses from last-block outputs already gathered at the scored
        positions ([rep * N, D], copy-major), as [rep, B]."""
        owner = (batch.owner[None, :] + self.B * torch.arange(rep)[:, None]).reshape(-1)
        losses = _scored_losses(self.lay.logits(hidden), batch.labels.repeat(rep), owner, rep * self.B)
        return losses.view(rep, self.B)

    def losses(self, final: torch.Tensor, batch) -> torch.Tensor:
        """Per-target code losses from the last block's output [rep * B, T, D], as [rep, B]."""
        rep = final.shape[0] // self.B
        rows = (batch.rows[None, :] + self.B * torch.arange(rep)[:, None]).reshape(-1)
        return self.losses_at(final[rows, batch.positions.repeat(rep)], batch, rep)

    def clean_losses(self, batch, emb: torch.Tensor, restrict: bool) -> torch.Tensor:
        """Per-target clean losses the way the fast paths compute them: blocks run here, the
        last one at the scored positions only when `restrict`."""
        last = self.n_layers - 1
        if restrict:
            out = self.last_block_at(self.run(emb, 0, last), batch.rows, batch.positions)
        else:
            out = self.run(emb)[batch.rows, batch.positions]
        return self.losses_at(out, batch, 1)[0]

    @torch.no_grad()
    def verify(self, batch, emb: torch.Tensor, restrict: bool, what: str, rtol: float | None = None) -> None:
        """Stop unless this runner's clean per-target losses equal the model's own forward.

        Relative tolerance, with 1 nat as the smallest scale: float32 round-off on a loss
        near 0 is not a disagreement (default: by the model's dtype, codeinterp.access.compute).
        """
        from codeinterp.access.compute import check_rtol

        rtol = check_rtol(self.model) if rtol is None else rtol
        mine = self.clean_losses(batch, emb, restrict)
        ref = model_losses(self.model, batch)
        err = (mine - ref).abs() / ref.abs().clamp_min(1.0)
        worst = int(err.argmax())
        if not bool(err[worst] <= rtol):
            raise RunnerMismatch(
                f"{what}: the fast runner for {self.ad.name} disagrees with the model's own forward "
                f"(clean loss of target {batch.target_ids[worst]}: runner {float(mine[worst]):.6f}, "
                f"model {float(ref[worst]):.6f}); refusing to report its numbers"
            )
