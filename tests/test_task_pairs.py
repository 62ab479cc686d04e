"""Pairs at the level of a tokenizer: equal lengths, the first differing answer tokens, drop reasons."""

import polars as pl
import pytest

from codeinterp.access.models import byte_tokenizer
from codeinterp.benchmarks.counterfactual import SCHEMA, generate
from codeinterp.benchmarks.task_pairs import tokenise_pairs
from codeinterp.causal.pairs import PAIR_COLUMNS, read_pairs
from codeinterp.errors import ConfigError


def _candidate(clean, answer, corrupts, corrupt_answer, diff=(0, 1)):
    return {"pair_id": "t/x/0000", "task": "brackets", "source": "code", "kind": ")", "depth": 1, "n_closed": 0,
            "clean_prompt": clean, "clean_answer": answer, "corrupt_candidates": corrupts,
            "corrupt_answer": corrupt_answer, "diff_start": diff[0], "diff_end": diff[1], "open_chars": [],
            "closed_chars": []}


def test_byte_tokenizer_decides_at_the_line_end(tmp_path):
    """Every `)` is its own token: the answers share `))` and differ at newline versus `)`."""
    tok = byte_tokenizer()
    rows = [_candidate("f(g(a.b", "))\n", ["f(g(a(b"], ")))\n", (5, 6))]
    table = tokenise_pairs(pl.DataFrame(rows, schema=SCHEMA), tok)
    r = table.row(0, named=True)
    assert r["kept"] and r["answer_prefix"] == "))"
    prompt = tok("f(g(a.b", add_special_tokens=False)["input_ids"]
    assert r["clean_ids"][-len(prompt) - 2:] == prompt + tok("))", add_special_tokens=False)["input_ids"]
    assert len(r["corrupt_ids"]) == len(r["clean_ids"])
    assert r["clean_token_text"] == "\n" and r["corrupt_token_text"] == ")"
    assert [i for i, (a, b) in enumerate(zip(r["clean_ids"], r["corrupt_ids"])) if a != b] == [r["span_start"]]
    path = tmp_path / "pairs.parquet"
    table.write_parquet(path)
    (pair,) = read_pairs(path)
    assert pair.clean_token != pair.corrupt_token and pair.length == len(r["clean_ids"])


def test_drop_reasons():
    tok = byte_tokenizer()
    rows = [
        _candidate("f(a.b", ")\n", ["f(a((b"], "))\n"),  # lengths differ
        _candidate("f(a", ")\n", ["f(b"], ")\n"),  # same answers
    ]
    table = tokenise_pairs(pl.DataFrame(rows + [_candidate("f(a.b", ")\n", ["f(a(b"], "))\n")], schema=SCHEMA), tok)
    assert table["kept"].to_list() == [False, False, True]
    assert "as many tokens" in table["drop_reason"][0] and "no differing token" in table["drop_reason"][1]
    with pytest.raises(ConfigError, match="datasets.brackets: no pair is usable"):
        tokenise_pairs(pl.DataFrame(rows, schema=SCHEMA), tok, "brackets")


@pytest.mark.parametrize("task", ["brackets", "variable_binding"])
def test_generated_pairs_tokenise(task):
    tok = byte_tokenizer()
    table = tokenise_pairs(generate({"benchmark": task, "pairs": 10, "max_depth": 4, "seed": 0}, "data"), tok)
    assert list(table.columns) == list(PAIR_COLUMNS)
    kept = table.filter(pl.col("kept"))
    assert len(kept) >= len(table) // 2
    for r in kept.iter_rows(named=True):
        assert len(r["clean_ids"]) == len(r["corrupt_ids"]) and r["clean_token"] != r["corrupt_token"]
        differ = [i for i, (a, b) in enumerate(zip(r["clean_ids"], r["corrupt_ids"])) if a != b]
        assert differ and r["span_start"] <= differ[0] and differ[-1] < r["span_end"]
        assert all(tok.decode([r["clean_ids"][p]]) in "([{" for p in r["open_positions"])
