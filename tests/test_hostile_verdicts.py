"""No false passes: wrong programs wrapped to cheat (tests/hostile/cheats/) never pass,
correct programs with the habits of chat models (tests/hostile/good/) always do.

Every program answers one task, ``add(a, b)``; every cheat is a wrong answer.  Each
runs against a HumanEval-style ``check(candidate)`` script and MBPP-style asserts,
in both isolation modes.  On the harness before the driver (exit status 0 =
passed) the exit/atexit/thread/fork/excepthook/forged-record cheats passed, the
builtin-replacing and AlwaysEqual ones passed the checks that use those builtins,
and the good programs with ``input()`` in their main block errored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from codeinterp.benchmarks.datasets import leetcode_tests
from codeinterp.benchmarks.evaluation import check_program, evaluate_many
from codeinterp.benchmarks.sandbox import Limits, isolation_available

HOSTILE = Path(__file__).parent / "hostile"
CHEATS = sorted((HOSTILE / "cheats").glob("*.py"))
GOOD = sorted((HOSTILE / "good").glob("*.py"))

HE_SCRIPT = """
def check(candidate):
    assert candidate(1, 2) == 3
    assert abs(candidate(0.1, 0.2) - 0.3) < 1e-9
    assert candidate(-5, 5) == 0
    assert isinstance(candidate(2, 2), int)
    assert sorted([candidate(3, 4), candidate(1, 1)]) == [2, 7]
    assert math.isclose(candidate(1.5, 1.5), 3.0)
    assert [candidate(i, i) for i in range(3)] == [0, 2, 4]
    assert list(map(candidate, [1, 2], [3, 4])) == [4, 6]
    assert str(candidate(20, 22)) == "42"


check(add)
"""
MBPP_SCRIPT = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(2.5, 0.5) == 3.0\n"
TESTS = {
    "humaneval": json.dumps({"setup": "import math", "script": HE_SCRIPT, "entry_point": "add"}),
    "mbpp": json.dumps({"setup": "", "script": MBPP_SCRIPT}),
}


@pytest.fixture(params=["bwrap", "rlimits"])
def limits(request) -> Limits:
    if request.param == "bwrap" and isolation_available() != "bwrap":
        pytest.skip("bubblewrap is not usable here")
    return Limits(timeout_s=6.0, cpu_s=6.0, memory_mb=512, output_bytes=200_000, isolation=request.param)


def _run_all(programs: list[Path], limits: Limits):
    items, labels = [], []
    for path in programs:
        for style, tests in TESTS.items():
            items.append((path.read_text(), "assert", tests))
            labels.append(f"{path.stem}/{style}")
    return labels, evaluate_many(items, limits, workers=2)


def test_enough_programs():
    assert len(CHEATS) >= 30 and len(GOOD) >= 10


def test_cheats_never_pass(limits):
    ppid_before = os.getpid()
    labels, verdicts = _run_all(CHEATS, limits)
    passed = [label for label, v in zip(labels, verdicts) if v.status == "passed"]
    assert passed == []
    assert {v.isolation for v in verdicts} == {limits.isolation}
    assert os.getpid() == ppid_before  # we are alive (kill_parent_and_group)
    by_label = dict(zip(labels, verdicts))
    # early exits are named as such, not as a generic error
    for name in ("exit_at_import", "exit_builtin", "quit_builtin", "raise_systemexit", "os_exit_at_import"):
        v = by_label[f"{name}/mbpp"]
        assert (v.status, v.message) == ("error", "exited before tests finished (status 0)"), (name, v)
    v = by_label["exit_in_function/mbpp"]
    assert (v.status, v.message) == ("error", "exited during the tests (status 0)"), v
    # value-level cheats end as plain wrong answers
    for name in ("always_equal", "int_subclass_equal", "float_str_list_subclasses", "metaclass_liar",
                 "replace_builtins", "shadow_builtins_globals", "patch_math_isclose", "patch_in_function",
                 "dataclass_eq_liar", "container_of_liars", "driver_module_tamper"):
        for style in TESTS:
            v = by_label[f"{name}/{style}"]
            assert v.status == "failed", (name, style, v)


def test_good_programs_pass(limits):
    labels, verdicts = _run_all(GOOD, limits)
    bad = {label: (v.status, v.message) for label, v in zip(labels, verdicts) if v.status != "passed"}
    assert bad == {}


# ---------------------------------------------------------------- LeetCode-style (class Solution)

LEETCODE = leetcode_tests("addTwo", [{"input": "1\n2", "output": "3"}, {"input": "[1]\n[2, 3]", "output": "[1, 2, 3]"}])
LC_GOOD = """
class Solution:
    def __init__(self):
        self.calls = 0

    def addTwo(self, a, b):
        self.calls += 1
        return a + b

    def __repr__(self):
        return "Solution()"


