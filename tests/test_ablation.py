import math

import numpy as np
import polars as pl
import pytest
import torch

import handbuilt
from codeinterp.analyses import ablation
from codeinterp.access import heads
from codeinterp.access.scoring import Target, code_losses, make_batch
from codeinterp.access.sites import head_out_proj, layout

from handbuilt import build_one_head_model, one_head_targets


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models gain nothing from threads, and an OpenMP pool on a busy machine costs
    # tens of milliseconds per op.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_targets(tok):
    return handbuilt.snippet_targets(tok, 4)


@pytest.fixture(scope="module")
def one_head():
    return {arch: build_one_head_model(arch) for arch in ("llama", "qwen2", "gpt2")}


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_fast_sweep_equals_naive_for_every_head(tiny, kind):
    model, tok = tiny
    targets = make_targets(tok)
    naive = ablation.naive_head_ablation(model, targets, kind, batch_size=3)
    fast = ablation.head_ablation(model, targets, kind, batch_size=3, heads_per_pass=3)
    n_layers, n_heads = heads.full_mask(model).shape
    assert fast.schema == pl.Schema(ablation.ABLATION_SCHEMA)
    assert fast.height == n_layers * n_heads * len(targets)
    assert fast.select("layer", "head", "ablation", "target_id").equals(naive.select("layer", "head", "ablation", "target_id"))
    for col in ("base_loss", "ablated_loss", "delta"):
        assert (fast[col] - naive[col]).abs().max() < 1e-4, col
    assert np.abs(ablation.delta_matrix(fast) - ablation.delta_matrix(naive)).max() < 1e-4
    assert ablation.delta_matrix(fast).shape == (n_layers, n_heads)
    assert (naive["delta"].abs() > 1e-4).any()  # the check is not vacuous


def test_heads_per_pass_and_batch_size_do_not_change_results(tiny):
    model, tok = tiny
    targets = make_targets(tok)
    a = ablation.head_ablation(model, targets, "zero", batch_size=4, heads_per_pass=4)
    b = ablation.head_ablation(model, targets, "zero", batch_size=1, heads_per_pass=1)
    assert (a["delta"] - b["delta"]).abs().max() < 1e-5
    again = ablation.head_ablation(model, targets, "zero", batch_size=4, heads_per_pass=4)
    assert again.equals(a)  # deterministic


def test_base_loss_equals_code_losses(tiny):
    model, tok = tiny
    targets = make_targets(tok)
    df = ablation.head_ablation(model, targets, "zero", batch_size=4).filter((pl.col("layer") == 0) & (pl.col("head") == 0))
    with torch.no_grad():
        ref = code_losses(model, make_batch(targets, 0))
    got = dict(zip(df["target_id"], df["base_loss"]))
    for t, value in zip(targets, ref.tolist()):
        assert got[t.target_id] == pytest.approx(value, abs=1e-5)


def test_run_from_layer_matches_model_forward(tiny):
    model, tok = tiny
    b = make_batch(make_targets(tok), 0)
    with torch.no_grad():
        out = (model.model if hasattr(model, "model") else model.transformer)(
            input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True
        )
        runner = ablation.BlockRunner(model, b.attention_mask)
        emb = runner.embed(b.input_ids)
        lay = layout(model)
        for start in range(len(lay.blocks)):
            resid = out.hidden_states[start] if start else emb
            got = lay.final_norm(ablation.run_from_layer(model, resid, start, b.attention_mask))
            real = b.attention_mask.bool()
            assert torch.allclose(got[real], out.last_hidden_state[real], atol=1e-5)
        # several copies of the batch on the batch axis
        got = ablation.run_from_layer(model, emb.repeat(3, 1, 1), 0, b.attention_mask)
        assert torch.allclose(lay.final_norm(got[-len(b.target_ids):])[real], out.last_hidden_state[real], atol=1e-5)


