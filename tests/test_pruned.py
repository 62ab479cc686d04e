import polars as pl
import torch

from codeinterp.access import heads, models

from codeinterp.analyses import pruned


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


def test_mean_fill_reaches_generation_and_replay_baseline_is_regenerated(tmp_path):
    """Removed heads output their mean during generation (not zero), and with replayed samples
    the unpruned row is this model regenerating, not the other system's samples."""
    from codeinterp.benchmarks import generation
    from codeinterp.benchmarks.datasets import load_problems
    from codeinterp.benchmarks.sandbox import Limits

    model, tok = models.build_tiny_random({"architecture": "llama", "n_layers": 2, "seed": 3})
    models.save_canonical(model, tok, tmp_path / "m", "tiny-random")
    problems = load_problems("humaneval", tmp_path).head(2)
    settings = generation.Settings(max_new_tokens=12, batch_size=2)
    removed = [(0, 0), (0, 1), (1, 2)]
    keep = heads.mask_from_heads(model, removed)
    fill = torch.randn(2, 4, 16) * 3
    zeroed = generation.run_generation(problems, tmp_path / "m", settings, "transformers", keep=keep)
    filled = generation.run_generation(problems, tmp_path / "m", settings, "transformers", keep=keep, fill=fill)
    loaded, _ = models.load_model(tmp_path / "m")
    table = generation.prompt_table(problems, tok, settings, 4096)
    with heads.head_intervention(loaded, keep, fill):
        want = generation.generate_transformers(loaded, tok, table, settings)
    assert filled["completion_ids"].to_list() == want["completion_ids"].to_list()
    assert filled["completion_ids"].to_list() != zeroed["completion_ids"].to_list()

    delta = torch.zeros(2, 4).numpy()
    limits = Limits(timeout_s=5, cpu_s=5)
    _, rows = pruned.pruned_eval(problems, tmp_path / "m", settings, "transformers", None, limits, 1, [1],
                                 [{"kind": "top_k", "k": 1}], delta, None, regenerate_baseline=True)
    assert rows["regime"].to_list() == ["none", "top_k(k=1)"]
    assert rows["n_removed"].to_list() == [0, 1] and rows["n_samples"].to_list() == [2, 2]
