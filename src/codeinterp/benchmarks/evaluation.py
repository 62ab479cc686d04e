"""Execute generated programs against their tests and compute pass@k.

All execution goes through :mod:`codeinterp.benchmarks.sandbox`.

* Assert-style tests (HumanEval, MBPP, LeetCode-style LiveCodeBench) run under
  the driver of :mod:`codeinterp.benchmarks.harness`: the program is loaded as a module
  that is not ``__main__``, the tests run against it, and only then does the
  driver write a record derived from a per-run secret token on a separate
  pipe.  ``passed`` needs exactly that record and exit status 0 -- positive
  evidence that every test ran; an exit status alone proves nothing.
* Stdin programs (AtCoder-style LiveCodeBench) run as ``__main__`` and are
  judged by their stdout, compared as LiveCodeBench's grader does
  (``outputs_match``).

Verdict statuses:

* ``passed``  -- assert: the driver's success record; stdin: every output matched
* ``failed``  -- an ``AssertionError`` in the tests or a wrong stdout
* ``timeout`` -- wall-clock timeout or CPU-time limit
* ``memory``  -- ``MemoryError`` (address-space limit) or an out-of-memory abort
* ``error``   -- anything else: other exceptions, syntax errors, death by a
  signal, output limit exceeded, exiting before the tests finished, a nonzero
  exit without a traceback
"""

from __future__ import annotations

import json
import math
import secrets
import signal
from decimal import Decimal, InvalidOperation
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl

from codeinterp.benchmarks import harness
from codeinterp.benchmarks.sandbox import Limits, RunResult, isolation_available, run_python
from codeinterp.progress import NO_CHECKPOINT

__all__ = ["Verdict", "STATUSES", "check_program", "evaluate_many", "pass_at_k", "pass_at_k_table",
           "normalize_output", "outputs_match"]

STATUSES = ("passed", "failed", "timeout", "memory", "error")
_MESSAGE_CHARS = 300
# Programs per checkpoint step: small enough that a kill loses little, large enough that
# every worker has several programs per step.
CHUNK = 32


@dataclass(frozen=True)
class Verdict:
    status: str  # passed | failed | timeout | memory | error
    message: str
    isolation: str
    seconds: float


def _cap(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 3] + "..."


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def _classify(r: RunResult) -> tuple[str, str] | None:
    """(status, message) for a run that did not succeed, or None if it exited 0."""
    last = _last_line(r.stderr)
    if r.timed_out:
        return "timeout", "timed out" if r.returncode != -signal.SIGXCPU else "CPU time limit exceeded"
    if r.output_truncated:
        return "error", "output limit exceeded"
    if r.returncode == 0:
        return None
    if r.returncode is None:
        return "error", last or "program did not run"
    if last.startswith("MemoryError") or "Cannot allocate memory" in last or "out of memory" in last.lower():
        return "memory", last
    if last.startswith("AssertionError"):
        return "failed", last
    if r.returncode < 0:
        msg = f"killed by {_signal_name(r.returncode)}"
        return "error", f"{msg}: {last}" if last else msg
    return "error", last or f"exit code {r.returncode}"


def normalize_output(text: str) -> str:
    """Strip the whole output and each of its lines (LiveCodeBench's ``get_stripped_lines``)."""
    return "\n".join(line.strip() for line in text.replace("\r\n", "\n").strip().split("\n"))


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(tok) for tok in line.split()]
    except (InvalidOperation, ValueError):
        return None


def outputs_match(got: str, expected: str) -> tuple[bool, str]:
    """LiveCodeBench's stdout comparison (lcb_runner/evaluation/testing_util.py, ``grade_stdio``).

    Both outputs are stripped as a whole and line by line; the line counts must
    agree; a line that differs as text still matches when both split into the
    same decimals (``1.50`` equals ``1.5``; not a tolerance: ``0.333`` is not
    ``1/3``).  Returns (match, reason when not).
    """
    got_lines = normalize_output(got).split("\n")
    want_lines = normalize_output(expected).split("\n")
    if len(got_lines) != len(want_lines):
        return False, f"wrong output: {len(got_lines)} line(s), expected {len(want_lines)}"
    for i, (g, w) in enumerate(zip(got_lines, want_lines)):
        if g == w:
            continue
        dg, dw = _decimals(g), _decimals(w)
        if dg is None or dw is None or dg != dw:
            return False, f"wrong output at line {i + 1}: got {g[:80]!r}, expected {w[:80]!r}"
    return True, ""


