"""A tiny decoder hand-built so that its output depends on exactly one known head.

Residual stream (width n_heads * head_dim) = [token subspace | copy subspace | unused]. The embedding
writes a fixed random vector per token into the token subspace. Every MLP and every head's
output-projection columns are zero except those of HEAD = (1, 2): its query is zero, so it
attends uniformly to the causal prefix, and its value/output copy the token subspace into
the copy subspace. The unembedding reads only the copy subspace, scoring each token by its
match with the average of the prefix tokens ("predict a token seen before").

With the head, code that reuses its context's characters gets a low loss; without it every
logit is exactly 0, so the loss is log(vocab). Ablating any other head changes nothing.
"""

from __future__ import annotations

import torch

from codeinterp.access import models
from codeinterp.access.scoring import Target

HEAD = (1, 2)
N_LAYERS, N_HEADS, HEAD_DIM = 3, 4, 32


def _token_vectors(vocab: int, dim: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    e = torch.randn(vocab, dim, generator=g)
    return e / e.norm(dim=1, keepdim=True) * dim**0.5  # unit RMS per token


@torch.no_grad()
def build_one_head_model(arch: str = "llama"):
    """(model, tokenizer, (layer, head)) with all behaviour in the returned head.

    arch: "llama", "qwen2" (GQA: 4 query heads, 2 KV heads) or "gpt2".
    """
    d = HEAD_DIM
    hidden = N_HEADS * d  # GPT-2 ties head_dim to hidden / n_heads
    spec = {"architecture": arch, "n_layers": N_LAYERS, "n_heads": N_HEADS, "hidden_size": hidden,
            "intermediate_size": 64, "seed": 0}
    if arch == "gpt2":
        spec["n_kv_heads"] = N_HEADS
    else:
        spec["n_kv_heads"] = 2
        spec["head_dim"] = d
    model, tok = models.build_tiny_random(spec)
    layer, head = HEAD
    vocab = model.config.vocab_size
    e = _token_vectors(vocab, d)
    scale = 6.0  # logit gain of the copy direction
    if model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr():
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie (GPT-2 ties)
        model.config.tie_word_embeddings = False
    for p in model.parameters():
        p.zero_()
    if arch == "gpt2":
        tr = model.transformer
        tr.wte.weight[:, :d] = e
        for blk in tr.h:
            for ln in (blk.ln_1, blk.ln_2):
                ln.weight.fill_(1.0)
        tr.ln_f.weight.fill_(1.0)
        attn = tr.h[layer].attn
        # c_attn is Conv1D [in, 3 * hidden]: q | k | v; value of `head` = token subspace.
        v_cols = slice(2 * hidden + head * d, 2 * hidden + (head + 1) * d)
        attn.c_attn.weight[:d, v_cols] = torch.eye(d)
        # c_proj is Conv1D [hidden(in, by head), hidden(out)].
        attn.c_proj.weight[head * d : (head + 1) * d, d : 2 * d] = torch.eye(d)
    else:
        inner = model.model
        inner.embed_tokens.weight[:, :d] = e
        for blk in inner.layers:
            blk.input_layernorm.weight.fill_(1.0)
            blk.post_attention_layernorm.weight.fill_(1.0)
        inner.norm.weight.fill_(1.0)
        attn = inner.layers[layer].self_attn
        n_kv = attn.k_proj.weight.shape[0] // d
        kv = head // (N_HEADS // n_kv)  # the KV head that query head `head` reads
        attn.v_proj.weight[kv * d : (kv + 1) * d, :d] = torch.eye(d)
        attn.o_proj.weight[d : 2 * d, head * d : (head + 1) * d] = torch.eye(d)
    # Unembedding reads the copy subspace with the token vectors.
    model.lm_head.weight[:, d : 2 * d] = e * (scale / d)
    model.eval()
    return model, tok, HEAD


def one_head_targets(tok, n: int = 3) -> list[Target]:
    """Targets whose code reuses the characters of its context (the head helps a lot)."""
    texts = [
        ("aaaa bbbb aaaa ", "abba baab abab"),
        ("xyxyxyxy ", "xxyy yyxx xy"),
        ("def f(): return f() ", "def f(): return f()"),
        ("0101 1010 ", "0011 1100 0101"),
        ("((( ))) ", "(( )) ((( )))"),
    ][:n]
    out = []
    for i, (ctx, code) in enumerate(texts):
        c = tok(ctx)["input_ids"]
        k = tok(code)["input_ids"]
        out.append(Target(f"h{i}", tuple(c + k), len(c), len(c) + len(k)))
    return out


SNIPPETS = [("# add\n", "def add(a, b):\n    return a + b\n"), ("x = ", "[1, (2, 3)]"), ("", "pass"),
            ("# sq\n", "def sq(x): return x * x")]


def snippet_targets(tok, n: int = 3):
    """Small code targets for tiny models: context tokens, then the code tokens."""
    from codeinterp.access.scoring import Target

    out = []
    for i, (ctx, code) in enumerate(SNIPPETS[:n]):
        c = tok(ctx)["input_ids"] if ctx else [tok.bos_token_id]
        k = tok(code)["input_ids"]
        out.append(Target(f"t{i}", tuple(c + k), len(c), len(c) + len(k)))
    return out
