"""Each cheat against the one test it is built to fool.

In tests/test_hostile_verdicts.py a wrong answer also fails some plain assert, so
those verdicts cannot tell whether a defence worked.  Here every test script
depends only on the mechanism the cheat attacks: on the harness before the
driver (one file, exit status 0 = passed) each of these passed; a control row
shows the same script accepts a correct program.
"""

from __future__ import annotations

import json

import pytest

from codeinterp.benchmarks.datasets import leetcode_tests
from codeinterp.benchmarks.evaluation import check_program, evaluate_many
from codeinterp.benchmarks.sandbox import Limits, isolation_available


def asserts(script: str, setup: str = "", entry: str = "") -> str:
    return json.dumps({"setup": setup, "script": script, "entry_point": entry})


ABS_TEST = asserts("assert abs(add(0.1, 0.2) - 0.3) < 1e-9\n")
ISCLOSE_TEST = asserts("import math\nassert math.isclose(add(0.1, 0.2), 0.3)\n")
EQ_TEST = asserts("assert add(1, 2) == 3\n")
LEN_ALL_TEST = asserts("assert all([add(1, 2) == 3]) and len(str(add(20, 22))) == 2\n")
IN_TEST = asserts("assert add(1, 2) in [3, 30]\nassert add(1, 1) in {2}\n")
COUNTER_TEST = asserts("from collections import Counter\nassert Counter(add('ab', 'c')) == Counter('abc')\n")
OPERATOR_TEST = asserts("import operator\nassert operator.eq(add(1, 2), 3)\n")
SORTED_TEST = asserts("assert sorted(add([3], [1, 2])) == [1, 2, 3]\n")
STR_TEST = asserts("assert str(add(1, 2)) == '3' and repr(add(1, 2)) == '3'\n")

WRONG = "def add(a, b):\n    return a - b if not isinstance(a, (str, list)) else a\n"

CASES = {
    # name: (program, tests)
    "builtins.abs": ("import builtins\nbuiltins.abs = lambda x: 0\n" + WRONG, ABS_TEST),
    "global abs": ("def abs(x):\n    return 0\n" + WRONG, ABS_TEST),
    "abs patched in call": ("import builtins\ndef add(a, b):\n    builtins.abs = lambda x: 0\n    return 0\n",
                            ABS_TEST),
    "abs by finalizer": ("import builtins\nclass B:\n    def __init__(self):\n        self.me = self\n"
                         "    def __del__(self):\n        builtins.abs = lambda x: 0\n"
                         "def add(a, b):\n    B()\n    return 0\n", ABS_TEST),
    "math.isclose": ("import math\nmath.isclose = lambda *a, **k: True\n" + WRONG, ISCLOSE_TEST),
    "sys.modules math": ("import sys, types\nm = types.ModuleType('math')\nm.isclose = lambda *a, **k: True\n"
                         "sys.modules['math'] = m\n" + WRONG, ISCLOSE_TEST),
    "math module class": ("import math, types\nclass L(types.ModuleType):\n"
                          "    def __getattribute__(self, n):\n        return lambda *a, **k: True\n"
                          "math.__class__ = L\n" + WRONG, ISCLOSE_TEST),
    "reimported math": ("import sys\ndel sys.modules['math']\nimport math\nmath.isclose = lambda *a, **k: True\n"
                        + WRONG, ISCLOSE_TEST),
    "operator.eq": ("import operator\noperator.eq = lambda a, b: True\n" + WRONG, OPERATOR_TEST),
    "builtins all/len/str": ("import builtins\nbuiltins.all = lambda x: True\nbuiltins.len = lambda x: 2\n" + WRONG,
                             LEN_ALL_TEST),
    "builtins sorted": ("import builtins\nbuiltins.sorted = lambda x, **k: [1, 2, 3]\n" + WRONG, SORTED_TEST),
    "AlwaysEqual": ("class E:\n    __eq__ = lambda s, o: True\n    __hash__ = lambda s: hash(3)\n"
                    "def add(a, b):\n    return E()\n", EQ_TEST),
    "AlwaysEqual in containers": ("class E:\n    __eq__ = lambda s, o: True\n    __hash__ = lambda s: hash(2)\n"
                                  "def add(a, b):\n    return E()\n", IN_TEST),
    "int subclass": ("class I(int):\n    __eq__ = lambda s, o: True\n    __hash__ = int.__hash__\n"
                     "def add(a, b):\n    return I(0)\n", EQ_TEST),
    "str/repr liar": ("class S:\n    __str__ = __repr__ = lambda s: '3'\ndef add(a, b):\n    return S()\n", STR_TEST),
    "Counter.__eq__": ("from collections import Counter\nCounter.__eq__ = lambda s, o: True\n" + WRONG,
                       COUNTER_TEST),
    "str subclass keys": ("class S(str):\n    __eq__ = lambda s, o: True\n    __hash__ = lambda s: hash('a')\n"
                          "    def __iter__(self):\n        return iter('abc')\n"
                          "def add(a, b):\n    return S('zz')\n", COUNTER_TEST),
    "settrace jump": ("import sys\ndef t(frame, event, arg):\n    if event == 'line':\n"
                      "        try:\n            frame.f_lineno += 1\n        except Exception:\n            pass\n"
                      "    return t\nsys.settrace(t)\n" + WRONG, EQ_TEST),
    "injected __ci_call__": ("__ci_call__ = lambda f, *a, **k: 3\n" + WRONG, EQ_TEST),
}