def test_last_block_restricted_to_scored_positions(tiny):
    model, tok = tiny
    b = make_batch(make_targets(tok), 0)
    runner = ablation.BlockRunner(model, b.attention_mask)
    assert runner.can_restrict_last_block()
    with torch.no_grad():
        x = runner.run(runner.embed(b.input_ids), 0, runner.n_layers - 1)
        full = runner.block(runner.n_layers - 1, x)[b.rows, b.positions]
        part = runner.last_block_at(x, b.rows, b.positions)
    assert torch.allclose(full, part, atol=1e-5)


def test_mean_head_outputs_is_mean_over_real_positions(tiny):
    model, tok = tiny
    targets = make_targets(tok)
    lay = layout(model)
    got = ablation.mean_head_outputs(model, targets, batch_size=3)
    assert got.shape == (len(lay.blocks), lay.n_heads, lay.head_dim)
    sums = torch.zeros(len(lay.blocks), lay.n_heads * lay.head_dim, dtype=torch.float64)
    n = 0
    for t in targets:  # one unpadded sequence at a time
        seen = {}
        hooks = [
            head_out_proj(model, l).register_forward_pre_hook(lambda m, a, l=l: seen.__setitem__(l, a[0]))
            for l in range(len(lay.blocks))
        ]
        try:
            with torch.no_grad():
                model(input_ids=torch.tensor([t.input_ids]))
        finally:
            for h in hooks:
                h.remove()
        for l in range(len(lay.blocks)):
            sums[l] += seen[l][0].double().sum(0)
        n += len(t.input_ids)
    ref = (sums / n).float().view_as(got)
    assert torch.allclose(got, ref, atol=1e-5)
    scored = ablation.mean_head_outputs(model, targets, batch_size=3, scope="scored")
    assert not torch.allclose(scored, got, atol=1e-4)


def test_sweep_streams_batches(tiny, monkeypatch):
    """At most batch_size targets (times heads_per_pass copies) are ever in a forward."""
    model, tok = tiny
    targets = make_targets(tok) * 2
    targets = [Target(f"{t.target_id}_{i}", t.input_ids, t.code_start, t.code_end) for i, t in enumerate(targets)]
    seen_embed, seen_rows = [], []
    embed, block = ablation.BlockRunner.embed, ablation.BlockRunner.block

    def spy_embed(self, ids):
        seen_embed.append(ids.shape[0])
        return embed(self, ids)

    def spy_block(self, layer, resid):
        seen_rows.append(resid.shape[0])
        return block(self, layer, resid)

    monkeypatch.setattr(ablation.BlockRunner, "embed", spy_embed)
    monkeypatch.setattr(ablation.BlockRunner, "block", spy_block)
    df = ablation.head_ablation(model, targets, "zero", batch_size=3, heads_per_pass=2)
    assert seen_embed == [3, 3, 2]  # 8 targets, streamed in 3 batches
    assert max(seen_rows) <= 3 * 2
    assert df["target_id"].n_unique() == 8


def test_knockout_equals_separate_masked_runs(tiny):
    model, tok = tiny
    targets = make_targets(tok)
    ranking = [(2, 1), (0, 3), (1, 0), (0, 0), (2, 2)]
    df = ablation.knockout(model, targets, ranking, batch_size=3, steps_per_pass=4)
    assert df.schema == pl.Schema(ablation.KNOCKOUT_SCHEMA)
    assert df["k"].to_list() == list(range(len(ranking) + 1))
    assert df["layer"][0] is None and df["head"][0] is None
    assert list(zip(df["layer"][1:], df["head"][1:])) == ranking
    b = make_batch(targets, 0)
    for k in range(len(ranking) + 1):
        with torch.no_grad():
            ref = code_losses(model, b, heads.mask_from_heads(model, ranking[:k])).mean().item()
        assert df["loss"][k] == pytest.approx(ref, abs=1e-5)


