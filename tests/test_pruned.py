import polars as pl
import torch

from codeinterp import heads, models, pruned


def test_pruned_checkpoint_equals_hook_masking(tmp_path):
    model, tok = models.build_tiny_random({"architecture": "llama", "n_layers": 2, "seed": 3})
    models.save_canonical(model, tok, tmp_path / "base", "tiny-random")
    removed = [(0, 1), (1, 3)]
    pruned.write_pruned_checkpoint(tmp_path / "base", removed, tmp_path / "pruned")
    base, _ = models.load_model(tmp_path / "base")
    cut, _ = models.load_model(tmp_path / "pruned")
    assert cut.model.layers[0].self_attn.o_proj.weight.dtype == base.model.layers[0].self_attn.o_proj.weight.dtype
    ids = torch.tensor([tok("def f(x): return x")["input_ids"]])
    with torch.no_grad(), heads.head_intervention(base, heads.mask_from_heads(base, removed)):
        want = base(input_ids=ids).logits
    with torch.no_grad():
        got = cut(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_baseline_row_and_labels():
    verdicts = pl.DataFrame({"problem_id": ["a", "a", "b"], "status": ["passed", "failed", "failed"]})
    pak = pl.DataFrame({"problem_id": ["a", "b"], "n": [2, 1], "c": [1, 0], "pass@1": [0.5, 0.0]})
    row = pruned.baseline_row(pak, verdicts)
    assert row.select("regime", "n_removed", "n_samples", "n_passed", "pass@1").row(0) == ("none", 0, 3, 1, 0.25)
    assert pruned.regime_label({"kind": "top_k", "k": 5}) == "top_k(k=5)"
    assert pruned.regime_label({"kind": "random", "seed": 0, "k": 2}) == "random(k=2,seed=0)"
