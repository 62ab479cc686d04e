"""Named activation sites read from, or written into, the model's own forward.

Site names (layer `l` counts blocks from 0; `n` is the number of blocks):
- `resid.{l}` for l in 0..n: the residual stream after l blocks; `resid.0` is the input of the
  first block (embeddings, with GPT-2's positions and Gemma's scale), `resid.{n}` the last
  block's output BEFORE the final norm (the readout `Layout.logits` applies the norm).
- `attn.{l}`, `mlp.{l}`: what block l's attention half and MLP half add to the residual stream
  (after the post-attention / post-MLP norm of architectures that have one), so that
  resid.{l+1} = resid.{l} + attn.{l} + mlp.{l}.
- `head.{l}`: the input of block l's attention output projection split by query head,
  [..., n_heads, head_dim] (GQA-aware: that input always has n_heads * head_dim columns).

Values are captured with forward hooks on the modules `architectures` names, so they are the
model's own computation, not a re-derivation; `check_decomposition` verifies the residual
bookkeeping on a batch, and analyses call it once per run.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import torch

from codeinterp.access.architectures import RunnerMismatch, layout

KINDS = ("resid", "attn", "mlp", "head")
_SITE = re.compile(r"^(resid|attn|mlp|head)\.(\d+)$")


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def site_names(model, kinds=KINDS) -> list[str]:
    n = len(layout(model).blocks)
    names = []
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown site kind {kind!r} (known: {', '.join(KINDS)})")
        layers = range(n + 1) if kind == "resid" else range(n)
        names.extend(f"{kind}.{l}" for l in layers)
    return names


def parse_site(name: str) -> tuple[str, int]:
    m = _SITE.match(name)
    if not m:
        raise ValueError(f"site {name!r} is not kind.layer with kind in {', '.join(KINDS)}")
    return m.group(1), int(m.group(2))


def _contribution_module(model, layer: int, half: str):
    """The module whose output is what one half of block `layer` adds to the residual."""
    lay = layout(model)
    ad = lay.adapter
    block = lay.blocks[layer]
    post = ad.post_attn_norm if half == "attn" else ad.post_mlp_norm
    if post is not None:
        return getattr(block, post)
    return getattr(block, ad.attn if half == "attn" else ad.mlp)


def _register(model, name: str, record):
    """Attach the hook that hands site `name`'s value to `record(name, tensor)`."""
    lay = layout(model)
    kind, layer = parse_site(name)
    n = len(lay.blocks)
    if not 0 <= layer <= (n if kind == "resid" else n - 1):
        raise ValueError(f"site {name!r}: the model has {n} blocks")
    if kind == "resid" and layer == 0:
        return lay.blocks[0].register_forward_pre_hook(
            lambda mod, args, kwargs: record(name, args[0] if args else kwargs["hidden_states"]), with_kwargs=True
        )
    if kind == "resid":
        return lay.blocks[layer - 1].register_forward_hook(lambda mod, args, out: record(name, _first(out)))
    if kind == "head":
        proj = getattr(getattr(lay.blocks[layer], lay.attn_attr), lay.out_proj_attr)

        def pre(mod, args):
            z = args[0]
            record(name, z.view(*z.shape[:-1], lay.n_heads, lay.head_dim))

        return proj.register_forward_pre_hook(pre)
    module = _contribution_module(model, layer, kind)
    return module.register_forward_hook(lambda mod, args, out: record(name, _first(out)))


@contextmanager
def capture(model, names, select=None):
    """Collect the named sites during the forwards run inside the block: yields a dict
    name -> list of tensors (one per forward), each passed through `select` (e.g. gathering
    the scored positions) and detached."""
    got: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def record(name, value):
        value = value.detach()
        got[name].append(select(value) if select is not None else value)

    handles = [_register(model, n, record) for n in names]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


@contextmanager
def edit_residual(model, layer: int, fn):
    """Replace the residual stream after `layer` blocks by `fn(resid)` in every forward run
    inside the block (layer 0: the embeddings entering the first block)."""
    lay = layout(model)
    n = len(lay.blocks)
    if not 0 <= layer <= n:
        raise ValueError(f"residual layer {layer}: the model has {n} blocks")
    if layer == 0:
        def pre(mod, args, kwargs):
            if args:
                return (fn(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

        handle = lay.blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
    else:
        def post(mod, args, out):
            if isinstance(out, tuple):
                return (fn(out[0]), *out[1:])
            return fn(out)

        handle = lay.blocks[layer - 1].register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def edit_site(model, name: str, fn):
    """Replace site `name`'s value by `fn(value)` in every forward run inside the block; the
    value has the shape `capture` reports (`head.{l}`: [..., n_heads, head_dim]). Patching,
    ablation and circuit runs write through here, so they intervene where `capture` reads."""
    kind, layer = parse_site(name)
    if kind == "resid":
        with edit_residual(model, layer, fn):
            yield
        return
    lay = layout(model)
    n = len(lay.blocks)
    if not 0 <= layer < n:
        raise ValueError(f"site {name!r}: the model has {n} blocks")
    if kind == "head":
        proj = getattr(getattr(lay.blocks[layer], lay.attn_attr), lay.out_proj_attr)

        def pre(mod, args):
            z = args[0]
            new = fn(z.view(*z.shape[:-1], lay.n_heads, lay.head_dim))
            return (new.reshape(z.shape), *args[1:])

        handle = proj.register_forward_pre_hook(pre)
    else:
        def post(mod, args, out):
            if isinstance(out, tuple):
                return (fn(out[0]), *out[1:])
            return fn(out)

        handle = _contribution_module(model, layer, kind).register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def check_decomposition(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, rtol: float = 1e-4) -> None:
    """Stop unless the captured sites add up: resid.{l+1} = resid.{l} + attn.{l} + mlp.{l} at
    every layer, the heads through the output projection give the attention module's output
    (when no post-attention norm sits between them), and the readout of resid.{n} is the
    model's own logits. A failure means the hooks read the wrong modules for this architecture."""
    lay = layout(model)
    n = len(lay.blocks)
    names = site_names(model, ("resid", "attn", "mlp"))
    with capture(model, names) as got:
        out = model(input_ids=input_ids, attention_mask=attention_mask)
    mask = attention_mask.bool()

    def close(a, b, what):
        a, b = a[mask].float(), b[mask].float()
        scale = b.abs().max().clamp_min(1.0)
        err = float((a - b).abs().max() / scale)
        if not err <= rtol:
            raise RunnerMismatch(
                f"activation sites of {lay.model_type}: {what} does not match the model's forward "
                f"(relative error {err:.2e}); refusing to cache or read activations"
            )

    for l in range(n):
        total = got[f"resid.{l}"][0] + got[f"attn.{l}"][0] + got[f"mlp.{l}"][0]
        close(total, got[f"resid.{l + 1}"][0], f"resid.{l} + attn.{l} + mlp.{l} = resid.{l + 1}")
    close(lay.logits(got[f"resid.{n}"][0]), out.logits.float(), f"the readout of resid.{n}")
