"""Pairs at the level of a tokenizer: equal lengths, the first differing answer tokens, drop reasons."""

import string

import polars as pl
import pytest
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from codeinterp.access.models import byte_tokenizer
from codeinterp.benchmarks.counterfactual import SCHEMA, diff_region, generate
from codeinterp.benchmarks.task_pairs import Encoder, tokenise_pairs
from codeinterp.causal.pairs import PAIR_COLUMNS, read_pairs
from codeinterp.errors import ConfigError


def merging_tokenizer():
    """Characters, plus `()`, `((` and `))` merged (in that order of rank), as many BPE code
    vocabularies do."""
    vocab = {c: i for i, c in enumerate(sorted(set(string.printable)))}
    merges = [("(", ")"), ("(", "("), (")", ")")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def _candidate(clean, answer, corrupts):
    """One text-level row; `corrupts`: (prompt, answer) offers, the preferred first."""
    (first, wrong), *rest = corrupts
    start, end = diff_region(clean, first)
    alternatives = [{"prompt": p, "answer": a, **dict(zip(("diff_start", "diff_end"), diff_region(clean, p)))}
                    for p, a in rest]
    return {"pair_id": "t/code/0000", "task": "brackets", "source": "code", "kind": ")", "depth": 1, "n_closed": 0,
            "clean_prompt": clean, "corrupt_prompt": first, "clean_answer": answer, "corrupt_answer": wrong,
            "diff_start": start, "diff_end": end, "open_chars": [], "closed_chars": [], "alternatives": alternatives}


def _table(rows, tok, dataset="dataset"):
    return tokenise_pairs(pl.DataFrame(rows, schema=SCHEMA), tok, dataset)


def test_byte_tokenizer_decides_at_the_line_end(tmp_path):
    """Every `)` is its own token: the answers share `))` and differ at newline versus `)`."""
    tok = byte_tokenizer()
    table = _table([_candidate("f(g(a.b", "))\n", [("f(g(a(b", ")))\n")])], tok)
    r = table.row(0, named=True)
    assert r["kept"] and r["answer_prefix"] == "))" and r["drop_reason"] == ""
    prompt = Encoder(tok).ids("f(g(a.b")
    assert r["clean_ids"] == prompt + tok("))", add_special_tokens=False)["input_ids"]
    assert len(r["corrupt_ids"]) == len(r["clean_ids"])
    assert r["clean_token_text"] == "\n" and r["corrupt_token_text"] == ")"
    assert [i for i, (a, b) in enumerate(zip(r["clean_ids"], r["corrupt_ids"])) if a != b] == [r["span_start"]]
    assert r["span_end"] == r["span_start"] + 1
    path = tmp_path / "pairs.parquet"
    table.write_parquet(path)
    (pair,) = read_pairs(path)
    assert pair.clean_token != pair.corrupt_token and pair.length == len(r["clean_ids"])


def test_merged_closers_compare_after_their_common_prefix():
    """`)))` is `))` + `)`: both answers start with the `))` token; then newline versus `)`."""
    tok = merging_tokenizer()
    r = _table([_candidate("f(g(a.b", "))\n", [("f(g(a(b", ")))\n")])], tok).row(0, named=True)
    assert r["kept"] and r["answer_prefix"] == "))"
    assert (r["clean_token_text"], r["corrupt_token_text"]) == ("\n", ")")
    assert len(r["clean_ids"]) == len(r["corrupt_ids"]) == len("f(g(a.b") + 1


def test_the_first_usable_offer_is_kept():
    """The preferred corrupted prompt ends in `(`, which merges with its answer's first `)`
    into `()`; the alternative lines up and is kept, with its own answer and region."""
    tok = merging_tokenizer()
    row = _candidate("f(a.b", ")\n", [("f(a.(", "))\n"), ("f(a(b", "))\n")])
    r = _table([row], tok).row(0, named=True)
    assert r["kept"] and r["corrupt_prompt"] == "f(a(b" and r["corrupt_answer"] == "))\n"
    assert (r["span_start"], r["span_end"]) == (3, 4)
    assert (r["clean_token_text"], r["corrupt_token_text"]) == (")", "))")  # `))` is one token


def test_drop_reasons():
    byte, merging = byte_tokenizer(), merging_tokenizer()
    cases = [
        (byte, _candidate("f(a.b", ")\n", [("f(a((b", "))\n")]), "as many tokens as the clean one"),
        (byte, _candidate("f(a", ")\n", [("f(b", ")\n")]), "no differing token"),
        (merging, _candidate("f(", ")\n", [("f((", "))\n")]), "clean answer merges with the clean prompt"),
        (merging, _candidate("f(a.b", ")\n", [("f(a.(", "))\n")]), "corrupted answer merges with the corrupted"),
    ]
    for tok, row, reason in cases:
        r = _table([row, _candidate("f(a.b", ")\n", [("f(a(b", "))\n")])], tok).row(0, named=True)
        assert not r["kept"] and reason in r["drop_reason"], (r["drop_reason"], reason)
        assert r["clean_token"] is None and r["corrupt_prompt"] == row["corrupt_prompt"]
        with pytest.raises(ConfigError, match=f"datasets.brackets: no pair is usable.*{reason}"):
            _table([row], tok, "brackets")


@pytest.mark.parametrize("task", ["brackets", "variable_binding"])
@pytest.mark.parametrize("tokenizer", ["byte", "merging"])
def test_generated_pairs_tokenise(task, tokenizer):
    tok = byte_tokenizer() if tokenizer == "byte" else merging_tokenizer()
    enc = Encoder(tok)
    candidates = generate({"benchmark": task, "pairs": 8, "max_depth": 4, "seed": 0}, "data", "set")
    table = _table(candidates.to_dicts(), tok)
    assert list(table.columns) == list(PAIR_COLUMNS)
    assert table["pair_id"].to_list() == candidates["pair_id"].to_list()
    for source in table["source"].unique():
        part = table.filter(pl.col("source") == source)
        assert part["kept"].mean() >= 0.75, (source, part["drop_reason"].to_list())
    for r in table.filter(pl.col("kept")).iter_rows(named=True):
        ids, bad = r["clean_ids"], r["corrupt_ids"]
        assert len(ids) == len(bad) and r["clean_token"] != r["corrupt_token"]
        prompt = enc.ids(r["clean_prompt"])
        assert ids[: len(prompt)] == prompt and enc.ids(r["corrupt_prompt"]) == bad[: len(prompt)]
        assert ids[len(prompt):] == bad[len(prompt):]
        assert tok.decode(ids[len(prompt):]) == r["answer_prefix"]
        b = len(enc.bos)
        assert (r["clean_prompt"] + r["clean_answer"]).startswith(tok.decode(ids[b:] + [r["clean_token"]]))
        assert (r["corrupt_prompt"] + r["corrupt_answer"]).startswith(tok.decode(bad[b:] + [r["corrupt_token"]]))
        differ = [i for i, (x, y) in enumerate(zip(ids, bad)) if x != y]
        assert differ and r["span_start"] <= differ[0] and differ[-1] < r["span_end"] <= len(prompt)
        opened = [tok.decode([ids[p]]) for p in r["open_positions"]]
        assert all(set(t) & set("([{") for t in opened)
        assert 1 <= len(opened) <= r["depth"] if task == "brackets" else not opened
        if tokenizer == "byte" and task == "brackets":
            assert len(opened) == r["depth"] and len(r["closed_positions"]) == 2 * r["n_closed"]
