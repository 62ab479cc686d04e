"""Generated counterfactual pairs: seeded, byte-identical, one opener apart, answers that close the line."""

import ast
import io

import polars as pl
import pytest

from codeinterp.benchmarks.counterfactual import bracket_structure, closers_for, generate
from codeinterp.errors import ConfigError

DATA = "data"


def _spec(task, **kw):
    return {"benchmark": task, "pairs": 12, "max_depth": 6, "seed": 0, **kw}


def _bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, statistics=False)
    return buf.getvalue()


@pytest.mark.parametrize("task", ["brackets", "variable_binding"])
def test_same_seed_same_bytes(task):
    a, b = generate(_spec(task), DATA), generate(_spec(task), DATA)
    assert _bytes(a) == _bytes(b)
    assert _bytes(a) != _bytes(generate(_spec(task, seed=1), DATA))


def test_corrupted_prompt_has_one_more_open_bracket():
    df = generate(_spec("brackets"), DATA)
    assert set(df["source"]) == {"template", "code", "benchmark"}
    assert sorted(set(df.filter(pl.col("source") == "template")["depth"])) == [1, 2, 3, 4, 5, 6]
    for r in df.iter_rows(named=True):
        opens, _ = bracket_structure(r["clean_prompt"])
        assert r["depth"] == len(opens) and r["open_chars"] == opens
        assert r["clean_answer"].startswith(closers_for(r["clean_prompt"]))
        for corrupt in r["corrupt_candidates"]:
            assert len(bracket_structure(corrupt)[0]) == r["depth"] + 1, (r["pair_id"], corrupt)
            assert r["corrupt_answer"] == ")" + r["clean_answer"]
        assert all(r["clean_prompt"][c] in "([{" for c in r["open_chars"])
        assert all(r["clean_prompt"][c] in "()[]{}" for c in r["closed_chars"])


@pytest.mark.parametrize("source", ["template", "code"])
def test_prompt_plus_answer_is_python(source):
    df = generate(_spec("brackets", sources=[source]), DATA)
    for r in df.iter_rows(named=True):
        ast.parse(r["clean_prompt"] + r["clean_answer"])
        ast.parse(r["corrupt_candidates"][0] + r["corrupt_answer"])


def test_benchmark_lines_continue_as_the_source_does():
    df = generate(_spec("brackets", sources=["benchmark"], pairs=30), DATA)
    assert len(df) == 30 and (df["n_closed"] > 0).any()
    for r in df.iter_rows(named=True):
        line = (r["clean_prompt"] + r["clean_answer"]).splitlines()[-1]
        assert not bracket_structure(line + "\n")[0], line  # the answer closes every bracket


def test_variable_binding_answers_follow_the_binding():
    df = generate(_spec("variable_binding"), DATA)
    assert set(df["kind"]) == {"swap", "rename"} and set(df["source"]) == {"return", "call"}
    for r in df.iter_rows(named=True):
        want = r["clean_prompt"].split("# ")[-1].split()[1]  # "# return items[0]" -> items[0]
        for prompt, answer in ((r["clean_prompt"], r["clean_answer"]), (r["corrupt_candidates"][0], r["corrupt_answer"])):
            assert f"    {answer.strip()} = {want}\n" in prompt
        assert r["clean_answer"].strip()[0] != r["corrupt_answer"].strip()[0]


def test_bad_keys_are_one_line():
    with pytest.raises(ConfigError, match="datasets.sources: call not a source of brackets"):
        generate(_spec("brackets", sources=["call"]), DATA)
    with pytest.raises(ConfigError, match="not a generated task"):
        generate(_spec("mbpp"), DATA)