def test_knockout_mean_fill(tiny):
    model, tok = tiny
    targets = make_targets(tok)
    ranking = [(1, 1), (0, 2)]
    fill = ablation.mean_head_outputs(model, targets, 2)
    df = ablation.knockout(model, targets, ranking, batch_size=2, kind="mean", steps_per_pass=2)
    with torch.no_grad():
        ref = code_losses(model, make_batch(targets, 0), heads.mask_from_heads(model, ranking), fill).mean().item()
    assert df["loss"][2] == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_hand_built_head_is_found(one_head, arch, kind):
    model, tok, known = one_head[arch]
    targets = one_head_targets(tok)
    deltas = ablation.delta_matrix(ablation.head_ablation(model, targets, kind, batch_size=2))
    ranked = ablation.ranking_from_deltas(deltas, most_first=True)
    assert ranked[0] == known
    others = np.delete(deltas.ravel(), known[0] * deltas.shape[1] + known[1])
    # Mean ablation keeps the average token vector (a unigram prior), so it hurts less.
    assert deltas[known] > (1.0 if kind == "zero" else 0.3)
    assert np.abs(others).max() < 1e-4  # the others contribute nothing at all


def test_hand_built_knockout_curves(one_head):
    model, tok, known = one_head["llama"]
    targets = one_head_targets(tok)
    deltas = ablation.delta_matrix(ablation.head_ablation(model, targets, "zero", batch_size=3))
    curves = ablation.knockout_curves(model, targets, deltas, batch_size=3, steps_per_pass=16)
    n = deltas.size
    assert curves.height == 2 * (n + 1)
    most = curves.filter(pl.col("order") == "most_first").sort("k")
    least = curves.filter(pl.col("order") == "least_first").sort("k")
    jumps = np.diff(most["loss"].to_numpy())
    assert int(np.argmax(jumps)) == 0 and jumps[0] > 1.0
    assert (most["layer"][1], most["head"][1]) == known
    assert (least["layer"][n], least["head"][n]) == known  # least important first: the head goes last
    assert most["loss"][n] == pytest.approx(math.log(len(tok)), abs=1e-4)  # nothing left: uniform
    assert least["loss"][n - 1] == pytest.approx(least["loss"][0], abs=1e-5)


def test_ranking_ties_are_broken_by_layer_and_head():
    deltas = np.array([[0.5, 0.0], [0.5, 1.0]])
    assert ablation.ranking_from_deltas(deltas, True) == [(1, 1), (0, 0), (1, 0), (0, 1)]
    assert ablation.ranking_from_deltas(deltas, False) == [(0, 1), (0, 0), (1, 0), (1, 1)]


def test_bad_arguments_are_refused(tiny):
    model, tok = tiny
    targets = make_targets(tok)[:1]
    with pytest.raises(ValueError, match="kind"):
        ablation.head_ablation(model, targets, "resample", batch_size=1)
    with pytest.raises(ValueError, match="fill"):
        ablation.head_ablation(model, targets, "zero", batch_size=1, fill=torch.zeros(3, 4, 16))
    with pytest.raises(ValueError, match="repeats"):
        ablation.knockout(model, targets, [(0, 0), (0, 0)], batch_size=1)
    with pytest.raises(ValueError, match="outside"):
        ablation.knockout(model, targets, [(9, 0)], batch_size=1)


def test_knockout_every_is_a_subset_of_the_full_curve(tiny_models):
    model, tok = tiny_models["llama"]
    from codeinterp.analyses.ablation import knockout, ranking_from_deltas
    import numpy as np

    targets = make_targets(tok)
    ranking = ranking_from_deltas(np.arange(12, dtype=float).reshape(3, 4), most_first=True)
    full = knockout(model, targets, ranking, batch_size=2)
    sparse = knockout(model, targets, ranking, batch_size=2, every=5)
    assert sparse["k"].to_list() == [0, 5, 10, 12]
    want = full.filter(pl.col("k").is_in([0, 5, 10, 12]))
    assert np.allclose(sparse["loss"].to_numpy(), want["loss"].to_numpy(), atol=1e-5)
    assert sparse["head"].to_list()[1:] == want["head"].to_list()[1:]
