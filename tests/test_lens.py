import polars as pl
import pytest
import torch

from codeinterp.analyses import lens
from codeinterp.access.scoring import Target, targets_from_frame
from codeinterp.benchmarks.targets import make_target, token_span


def targets_for(tok):
    rows = [
        make_target(tok, "a", "<|im_start|>user\nadd<|im_end|>\n", "def add(a, b):\n    return a + b\n", "```"),
        make_target(tok, "b", "x = ", "[1, (2, 3)]"),
    ]
    return targets_from_frame(pl.DataFrame(rows))


def test_last_layer_equals_model_output(tiny):
    model, tok = tiny
    targets = targets_for(tok)
    tokens = lens.layer_lens(model, targets, batch_size=2, pad_id=tok.pad_token_id)
    n_layers = model.config.num_hidden_layers
    assert sorted(tokens["layer"].unique()) == list(range(n_layers + 1))
    for t in targets:
        ids = torch.tensor([t.input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, t.code_start - 1 : t.code_end - 1].float()
        logp = torch.log_softmax(logits, -1)
        want_ce = -logp.gather(-1, ids[0, t.code_start : t.code_end, None])[:, 0]
        want_h = -(logp.exp() * logp).sum(-1)
        got = tokens.filter((pl.col("target_id") == t.target_id) & (pl.col("layer") == n_layers)).sort("position")
        assert got["position"].to_list() == list(range(t.code_start, t.code_end))
        assert got["cross_entropy"].to_list() == pytest.approx(want_ce.tolist(), abs=1e-4)
        assert got["entropy"].to_list() == pytest.approx(want_h.tolist(), abs=1e-4)
        assert got["kl_to_final"].abs().max() < 1e-5


def test_intermediate_layer_uses_final_norm(tiny_models):
    model, tok = tiny_models["llama"]
    t = targets_for(tok)[1]
    tokens = lens.layer_lens(model, [t], batch_size=1)
    ids = torch.tensor([t.input_ids])
    with torch.no_grad():
        h = model(input_ids=ids, output_hidden_states=True).hidden_states[1][0, t.code_start - 1 : t.code_end - 1]
        logp = torch.log_softmax(model.lm_head(model.model.norm(h)).float(), -1)
    want = -logp.gather(-1, ids[0, t.code_start : t.code_end, None])[:, 0]
    got = tokens.filter(pl.col("layer") == 1).sort("position")["cross_entropy"].to_list()
    assert got == pytest.approx(want.tolist(), abs=1e-4)


def test_summary_is_mean_of_target_means():
    tokens = pl.DataFrame({
        "target_id": ["a", "a", "a", "b"], "layer": [0, 0, 0, 0], "position": [1, 2, 3, 1], "token_id": [0] * 4,
        "entropy": [1.0, 2.0, 3.0, 10.0], "cross_entropy": [0.0] * 4, "top1_correct": [True, False, False, True],
        "kl_to_final": [0.0] * 4,
    })
    s = lens.layer_summary(tokens)
    assert s["entropy"].to_list() == [pytest.approx(6.0)]
    assert s["top1_accuracy"].to_list() == [pytest.approx((1 / 3 + 1) / 2)]


def test_token_span_maps_characters_to_tokens():
    offsets = [(0, 3), (3, 5), (5, 9), (9, 10)]
    assert token_span(offsets, 3, 9) == (1, 3)
    with pytest.raises(ValueError):
        token_span(offsets, 20, 30)


def test_code_span_tokens_decode_to_the_code(tiny):
    _, tok = tiny
    row = make_target(tok, "x", "<|im_start|>assistant\n```python\n", "def f():\n    return 1\n", "```")
    assert tok.decode(row["input_ids"][row["code_start"] : row["code_end"]]) == "def f():\n    return 1\n"
