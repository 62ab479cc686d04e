"""The hand-built bracket counter (tests/planted_counter.py): first the fixture itself (its answers
hold by construction), then the causal methods against the path planted in it."""

import numpy as np
import polars as pl
import pytest
import torch

from codeinterp.access.hooks import capture, check_decomposition, edit_site
from codeinterp.causal.pairs import PAIR_COLUMNS, logit_diff, make_pair_batch, read_pairs
from codeinterp.uncertainty import Bootstrap
from planted_counter import (C, COUNT, COUNT_GAIN, MAIN_PATH, N_HEADS, N_LAYERS, PLANTED_HEAD, PLANTED_MLP,
                             PLANTED_PATH, build_counter_model, counter_pairs, expected_patching, open_pairs,
                             write_pairs)

PATCH = dict(corruptions=["counterfactual"], noise_scale=3.0, noise_samples=1, seed=0)


@pytest.fixture(scope="module")
def counter():
    return build_counter_model()


@pytest.fixture(scope="module")
def pairs(counter, tmp_path_factory):
    _, tok = counter
    path = write_pairs(counter_pairs(tok, n=8), tmp_path_factory.mktemp("planted") / "pairs.parquet")
    return read_pairs(path)


@pytest.fixture(scope="module")
def opened(counter, tmp_path_factory):
    _, tok = counter
    path = write_pairs(open_pairs(tok), tmp_path_factory.mktemp("planted") / "open.parquet")
    return read_pairs(path)


def _diffs(model, pairs):
    batch = make_pair_batch(pairs)
    with torch.no_grad():
        clean = logit_diff(model(input_ids=batch.clean, attention_mask=batch.mask).logits, batch)
        bad = logit_diff(model(input_ids=batch.corrupt, attention_mask=batch.mask).logits, batch)
    return clean, bad


def test_pairs_follow_the_pairs_table_format(counter):
    _, tok = counter
    for table in (counter_pairs(tok), open_pairs(tok)):
        assert table.columns == list(PAIR_COLUMNS) and table["kept"].all()
        assert table["depth"].n_unique() == 4 and table["n_closed"].n_unique() == 4
        for r in table.iter_rows(named=True):
            clean, bad = np.array(r["clean_ids"]), np.array(r["corrupt_ids"])
            assert clean.shape == bad.shape
            differ = np.nonzero(clean != bad)[0]
            assert differ.min() >= r["span_start"] and differ.max() < r["span_end"]
            text = r["clean_prompt"]
            assert [text[i] for i in r["open_positions"]] == ["("] * r["depth"]
            assert len(r["closed_positions"]) == 2 * r["n_closed"]
            assert tok.decode([r["clean_token"]]) == r["clean_token_text"]
    main = counter_pairs(tok)
    assert (main["span_end"] - main["span_start"] == 1).all()  # one filler became `(`
    assert (main["clean_token_text"] == "\n").all() and (main["corrupt_token_text"] == ")").all()
    assert counter_pairs(tok).equals(counter_pairs(tok)) and not counter_pairs(tok, seed=1).equals(main)


def test_the_model_is_right_on_every_clean_and_corrupted_prompt(counter, pairs, opened):
    model, _ = counter
    for group in (pairs, opened):
        clean, bad = _diffs(model, group)
        assert (clean > 1).all() and (bad < -1).all()


def test_the_planted_head_writes_the_still_open_count(counter, pairs):
    """COUNT at the last position = COUNT_GAIN * 8/sqrt(C^2+1) * (openers - closers) / T."""
    model, _ = counter
    batch = make_pair_batch(pairs)
    k = COUNT_GAIN * 8 / np.sqrt(C**2 + 1)
    for ids, still_open in ((batch.clean, 0), (batch.corrupt, 1)):
        with torch.no_grad(), capture(model, ["attn.0"]) as got:
            model(input_ids=ids, attention_mask=batch.mask)
        count = got["attn.0"][0][torch.arange(len(batch)), batch.last, COUNT]
        want = torch.tensor([k * still_open / p.length for p in pairs], dtype=torch.float32)
        torch.testing.assert_close(count, want, atol=1e-5, rtol=1e-4)
    # The GQA trap is live: head 3 shares the planted head's KV head, so its z (the o_proj
    # input) is the same nonzero value; only its zero output weights keep it out of the answer.
    with torch.no_grad(), capture(model, ["head.0"]) as got:
        model(input_ids=batch.corrupt, attention_mask=batch.mask)
    z = got["head.0"][0]
    assert torch.equal(z[..., 3, :], z[..., 2, :]) and z[..., 3, :].abs().max() > 0.5