def _judge_driver(r: RunResult, token: str) -> tuple[str, str]:
    """Verdict of a driver run: passed only with exactly the success record and exit status 0."""
    lines = r.record.splitlines()
    if r.timed_out or r.output_truncated:
        return _classify(r)
    if r.returncode == 0 and r.record == harness.pass_record(token) + "\n":
        return "passed", ""
    # a failure record of the driver says best what happened (forging one only hurts the program)
    if len(lines) == 1:
        try:
            rec = json.loads(lines[0])
        except ValueError:
            rec = None
        if isinstance(rec, dict) and rec.get("status") in ("failed", "error", "memory") \
                and isinstance(rec.get("message"), str):
            return rec["status"], rec["message"]
    bad = _classify(r)
    if bad and bad[0] == "memory":
        return bad
    if r.returncode is not None and r.returncode >= 0:
        if lines:
            return "error", f"no valid evidence that the tests ran (exit status {r.returncode})"
        return "error", f"exited before tests finished (status {r.returncode})"
    return bad if bad else ("error", "program did not run")


def check_program(program: str, test_type: str, tests: str, limits: Limits) -> Verdict:
    """Run ``program`` against ``tests`` (a JSON string) in the sandbox and return its verdict."""
    if test_type == "assert":
        spec = json.loads(tests)
        token = secrets.token_hex(16)
        job = harness.job(spec.get("setup") or "", program, spec.get("script") or "", token,
                          spec.get("entry_point") or "")
        r = run_python(harness.driver_source(), job, limits, record=True)
        status, message = _judge_driver(r, token)
        return Verdict(status, _cap(message), r.isolation, r.seconds)
    if test_type == "stdin":
        cases = json.loads(tests)
        if not isinstance(cases, list):
            raise ValueError("stdin tests must be a JSON list of {input, output} objects")
        seconds, isolation = 0.0, ""
        for i, case in enumerate(cases):
            r = run_python(program, case.get("input", ""), limits)
            seconds += r.seconds
            isolation = r.isolation
            bad = _classify(r)
            if bad:
                return Verdict(bad[0], _cap(f"case {i}: {bad[1]}"), isolation, round(seconds, 4))
            ok, why = outputs_match(r.stdout, case.get("output", ""))
            if not ok:
                return Verdict("failed", _cap(f"case {i}: {why}"), isolation, round(seconds, 4))
        if not cases:
            isolation = isolation_available() if limits.isolation == "auto" else limits.isolation
        return Verdict("passed", "", isolation, round(seconds, 4))
    raise ValueError(f"unknown test_type {test_type!r} (expected 'assert' or 'stdin')")


