"""Tiny random decoders of every architecture the adapters know, for exactness tests.

Each is built from transformers' own config class (eager attention, float32) and then made
harder to imitate than a fresh init: every norm weight is drawn around 1 (so skipping or
misplacing a norm changes the numbers), every bias around 0.1, GQA wherever the
architecture has it, a sliding window shorter than the test sequences, and Gemma 2's
attention and final-logit softcapping at values the logits actually reach.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from codeinterp.access.scoring import Target

VOCAB = 384
WINDOW = 8  # shorter than every test sequence, so sliding layers see a different mask
LAYERS = 3
COMMON = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.1,
              max_position_embeddings=128, tie_word_embeddings=False)
ROPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)


def _config(arch: str):
    import transformers as tf

    if arch == "llama":
        return tf.LlamaConfig(**ROPE, attention_bias=True, mlp_bias=True, **COMMON)
    if arch == "mistral":
        return tf.MistralConfig(**ROPE, sliding_window=WINDOW, **COMMON)
    if arch == "qwen2":  # q/k/v biases; layer 0 full, layers 1-2 sliding
        return tf.Qwen2Config(**{k: v for k, v in ROPE.items() if k != "head_dim"}, use_sliding_window=True, sliding_window=WINDOW,
                              max_window_layers=1, **COMMON)
    if arch == "qwen3":  # per-head q/k norms
        return tf.Qwen3Config(**ROPE, attention_bias=True, use_sliding_window=True, sliding_window=WINDOW,
                              max_window_layers=2, **COMMON)
    if arch == "gemma":
        return tf.GemmaConfig(**ROPE, **COMMON)
    if arch == "gemma2":
        return tf.Gemma2Config(**ROPE, sliding_window=WINDOW, query_pre_attn_scalar=16,
                               attn_logit_softcapping=3.0, final_logit_softcapping=2.0, **COMMON)
    if arch == "gemma3":  # hidden 48 != 4 heads x 16: head_dim is not hidden / heads
        return tf.Gemma3TextConfig(**{**ROPE, "hidden_size": 48}, sliding_window=WINDOW, query_pre_attn_scalar=16,
                                   layer_types=["sliding_attention", "full_attention", "sliding_attention"], **COMMON)
    if arch == "phi3":  # fused qkv_proj / gate_up_proj, half-rotary heads
        rope = {k: v for k, v in ROPE.items() if k != "head_dim"}
        return tf.Phi3Config(**rope, sliding_window=WINDOW, partial_rotary_factor=0.5, **COMMON)
    if arch == "olmo2":  # norms after attention and MLP, q/k norms over the whole projection
        return tf.Olmo2Config(**{k: v for k, v in ROPE.items() if k != "head_dim"}, **COMMON)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=LAYERS, n_head=4, n_inner=96, n_positions=128,
                             **{k: v for k, v in COMMON.items() if k not in ("max_position_embeddings",)})
    if arch == "gpt_neox":  # parallel attention + MLP: no adapter, must be refused
        return tf.GPTNeoXConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                **COMMON)
    raise KeyError(arch)


ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "olmo2", "gpt2")


@torch.no_grad()
def build(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch), dtype=torch.float32, attn_implementation="eager")
    g = torch.Generator().manual_seed(seed + 1)
    for name, module in model.named_modules():
        is_norm = "norm" in type(module).__name__.lower()
        for pname, p in module.named_parameters(recurse=False):
            if is_norm and pname == "weight":
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif pname == "bias":
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    model.eval()
    return model


def random_targets(n: int = 3, seed: int = 0, lengths=(13, 24, 19, 30)) -> list[Target]:
    """Targets of random tokens (no pad id 0), different lengths so batches are padded."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        T = lengths[i % len(lengths)]
        ids = torch.randint(3, VOCAB, (T,), generator=g).tolist()
        start = T // 2 - i % 3
        out.append(Target(f"r{i}", tuple(ids), start, T))
    return out