@pytest.fixture(params=["bwrap", "rlimits"])
def limits(request) -> Limits:
    if request.param == "bwrap" and isolation_available() != "bwrap":
        pytest.skip("bubblewrap is not usable here")
    return Limits(timeout_s=6.0, cpu_s=6.0, memory_mb=512, output_bytes=100_000, isolation=request.param)


def test_targeted_cheats(limits):
    names = list(CASES)
    verdicts = evaluate_many([(CASES[n][0], "assert", CASES[n][1]) for n in names], limits, workers=2)
    got = {n: (v.status, v.message) for n, v in zip(names, verdicts)}
    assert [n for n in names if got[n][0] == "passed"] == [], got
    # controls: a correct program passes each of these scripts
    right = "def add(a, b):\n    return a + b\n"
    tests = sorted({t for _, t in CASES.values()})
    controls = evaluate_many([(right, "assert", t) for t in tests], limits, workers=2)
    assert [v.status for v in controls] == ["passed"] * len(tests), controls


# Stealing the expected value from the test's frame.  LeetCode-style scripts keep it in
# a local (_ci_expected) of the test module's frame.
STEAL_TESTS = leetcode_tests("f", [{"input": "1", "output": "12345"}, {"input": "2", "output": "67890"}])
STEALERS = {
    "sys._getframe": "import sys\ndef grab():\n    f = sys._getframe(1)\n    while f is not None:\n"
                     "        if '_ci_expected' in f.f_locals:\n            return f.f_locals['_ci_expected']\n"
                     "        f = f.f_back\n",
    "inspect.stack": "import inspect\ndef grab():\n    for info in inspect.stack():\n"
                     "        if '_ci_expected' in info.frame.f_locals:\n"
                     "            return info.frame.f_locals['_ci_expected']\n",
    "traceback": "def grab():\n    try:\n        raise ValueError\n    except ValueError as e:\n"
                 "        f = e.__traceback__.tb_frame\n    while f is not None:\n"
                 "        if '_ci_expected' in f.f_locals:\n            return f.f_locals['_ci_expected']\n"
                 "        f = f.f_back\n",
    "signal handler": "import signal, time\nfound = []\ndef h(signum, f):\n    while f is not None:\n"
                      "        if '_ci_expected' in f.f_locals:\n            found.append(f.f_locals['_ci_expected'])\n"
                      "            return\n        f = f.f_back\n"
                      "def grab():\n    found.clear()\n    signal.signal(signal.SIGALRM, h)\n"
                      "    signal.setitimer(signal.ITIMER_REAL, 0.001)\n    end = time.time() + 0.2\n"
                      "    while not found and time.time() < end:\n        pass\n    return found[-1] if found else None\n",
    "generator frame": "def grab():\n    def g():\n        yield\n    f = g().gi_frame\n    return f and None\n",
    "gc": "import gc\ndef grab():\n    for o in gc.get_objects():\n"
          "        if isinstance(o, dict) and '_ci_expected' in o:\n            return o['_ci_expected']\n",
}


def test_expected_value_cannot_be_stolen(limits):
    programs = [src + "\nclass Solution:\n    def f(self, x):\n        return grab()\n" for src in STEALERS.values()]
    verdicts = evaluate_many([(p, "assert", STEAL_TESTS) for p in programs], limits, workers=2)
    got = {n: (v.status, v.message) for n, v in zip(STEALERS, verdicts)}
    assert [n for n, (status, _) in got.items() if status == "passed"] == [], got
    right = "class Solution:\n    def f(self, x):\n        return 12345 if x == 1 else 67890\n"
    assert check_program(right, "assert", STEAL_TESTS, limits).status == "passed"