if __name__ == "__main__":
    print(Solution().addTwo(int(input()), int(input())))
"""
LC_CHEATS = {
    "always_equal": "class E:\n    __eq__ = lambda s, o: True\n\n"
                    "class Solution:\n    def addTwo(self, a, b):\n        return E()\n",
    "list_subclass": "class L(list):\n    __eq__ = lambda s, o: True\n\n"
                     "class Solution:\n    def addTwo(self, a, b):\n        return L()\n",
    "tuple_of_liars": "class E:\n    __eq__ = lambda s, o: True\n    __hash__ = lambda s: 1\n\n"
                      "class Solution:\n    def addTwo(self, a, b):\n        return (E(), E(), E()) if isinstance(a, list)"
                      " else E()\n",
    "solution_eq": "class Solution:\n    def __eq__(self, o):\n        return True\n"
                   "    def addTwo(self, a, b):\n        return self\n",
    "exit_in_method": "import sys\n\nclass Solution:\n    def addTwo(self, a, b):\n        sys.exit(0)\n",
    "exit_in_init": "import os\n\nclass Solution:\n    def __init__(self):\n        os._exit(0)\n"
                    "    def addTwo(self, a, b):\n        return 0\n",
}


def test_leetcode_style(limits):
    items = [(LC_GOOD, "assert", LEETCODE)] + [(p, "assert", LEETCODE) for p in LC_CHEATS.values()]
    verdicts = evaluate_many(items, limits, workers=2)
    assert verdicts[0].status == "passed", verdicts[0]
    got = {name: v.status for name, v in zip(LC_CHEATS, verdicts[1:])}
    assert "passed" not in got.values(), got
    assert got["always_equal"] == got["list_subclass"] == got["tuple_of_liars"] == got["solution_eq"] == "failed"


# ---------------------------------------------------------------- stdin programs: judged by stdout

SUM_CASES = json.dumps([{"input": "1 2\n", "output": "3\n"}, {"input": "0.5 1\n", "output": "1.5\n"}])


@pytest.mark.parametrize("program,status", [
    # correct, LiveCodeBench style: main() under a __main__ guard, then sys.exit(0)
    ("import sys\ndef main():\n    a, b = map(float, input().split())\n    r = a + b\n"
     "    print(int(r) if r == int(r) else r)\nif __name__ == '__main__':\n    main()\n    sys.exit(0)\n", "passed"),
    # correct: 1.50 vs 1.5 and 3.0 vs 3 are equal as decimals (LCB)
    ("a, b = map(float, input().split())\nprint('%.2f' % (a + b))\n", "passed"),
    # correct: threading.Thread(target=main) idiom with stack size
    ("import threading, sys\ndef main():\n    a, b = map(float, input().split())\n    print(a + b)\n"
     "threading.stack_size(1 << 26)\nt = threading.Thread(target=main)\nt.start()\nt.join()\n", "passed"),
    # wrong, with fake success chatter on stderr and exit 0
    ("import sys\nprint(0)\nsys.stderr.write('All tests passed\\n')\nsys.exit(0)\n", "failed"),
    # wrong: correct first line, then extra output
    ("a, b = map(float, input().split())\nprint(a + b)\nprint('debug')\n", "failed"),
    # wrong: os._exit(0) before printing anything
    ("import os\nos._exit(0)\nprint(3)\n", "failed"),
])
def test_stdin_programs(limits, program, status):
    v = check_program(program, "stdin", SUM_CASES, limits)
    assert v.status == status, v