def _zero_head(h):
    def fn(z):
        z = z.clone()
        z[..., h, :] = 0
        return z
    return fn


def test_zeroing_the_planted_head_destroys_the_logit_difference_and_no_other_head_matters(counter, pairs):
    model, _ = counter
    clean, bad = _diffs(model, pairs)
    layer, head = PLANTED_HEAD
    with edit_site(model, f"head.{layer}", _zero_head(head)):
        clean0, bad0 = _diffs(model, pairs)
    assert (clean - bad).min() > 10
    assert (clean0 - bad0).abs().max() < 1e-4  # no count: the corrupted run answers as the clean one
    torch.testing.assert_close(clean0, clean, atol=1e-4, rtol=0)
    for l in range(N_LAYERS):
        for h in range(N_HEADS):
            if (l, h) == PLANTED_HEAD:
                continue
            with edit_site(model, f"head.{l}", _zero_head(h)):
                c, b = _diffs(model, pairs)
            assert torch.equal(c, clean) and torch.equal(b, bad), (l, h)


def test_the_sites_add_up(counter, pairs):
    model, _ = counter
    batch = make_pair_batch(pairs)
    check_decomposition(model, batch.clean, batch.mask)
    check_decomposition(model, batch.corrupt, batch.mask)


# Cross-method checks: each method, used through its public functions, against the planted path.

def test_activation_patching_localises_the_planted_head_and_positions(counter, pairs):
    """Denoising, every site: each (site, layer, position) and head gives the value
    `expected_patching` derives from the construction. Exact, except mlp.1 at the last position,
    which restores the closer but not the head's weak direct read of COUNT: a little below 1."""
    patching = pytest.importorskip("codeinterp.causal.patching")
    model, tok = counter
    table = patching.sweep(model, pairs, kinds=["resid", "attn", "mlp", "head"], directions=["denoising"], window=1,
                           batch_size=64, **PATCH)
    rows = {r["pair_id"]: r for r in counter_pairs(tok, n=8).iter_rows(named=True)}
    seen = set()
    for r in table.iter_rows(named=True):
        want = expected_patching(rows[r["pair_id"]])
        where = (r["site"], r["layer"], r["head"] if r["site"] == "head" else r["position"])
        seen.add(where[:2])
        last = r["position"] == len(rows[r["pair_id"]]["clean_ids"]) - 1
        if r["site"] == "mlp" and r["layer"] == PLANTED_MLP and last:
            assert 0.95 < r["normalised"] < 1 - 1e-4, r
        else:
            assert abs(r["normalised"] - want[where]) < 1e-4, (r, want[where])
    assert len(seen) == 3 + 2 + 2 + 2  # every resid, attn, mlp and head layer was patched
    # Noising: writing the corrupted output of the planted head into the clean run gives the
    # corrupted run (0); any other head leaves the clean run (1).
    noising = patching.sweep(model, pairs, kinds=["head"], directions=["noising"], window=1, batch_size=64, **PATCH)
    planted = (pl.col("layer") == PLANTED_HEAD[0]) & (pl.col("head") == PLANTED_HEAD[1])
    assert noising.filter(planted)["normalised"].abs().max() < 1e-4
    assert (noising.filter(~planted)["normalised"] - 1).abs().max() < 1e-4


