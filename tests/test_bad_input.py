"""Bad input at scale (hypothesis): malformed sample files and programs fed to the entry
points give a one-line ConfigError naming the file, or a recorded per-sample outcome;
never a traceback, never a partial output."""

import json

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codeinterp.benchmarks import evaluation, generation
from codeinterp.benchmarks.sandbox import Limits
from codeinterp.errors import ConfigError

FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                       max_leaves=6)


def read_or_error(path):
    """read_replay's outcome: a frame with the two string columns, or the one-line error."""
    try:
        df = generation.read_replay(path)
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message and str(path) in message
        return None
    assert df.schema == {"problem_id": pl.Utf8, "completion": pl.Utf8, "sample_index": pl.Int64}
    return df


@FEW
@given(data=st.binary(max_size=300))
def test_any_bytes_as_a_samples_file(tmp_path, data):
    path = tmp_path / "samples.jsonl"
    path.write_bytes(data)
    read_or_error(path)


@FEW
@given(lines=st.lists(st.one_of(JSONISH, st.fixed_dictionaries({"task_id": JSONISH, "completion": JSONISH})), max_size=4))
def test_json_lines_of_any_shape(tmp_path, lines):
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    read_or_error(path)


def test_non_utf8_and_not_parquet_name_the_file(tmp_path):
    bad = tmp_path / "s.jsonl"
    bad.write_bytes(b'{"task_id": "HumanEval/0", "completion": "\xff\xfe"}\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        generation.read_replay(bad)
    fake = tmp_path / "s.parquet"
    fake.write_text("not parquet")
    with pytest.raises(ConfigError, match="s.parquet"):
        generation.read_replay(fake)


TESTS = json.dumps({"script": "assert f(1) == 2\n", "entry_point": "f"})


@settings(max_examples=5, deadline=None)
@given(program=st.one_of(st.just(""), st.just("```\nno code block"), st.text(max_size=40),
                         st.just("def f(x):\n    return (x +\n"), st.just("\x00\x01 not python")))
def test_any_program_gets_a_recorded_verdict(program):
    """Empty completions, no code block, programs that do not parse: a verdict, not a crash."""
    (v,) = evaluation.evaluate_many([(program, "assert", TESTS)], Limits(timeout_s=5, cpu_s=5), 1)
    assert v.status in evaluation.STATUSES and v.status != "passed"
    assert "\n" not in v.message.strip() or v.status == "error"


def test_prompt_longer_than_the_window_is_one_line(tiny_models):
    _, tok = tiny_models["llama"]
    row = {"dataset": "humaneval", "problem_id": "HumanEval/0", "prompt": "def f():\n" + "    x = 1\n" * 3000,
           "entry_point": "f", "starter_code": "def f():\n", "test_type": "assert", "canonical_solution": "",
           "tests": TESTS}
    s = generation.Settings(max_new_tokens=8, chat=False)
    with pytest.raises(ConfigError, match="HumanEval/0.*exceeds the model's context"):
        generation.prompt_table(pl.DataFrame([row]), tok, s, 512)
