"""The harness self-test through the program-building path answers take.

Every canonical solution must pass when handed over the way a model hands it over:
- chat: the code block a chat model writes, run through `prompts.build_program`
  (HumanEval: the entry function alone, its helpers and imports left to the prompt);
- completion: the text a base model continues the completion prompt with, cut at the
  benchmark's stop sequences, then built into a program (HumanEval: the body only; MBPP:
  the whole program after the docstring prompt).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from codeinterp.benchmarks import evaluation, prompts
from codeinterp.benchmarks.datasets import load_problems, select_problems
from codeinterp.benchmarks.generation import cut_at_stop
from codeinterp.benchmarks.sandbox import Limits

REPO = Path(__file__).resolve().parents[1]
LIMITS = Limits(timeout_s=20, cpu_s=20, memory_mb=1024)
# The HumanEval problems whose reference uses a helper defined in the prompt.
HELPER_PROBLEMS = ("HumanEval/10", "HumanEval/32", "HumanEval/38", "HumanEval/50")


def entry_function_alone(row: dict) -> str:
    """`def entry_point(...)` of prompt + canonical solution, without anything around it."""
    source = row["canonical_solution"]
    tree = ast.parse(source)
    [fn] = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == row["entry_point"]]
    return ast.get_source_segment(source, fn) + "\n"


def completion_answer(row: dict) -> str:
    """What a base model would add after the completion prompt to give the reference."""
    context = prompts.completion_prompt(row)
    code = row["canonical_solution"]
    answer = code[len(context):] if code.startswith(context) else code
    cut, _ = cut_at_stop(answer, prompts.stop_sequences("code", False, row))
    return cut


def chat_answer(row: dict) -> str:
    if prompts.kind_of(row) == "humaneval":
        return entry_function_alone(row)
    return row["canonical_solution"]


def failures(problems, answer) -> list[tuple[str, str, str]]:
    rows = list(problems.iter_rows(named=True))
    items = [(prompts.build_program(r, answer(r)), r["test_type"], r["tests"]) for r in rows]
    verdicts = evaluation.evaluate_many(items, LIMITS, workers=2)
    return [(r["problem_id"], v.status, v.message) for r, v in zip(rows, verdicts) if v.status != "passed"]


@pytest.fixture(scope="module")
def humaneval():
    return load_problems("humaneval", REPO / "data")


@pytest.fixture(scope="module")
def mbpp_test():
    return select_problems(load_problems("mbpp", REPO / "data"), split="test")


def test_entry_function_alone_drops_prompt_helpers(humaneval):
    """The chat-path answer really is the function alone: helpers come only from the prompt."""
    row = next(r for r in humaneval.iter_rows(named=True) if r["problem_id"] == "HumanEval/10")
    code = entry_function_alone(row)
    assert code.startswith("def make_palindrome(") and "def is_palindrome" not in code
    program = prompts.build_program(row, code)
    assert "def is_palindrome" in program


def test_helper_problems_pass_as_chat_answers(humaneval):
    """Fast version of the chat path for the four problems that failed with NameError."""
    subset = select_problems(humaneval, ids=list(HELPER_PROBLEMS))
    assert failures(subset, chat_answer) == []


@pytest.mark.slow
def test_humaneval_chat_path_164(humaneval):
    assert humaneval.height == 164
    assert failures(humaneval, chat_answer) == []


@pytest.mark.slow
def test_humaneval_completion_path_164(humaneval):
    bodies = [completion_answer(r) for r in humaneval.iter_rows(named=True)]
    assert all(b.startswith((" ", "\t", "\n")) for b in bodies)  # bodies, not whole functions
    assert failures(humaneval, completion_answer) == []


@pytest.mark.slow
def test_mbpp_test_split_chat_path_500(mbpp_test):
    assert mbpp_test.height == 500
    assert failures(mbpp_test, chat_answer) == []


@pytest.mark.slow
def test_mbpp_test_split_completion_path_500(mbpp_test):
    """The reference programs survive the MBPP completion stops uncut and pass."""
    cut = [r["problem_id"] for r in mbpp_test.iter_rows(named=True)
           if completion_answer(r) != r["canonical_solution"]]
    assert cut == []
    assert failures(mbpp_test, completion_answer) == []