def test_attribution_patching_ranks_the_planted_head_first(counter, pairs):
    """Every other head's output is multiplied by zero output weights: its gradient is 0, so its
    estimate is the corrupted run exactly; the planted head's estimate is large."""
    attribution = pytest.importorskip("codeinterp.causal.attribution")
    model, _ = counter
    approx = attribution.estimate(model, pairs, kinds=["head"], directions=["denoising"], batch_size=8, **PATCH)
    by_head = approx.group_by("layer", "head").agg(pl.col("normalised").mean()).sort("normalised", descending=True)
    assert by_head.row(0)[:2] == PLANTED_HEAD and by_head["normalised"][0] > 0.5
    assert by_head["normalised"][1:].abs().max() < 1e-6


def test_eap_ig_finds_exactly_the_planted_path(counter, pairs):
    """The edges whose upstream output differs between the runs and whose downstream node is read
    at the last position are those of PLANTED_PATH; all other edges score 0. At a 0.9 target the
    smallest circuit is the three strong edges (input -> L0H2 -> MLP1 -> logits; the weak direct
    L0H2 -> logits edge carries about 1% of the gap), and with the direct edge it is the whole
    model's behaviour (faithfulness 1)."""
    circuit = pytest.importorskip("codeinterp.causal.circuit")
    model, _ = counter
    curve, edges = circuit.discover(model, pairs, steps=3, target=0.9, sizes=12, batch_size=8,
                                    boot=Bootstrap(100, 0.95, 0))
    kept = set(edges.filter(pl.col("in_circuit")).select("upstream", "downstream").rows())
    assert kept == MAIN_PATH
    chosen = curve.filter(pl.col("chosen")).row(0, named=True)
    assert chosen["edges"] == 3 and 0.95 < chosen["faithfulness"] < 1 - 1e-4
    ranked = edges.sort("rank")
    assert set(ranked.head(4).select("upstream", "downstream").rows()) == PLANTED_PATH
    assert ranked["score"][4:].abs().max() < 1e-6
    four = curve.filter(pl.col("edges") == 4)
    assert len(four) and (four["faithfulness"] - 1).abs().max() < 1e-4


def test_head_roles_flags_the_planted_head_as_counting_open_brackets(counter, opened):
    """On prompts ending with `depth` open brackets (fixed length), the planted head's direct
    read writes k * depth / T along `)` minus `\\n`: it counts the open brackets (rho with depth
    near 1), not the closed pairs (depth and n_closed vary independently), and promotes the
    right closer. Every other head writes nothing, so none is flagged."""
    head_roles = pytest.importorskip("codeinterp.causal.head_roles")
    model, _ = counter
    table = head_roles.head_roles(model, opened, 8, 1, Bootstrap(200, 0.95, 0))
    assert table.filter(pl.col("counting")).select("layer", "head").rows() == [PLANTED_HEAD]
    assert table.filter(pl.col("promotes")).select("layer", "head").rows() == [PLANTED_HEAD]
    row = table.filter((pl.col("layer") == PLANTED_HEAD[0]) & (pl.col("head") == PLANTED_HEAD[1])).row(0, named=True)
    assert row["rho_depth_ci_low"] > 0.5 and row["dla_ci_low"] > 0
    assert row["rho_n_closed_ci_low"] < 0 < row["rho_n_closed_ci_high"]
    assert (table["n"] == len(opened)).all()


def test_head_roles_flags_nothing_where_no_head_writes_along_the_closer_direction(counter, tmp_path):
    """On the main pairs the clean prompts end balanced (answer prefix appended), so the planted
    head's COUNT, and with it every head's direct logit attribution, is exactly 0 on every clean
    prompt: no head can track a count there. Projections of about 1e-9 logits, the float rounding
    of a sum of +k and -k terms, once made head_roles flag the planted head as counting
    (rho_depth = -0.8, interval low end -0.96); below the residual stream's resolution they read
    as 0."""
    head_roles = pytest.importorskip("codeinterp.causal.head_roles")
    model, tok = counter
    main = read_pairs(write_pairs(counter_pairs(tok, n=24), tmp_path / "pairs.parquet"))
    table = head_roles.head_roles(model, main, 8, 1, Bootstrap(200, 0.95, 0))
    assert table["dla"].abs().max() < 1e-6  # the known answer: nothing along the closer direction
    assert not table["counting"].any() and not table["promotes"].any()
