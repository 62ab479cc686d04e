"""Generated counterfactual pairs: seeded, byte-identical, one opener apart, answers that close the line."""

import ast
import io
import tokenize

import polars as pl
import pytest

from codeinterp.benchmarks.counterfactual import bracket_structure, diff_region, extra_openers, generate
from codeinterp.errors import ConfigError

DATA = "data"


def _spec(task, **kw):
    return {"benchmark": task, "pairs": 12, "max_depth": 6, "seed": 0, **kw}


def _bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_parquet(buf, statistics=False)
    return buf.getvalue()


def _offers(r):
    """(prompt, answer, diff_start, diff_end) of the corrupted prompt and every alternative."""
    first = (r["corrupt_prompt"], r["corrupt_answer"], r["diff_start"], r["diff_end"])
    return [first] + [(a["prompt"], a["answer"], a["diff_start"], a["diff_end"]) for a in r["alternatives"]]


def _unmatched_openers(code: str) -> int:
    """Openers left open on the last line, counted independently of the generator's helper."""
    line = code.splitlines()[-1].strip()
    depth = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(line).readline):
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
    except tokenize.TokenError:
        pass
    return depth


@pytest.mark.parametrize("task", ["brackets", "variable_binding"])
def test_same_seed_same_bytes(task):
    a, b = generate(_spec(task), DATA), generate(_spec(task), DATA)
    assert _bytes(a) == _bytes(b)
    assert _bytes(a) != _bytes(generate(_spec(task, seed=1), DATA))


def test_pair_ids_name_the_dataset():
    df = generate(_spec("brackets", sources=["template"], pairs=3), DATA, "study")
    assert df["pair_id"].to_list() == ["study/template/0000", "study/template/0001", "study/template/0002"]


def test_every_corruption_adds_exactly_one_opener():
    df = generate(_spec("brackets"), DATA)
    assert set(df["source"]) == {"template", "code", "benchmark"}
    assert sorted(set(df.filter(pl.col("source") == "template")["depth"])) == [1, 2, 3, 4, 5, 6]
    assert (df.filter(pl.col("source") == "code")["n_closed"] > 0).any()
    for r in df.iter_rows(named=True):
        assert r["depth"] == _unmatched_openers(r["clean_prompt"]) == len(r["open_chars"])
        assert all(r["clean_prompt"][c] in "([{" for c in r["open_chars"])
        assert all(r["clean_prompt"][c] in "()[]{}" for c in r["closed_chars"])
        assert len(r["closed_chars"]) == 2 * r["n_closed"]
        for prompt, answer, start, end in _offers(r):
            assert _unmatched_openers(prompt) == r["depth"] + 1, (r["pair_id"], prompt)
            # one more closer than the clean answer, the rest of the line unchanged
            closers = len(r["clean_answer"]) - len(r["clean_answer"].lstrip(")]}"))
            assert len(answer) - len(answer.lstrip(")]}")) == closers + 1
            assert answer.lstrip(")]}") == r["clean_answer"][closers:]
            # outside the marked region the two prompts agree
            assert r["clean_prompt"][:start] == prompt[:start]
            assert r["clean_prompt"][end:] == prompt[len(prompt) - (len(r["clean_prompt"]) - end):]


@pytest.mark.parametrize("source", ["template", "code"])
def test_prompt_plus_answer_is_python(source):
    df = generate(_spec("brackets", sources=[source]), DATA)
    for r in df.iter_rows(named=True):
        ast.parse(r["clean_prompt"] + r["clean_answer"])
        for prompt, answer, _, _ in _offers(r):
            ast.parse(prompt + answer)


def test_published_template():
    df = generate(_spec("brackets", sources=["template"], pairs=3, max_depth=3), DATA)
    r = df.row(2, named=True)
    num = r["clean_prompt"].split()[3]
    assert r["clean_prompt"] == f"#print the string {num}\nprint(str(str({num}"
    assert r["clean_answer"] == ")))\n" and r["corrupt_answer"] == "))))\n"
    assert r["corrupt_prompt"] == f"#print the string {num}\nprint(str(str(({num}"


def test_benchmark_lines_continue_as_the_source_does():
    df = generate(_spec("brackets", sources=["benchmark"], pairs=30), DATA)
    assert len(df) == 30 and (df["n_closed"] > 0).any()
    for r in df.iter_rows(named=True):
        line = (r["clean_prompt"] + r["clean_answer"]).splitlines()[-1]
        assert _unmatched_openers(line) == 0, line  # the answer closes every bracket on the line
        assert r["clean_prompt"].count("\n") <= 6  # a few lines of context, then the cut line


def test_extra_openers_skip_strings_and_prefer_local_edits():
    clean = 'f(x, "a b", y.z'
    offers = [p for p, _ in extra_openers(clean)]
    assert offers[0] == 'f(x, "a b", y(z'  # the dot nearest the cut
    assert 'f(x, "a(b", y.z' not in offers  # a bracket in a string opens nothing
    assert all(_unmatched_openers(p) == 2 for p in offers)
    assert diff_region(clean, offers[0]) == (13, 14)
    assert diff_region("f(x", "f((x") == (1, 2)  # an inserted opener marks the one it doubles


def test_variable_binding_answers_follow_the_binding():
    df = generate(_spec("variable_binding"), DATA)
    assert set(df["kind"]) == {"swap", "rename"} and set(df["source"]) == {"return", "call"}
    for r in df.iter_rows(named=True):
        want = r["clean_prompt"].split("# ")[-1].split()[1]  # "# return items[0]" -> items[0]
        assert f"    {r['clean_answer'].strip()} = {want}\n" in r["clean_prompt"]
        for prompt, answer, _, _ in _offers(r):
            assert f"    {answer.strip()} = {want}\n" in prompt
            assert r["clean_answer"].strip()[0] != answer.strip()[0]
            assert prompt.endswith(r["clean_prompt"].splitlines()[-1])


def test_bad_keys_are_one_line():
    cases = [
        (_spec("brackets", sources=["call"]), "datasets.sources: call not a source of brackets"),
        (_spec("mbpp"), "not a generated task"),
        (_spec("brackets", pairs=0), "datasets.pairs: 0 is not an integer from 1"),
        (_spec("brackets", max_depth="6"), "datasets.max_depth"),
        (_spec("brackets", limit=3), "datasets.limit: selects benchmark problems"),
        (_spec("brackets", depth=3), "datasets.depth: not a key of a generated task"),
    ]
    for spec, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            generate(spec, DATA)
        assert "\n" not in str(err.value)
    generate(_spec("brackets", sources=["template"], limit=None, ids=None, sample=None, split=None), DATA)
