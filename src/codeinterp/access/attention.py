"""Attention probabilities re-derived from the queries and keys the model itself computes, and
the query/key sites that AtP*'s QK fix patches (Kramar et al. 2024, arXiv 2403.00745).

`probe(model)` routes every attention call of the model, for the duration of a `with` block,
through a registered attention implementation that hands the call's own arguments to a
recorder: the queries and keys after rotary embeddings and q/k norms ([B, H, T, d] and
[B, H_kv, T, d]), the values, the additive 4D mask, the scaling and the logit softcap. The
attention itself is then computed by the model's own eager attention function, so outputs are
the model's (eager) outputs. An `edit(layer, query, key)` callback may replace queries and
keys there: the sites `head_q` (per query head and position) and `head_k` (per KV head and
position) of exact query/key patching.

`probabilities` re-derives the softmax from a recorded call; `check_probabilities` compares it
with the model's own attention weights (`output_attentions`) and raises `RunnerMismatch`.
The QK fix uses it: `key_fix` and `query_fix` give, for every key (query) position, the change
of sum_t A_t . G_t when that key (query) alone takes another run's value, with the softmax
recomputed exactly (G = dM/dA).

Only the adapters in `architectures` are accepted (`layout` refuses the rest); GPT-2's
reordered-and-upcast attention is refused, as it does not go through the attention interface.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from codeinterp.access.architectures import RunnerMismatch, UnsupportedArchitecture, layout

PROBE = "codeinterp_probe"


@dataclass
class Call:
    """One attention call as the model made it (tensors kept attached to the autograd graph)."""

    query: torch.Tensor  # [B, H, T, d]
    key: torch.Tensor  # [B, H_kv, T, d]
    value: torch.Tensor  # [B, H_kv, T, d]
    mask: torch.Tensor  # [B or 1, 1, T, T] additive
    scaling: float
    softcap: float | None
    weights: torch.Tensor  # [B, H, T, T] the model's own probabilities


class _State:
    def __init__(self, model, edit, keep_grad):
        lay = layout(model)
        self.layer_of = {}
        for l, block in enumerate(lay.blocks):
            attn = getattr(block, lay.adapter.attn)
            if getattr(attn, "reorder_and_upcast_attn", False):
                raise UnsupportedArchitecture(
                    f"{lay.model_type}: reorder_and_upcast_attn bypasses the attention interface; not probed")
            self.layer_of[id(attn)] = l
        self.edit, self.keep_grad = edit, keep_grad
        self.calls: dict[int, Call] = {}


_ACTIVE: list[_State] = []


def _additive(mask, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The mask as an additive float tensor (a runner built earlier may hold a boolean one, or
    none when causality alone was enough)."""
    dtype = query.dtype
    if mask is None:
        T, S = query.shape[-2], key.shape[-2]
        allowed = torch.ones(T, S, dtype=torch.bool, device=query.device).tril(S - T)
        mask = allowed[None, None]
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask.to(dtype)


def _eager_of(module):
    return sys.modules[type(module).__module__].eager_attention_forward


def _dispatch(module, query, key, value, attention_mask, **kwargs):
    state = _ACTIVE[-1]
    layer = state.layer_of[id(module)]
    if state.edit is not None:
        query, key = state.edit(layer, query, key)
    if state.keep_grad and query.requires_grad:
        query.retain_grad()
        key.retain_grad()
    mask = _additive(attention_mask, query, key)
    out, weights = _eager_of(module)(module, query, key, value, mask, **kwargs)
    scaling = kwargs.get("scaling")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    state.calls[layer] = Call(query, key, value, mask, float(scaling), kwargs.get("softcap"), weights)
    return out, weights


def _register() -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(PROBE, _dispatch)
    # The probe always sees an explicit 4D mask (never a bare `is_causal`), built as for eager.
    type(ALL_MASK_ATTENTION_FUNCTIONS).register(PROBE, eager_mask)


@contextmanager
def probe(model, edit=None, keep_grad: bool = False):
    """Yield {layer: Call} filled by every forward run inside the block (the last call per
    layer). `edit(layer, query, key) -> (query, key)` replaces queries/keys; with `keep_grad`
    their `.grad` is kept after a backward."""
    state = _State(model, edit, keep_grad)
    _register()
    old = model.config._attn_implementation
    model.config._attn_implementation = PROBE
    _ACTIVE.append(state)
    try:
        yield state.calls
    finally:
        _ACTIVE.remove(state)
        model.config._attn_implementation = old