def evaluate_many(items: list[tuple[str, str, str]], limits: Limits, workers: int,
                  checkpoint=NO_CHECKPOINT) -> list[Verdict]:
    """check_program over (program, test_type, tests) items, ``workers`` at a time, in input order.

    Items run in chunks of ``CHUNK``; a ``checkpoint`` keeps each finished chunk's verdicts,
    so a killed evaluation resumes at the first unfinished chunk."""
    items = list(items)
    for _, test_type, _ in items:  # fail fast on bad input, before running anything
        if test_type not in ("assert", "stdin"):
            raise ValueError(f"unknown test_type {test_type!r} (expected 'assert' or 'stdin')")
    if not items:
        return []
    workers = max(1, int(workers))
    out: list[Verdict] = []
    checkpoint.begin(-(-len(items) // CHUNK), "chunks")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        for start in range(0, len(items), CHUNK):
            step = f"chunk-{start // CHUNK:05d}"
            saved = checkpoint.get(step)
            if saved is not None:
                out += [Verdict(*v) for v in saved]
                continue
            chunk = items[start : start + CHUNK]
            if workers == 1:
                done = [check_program(p, t, s, limits) for p, t, s in chunk]
            else:
                done = list(pool.map(lambda it: check_program(it[0], it[1], it[2], limits), chunk))
            checkpoint.put(step, [[v.status, v.message, v.isolation, v.seconds] for v in done])
            out += done
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate 1 - C(n-c, k) / C(n, k) (Chen et al. 2021), as a stable product.

    Returns NaN when k > n (not estimable from n samples).  Raises ValueError for
    negative arguments, k < 1 or c > n.
    """
    if n < 0 or c < 0 or k < 1 or c > n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        return math.nan
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_table(verdicts: pl.DataFrame, ks: list[int]) -> pl.DataFrame:
    """One row per problem_id with n, c and "pass@k" columns, sorted by problem_id.

    Input columns: problem_id, sample_index, status.  A "pass@k" column exists for
    each k with k <= the largest n; rows of problems with fewer than k samples hold
    null there (so that means over problems skip them).
    """
    missing = {"problem_id", "sample_index", "status"} - set(verdicts.columns)
    if missing:
        raise ValueError(f"verdicts table lacks column(s) {', '.join(sorted(missing))}")
    counts = (
        verdicts.group_by("problem_id")
        .agg(n=pl.len().cast(pl.Int64), c=(pl.col("status") == "passed").sum().cast(pl.Int64))
        .sort("problem_id")
    )
    max_n = counts["n"].max() if counts.height else 0
    for k in sorted(set(int(k) for k in ks)):
        if k < 1 or not max_n or k > max_n:
            continue
        values = [None if k > n else pass_at_k(n, c, k) for n, c in zip(counts["n"], counts["c"])]
        counts = counts.with_columns(pl.Series(f"pass@{k}", values, dtype=pl.Float64))
    return counts


VERDICT_SCHEMA = {
    "dataset": pl.Utf8,
    "problem_id": pl.Utf8,
    "sample_index": pl.Int64,
    "status": pl.Utf8,
    "message": pl.Utf8,
    "isolation": pl.Utf8,
}
# No wall-clock column (Verdict.seconds): the same generations give the same bytes; the
# rule writes timings to a separate file (`verdict_timing`).


def verdict_timing(verdicts: list[Verdict]) -> dict:
    """Sandbox seconds in all and per status, for the timing file beside the verdicts."""
    per: dict[str, float] = {}
    for v in verdicts:
        per[v.status] = per.get(v.status, 0.0) + v.seconds
    return {"programs": len(verdicts), "sandbox_seconds": round(sum(per.values()), 3),
            "sandbox_seconds_by_status": {k: round(per[k], 3) for k in sorted(per)}}


def evaluate_generations(problems: pl.DataFrame, generations: pl.DataFrame, limits: Limits, workers: int,
                         ks: list[int], checkpoint=NO_CHECKPOINT, timing: dict | None = None,
                         shard: tuple[int, int] | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The `evaluate` stage: one verdict per generated sample, and pass@k per problem
    (`timing`, when given, receives `verdict_timing`). `shard` = (index, count) judges that
    contiguous share of the samples only (codeinterp.sharding; pass@k then covers only them)."""
    tests = {r["problem_id"]: (r["test_type"], r["tests"]) for r in problems.iter_rows(named=True)}
    unknown = sorted(set(generations["problem_id"]) - set(tests))
    if unknown:
        raise ValueError(f"generations name problem(s) missing from the dataset: {', '.join(unknown[:5])}")
    gens = generations.sort("problem_id", "sample_index")
    if shard is not None:
        from codeinterp.sharding import item_range

        part = item_range(len(gens), 1, shard[1], shard[0])
        gens = gens.slice(part.start, len(part))
    items = [(g["program"], *tests[g["problem_id"]]) for g in gens.iter_rows(named=True)]
    verdicts = evaluate_many(items, limits, workers, checkpoint)
    if timing is not None:
        timing.update(verdict_timing(verdicts))
    table = pl.DataFrame(
        {
            "dataset": gens["dataset"],
            "problem_id": gens["problem_id"],
            "sample_index": gens["sample_index"],
            "status": [v.status for v in verdicts],
            "message": [v.message for v in verdicts],
            "isolation": [v.isolation for v in verdicts],
        },
        schema=VERDICT_SCHEMA,
    )
    return table, pass_at_k_table(table, ks)


def limits_from_config(cfg: dict) -> Limits:
    """Sandbox limits from the `evaluation` config section."""
    return Limits(timeout_s=cfg["timeout_s"], cpu_s=cfg["cpu_s"], memory_mb=cfg["memory_mb"],
                  output_bytes=cfg["output_bytes"], isolation=cfg["isolation"])
