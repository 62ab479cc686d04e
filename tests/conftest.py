import pytest
import torch

from codeinterp.access import models


@pytest.fixture(scope="session")
def tiny_models():
    """One tiny random model per supported architecture (GQA for Llama and Qwen2)."""
    out = {}
    for arch in ("llama", "qwen2", "gpt2"):
        spec = {"architecture": arch, "n_layers": 3, "n_heads": 4, "hidden_size": 64, "seed": 1}
        if arch == "gpt2":
            spec["n_kv_heads"] = 4
        out[arch] = models.build_tiny_random(spec)
    return out


@pytest.fixture(params=["llama", "qwen2", "gpt2"])
def tiny(request, tiny_models):
    return tiny_models[request.param]


def encode(tokenizer, texts):
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture
def batch(tiny):
    model, tok = tiny
    tok.padding_side = "left"
    return encode(tok, ["def add(a, b):\n    return a + b\n", "print([1, 2, (3)])"])


torch.set_num_threads(2)