def expand_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[B, H_kv, ...] -> [B, H, ...]: KV head j serves query heads j*G .. (j+1)*G - 1."""
    return x.repeat_interleave(n_heads // x.shape[1], dim=1)


def scores(query: torch.Tensor, key: torch.Tensor, call: Call) -> torch.Tensor:
    """Capped, scaled attention logits before the mask, float32: [B, H, Tq, Tk]."""
    s = torch.matmul(query.float(), expand_kv(key, query.shape[1]).float().transpose(-1, -2)) * call.scaling
    if call.softcap:
        s = torch.tanh(s / call.softcap) * call.softcap
    return s


def probabilities(call: Call, query: torch.Tensor | None = None, key: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(scores + mask) from the call's queries and keys (or the ones given)."""
    q = call.query if query is None else query
    k = call.key if key is None else key
    return torch.softmax(scores(q, k, call) + call.mask.float(), dim=-1)


@torch.no_grad()
def check_probabilities(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, rtol: float = 1e-4) -> None:
    """Stop unless the re-derived probabilities equal the model's own attention weights."""
    with probe(model) as calls:
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
    own = out.attentions
    if own is None or len(own) != len(calls):
        raise RunnerMismatch(f"{layout(model).model_type}: the model returned no attention weights to check against")
    rows = attention_mask.bool()
    for layer, call in sorted(calls.items()):
        err = float((probabilities(call) - own[layer].float()).abs()[rows[:, None, :, None].expand_as(own[layer])].max())
        if not err <= rtol:
            raise RunnerMismatch(f"attention probabilities of layer {layer} differ from the model's own weights by "
                                 f"{err:.2e}; refusing the QK fix")


def value_grad(call: Call, grad_z: torch.Tensor) -> torch.Tensor:
    """dM/dA [B, H, Tq, Tk] from dM/dz [B, T, H, d] (z = A V per head: the o_proj input)."""
    v = expand_kv(call.value, grad_z.shape[2]).float()
    return torch.matmul(grad_z.float().transpose(1, 2), v.transpose(-1, -2))


def key_fix(call: Call, key: torch.Tensor, grad_a: torch.Tensor) -> torch.Tensor:
    """[B, H_kv, Tk]: for each key position s, sum over query rows t of (A'_t - A_t) . G_t when
    key s alone takes `key`'s value, the softmax recomputed exactly (one logit per row moves:
    p' = sigmoid(logit(p) + delta), the other entries scale by (1 - p') / (1 - p))."""
    B, H, T, _ = grad_a.shape
    a = probabilities(call).double()
    g = grad_a.double()
    delta = (scores(call.query, key, call) - scores(call.query, call.key, call)).double()  # [B, H, Tq, Tk]
    live = call.mask.expand(B, H, T, -1) > torch.finfo(call.mask.dtype).min / 2
    p = a.clamp(0.0, 1.0)
    logit = torch.log(p.clamp_min(1e-300)) - torch.log1p(-p.clamp(max=1 - 1e-16))
    p_new = torch.sigmoid(logit + delta)
    mean_g = (a * g).sum(-1, keepdim=True)  # A_t . G_t
    others = (mean_g - p * g) / (1 - p).clamp_min(1e-300)  # G averaged over the other keys
    change = (1 - p_new) * others + p_new * g - mean_g
    change = torch.where(live & (p > 0), change, torch.zeros_like(change))
    per_head = change.sum(2)  # [B, H, Tk]
    n_kv = call.key.shape[1]
    return per_head.view(B, n_kv, H // n_kv, T).sum(2).float()


def query_fix(call: Call, query: torch.Tensor, grad_a: torch.Tensor) -> torch.Tensor:
    """[B, H, Tq]: for each query position t, (A'_t - A_t) . G_t when query t alone takes
    `query`'s value (its whole row recomputed)."""
    a = probabilities(call)
    a_new = probabilities(call, query=query)
    return ((a_new - a) * grad_a.float()).sum(-1)
