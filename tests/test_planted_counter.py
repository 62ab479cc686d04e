"""The hand-built bracket counter (tests/planted_counter.py): first the fixture itself (its answers
hold by construction), then the causal methods against the path planted in it."""

import numpy as np
import polars as pl
import pytest
import torch

from codeinterp.access.hooks import capture, check_decomposition, edit_site
from codeinterp.causal.pairs import PAIR_COLUMNS, logit_diff, make_pair_batch, read_pairs
from planted_counter import (C, COUNT, COUNT_GAIN, N_HEADS, N_LAYERS, PLANTED_HEAD, build_counter_model,
                             counter_pairs, open_pairs, write_pairs)


@pytest.fixture(scope="module")
def counter():
    return build_counter_model()


@pytest.fixture(scope="module")
def pairs(counter, tmp_path_factory):
    _, tok = counter
    path = write_pairs(counter_pairs(tok), tmp_path_factory.mktemp("planted") / "pairs.parquet")
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
