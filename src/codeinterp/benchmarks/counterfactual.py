"""Generated counterfactual tasks: seeded clean/corrupted prompt pairs, model-independent.

Each row is one candidate pair. The corrupted prompt differs from the clean one in one small
region (`diff_start`/`diff_end`, character offsets into the clean prompt) so that the pair
can be patched position by position; several `corrupt_candidates` are offered in order of
preference because tokenizers merge characters differently (`((` is one token in SmolLM2's
and Gemma's vocabularies, two in a byte-level one): `codeinterp.benchmarks.task_pairs` keeps
the first candidate whose tokens line up with the clean prompt's, for the model at hand.

Tasks:
- ``brackets``: what closes the line. The answer is the closers of every still-open bracket,
  innermost first, then the newline. The counterfactual adds one opener, so the closer count
  shifts by one. Sources: ``template`` (the published `#print the string N` / `print(str(...`
  template), ``code`` (nested calls, indexing, tuples, lists, dicts, mixed kinds, with pairs
  already closed earlier on the line), ``benchmark`` (lines cut out of HumanEval's and MBPP's
  canonical solutions where closers remain).
- ``variable_binding``: which variable a ``return`` (source ``return``) or a call argument
  (source ``call``) refers to. The corrupted prompt swaps two bindings (kind ``swap``) or renames
  the bound variable (kind ``rename``), so the right identifier changes.
"""

from __future__ import annotations

import io
import json
import random
import tokenize

import polars as pl

from codeinterp.errors import ConfigError

TASKS = ("brackets", "variable_binding")
SOURCES = {"brackets": ("template", "code", "benchmark"), "variable_binding": ("return", "call")}
CLOSER = {"(": ")", "[": "]", "{": "}"}

SCHEMA: dict[str, pl.DataType] = {
    "pair_id": pl.Utf8, "task": pl.Utf8, "source": pl.Utf8, "kind": pl.Utf8, "depth": pl.Int64,
    "n_closed": pl.Int64, "clean_prompt": pl.Utf8, "clean_answer": pl.Utf8,
    "corrupt_candidates": pl.List(pl.Utf8), "corrupt_answer": pl.Utf8, "diff_start": pl.Int64,
    "diff_end": pl.Int64, "open_chars": pl.List(pl.Int64), "closed_chars": pl.List(pl.Int64),
}


def bracket_structure(code: str) -> tuple[list[int], list[int]]:
    """(offsets of unmatched openers, offsets of characters of closed pairs) on the last line
    of `code` (which starts with every bracket closed), by Python's tokenizer: strings and
    comments hold no brackets."""
    line_start = code.rfind("\n") + 1
    line = code[line_start:].lstrip()
    line_start += len(code) - line_start - len(line)
    stack: list[int] = []
    closed: list[int] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(line).readline):
            if tok.type != tokenize.OP or tok.string not in "([{)]}":
                continue
            pos = line_start + tok.start[1]
            if tok.string in CLOSER:
                stack.append(pos)
            elif stack:
                closed.extend([stack.pop(), pos])
    except (tokenize.TokenError, IndentationError):
        pass  # an unfinished line ends the token stream early; what was read is right
    return stack, sorted(closed)


def closers_for(code: str) -> str:
    """The closers of every unmatched opener of `code`'s last line, innermost first."""
    opens, _ = bracket_structure(code)
    return "".join(CLOSER[code[p]] for p in reversed(opens))


def _row(task, source, kind, clean, answer, candidates, corrupt_answer, diff, opens=None, closed=None, depth=None):
    if opens is None:
        opens, closed = bracket_structure(clean)
    return {
        "task": task, "source": source, "kind": kind,
        "depth": len(opens) if depth is None else depth, "n_closed": len(closed) // 2,
        "clean_prompt": clean, "clean_answer": answer, "corrupt_candidates": candidates,
        "corrupt_answer": corrupt_answer, "diff_start": diff[0], "diff_end": diff[1],
        "open_chars": opens, "closed_chars": closed,
    }


def _kind_of(closers: str) -> str:
    kinds = set(closers)
    return closers[0] if len(kinds) == 1 else "mixed"


# -- brackets ----------------------------------------------------------------------------
def _template(rng: random.Random, n: int, max_depth: int) -> list[dict]:
    rows = []
    for i in range(n):
        depth = 1 + i % max_depth  # openers: print( + str( x (depth - 1)
        num = rng.randint(10, 99)
        head = f"#print the string {num}\nprint(" + "str(" * (depth - 1)
        clean = head + str(num)
        # Preferred: double the innermost opener (`((` is one token in most code vocabularies);
        # otherwise replace the number's first digit by an opener (byte-level vocabularies).
        doubled = head[:-1] + "((" + str(num)
        replaced = head + "(" + str(num)[1:]
        answer = ")" * depth + "\n"
        rows.append(_row("brackets", "template", ")", clean, answer, [doubled, replaced], ")" * (depth + 1) + "\n",
                         (len(head) - 1, len(head) + 1)))
    return rows


NAMES = ("data", "items", "row", "value", "node", "count", "total", "key", "result", "text", "size", "parts")
FUNCS = ("len", "sum", "sorted", "max", "min", "abs", "list", "str", "int", "process", "check", "merge")


def _closed_group(rng: random.Random) -> str:
    name = rng.choice(NAMES)
    return rng.choice([f"{rng.choice(FUNCS)}({name})", f"{name}[{rng.randint(0, 9)}]", f"({name}, {rng.randint(0, 9)})"])


def _opener(rng: random.Random, kinds: str) -> str:
    kind = rng.choice(kinds)
    if kind == "(":
        return rng.choice([f"{rng.choice(FUNCS)}(", "("])
    if kind == "[":
        return rng.choice([f"{rng.choice(NAMES)}[", "["])
    return "{" + f"'{rng.choice(NAMES)}': "


def _code(rng: random.Random, n: int, max_depth: int) -> list[dict]:
    rows = []
    for i in range(n):
        depth = 1 + i % max_depth
        kinds = rng.choice(["(", "[", "{", "([{"])
        parts = [f"{rng.choice(NAMES)} = "]
        for level in range(depth):
            opener = _opener(rng, kinds)
            parts.append(opener)
            if rng.random() < 0.4:  # pairs closed earlier on the line, for the counting study
                parts.append(_closed_group(rng) + ", ")
                if opener.startswith("{"):  # the next item of a dict is a key: value
                    parts.append(f"'{rng.choice(NAMES)}': ")
        base, attr = rng.choice(NAMES), rng.choice(NAMES)
        prefix = "".join(parts) + base
        clean = prefix + "." + attr
        answer = closers_for(clean) + "\n"
        # One extra opener in place of the attribute dot: `base.attr` -> `base(attr`.
        corrupt = prefix + "(" + attr
        rows.append(_row("brackets", "code", _kind_of(answer.strip()), clean, answer, [corrupt],
                         ")" + answer, (len(prefix), len(prefix) + 1)))
    return rows


def _benchmark_lines(data_dir) -> list[str]:
    from codeinterp.benchmarks.datasets import load_problems

    programs = []
    for name in ("humaneval", "mbpp"):
        df = load_problems(name, data_dir)
        programs.extend(s for s in df["canonical_solution"].to_list() if s)
    return programs


def _cuts(program: str) -> list[tuple[str, str]]:
    """(prefix, rest of the line) at identifier ends of single-line statements where the
    source itself continues with the closers of every bracket still open on the line."""
    out = []
    start = 0
    for line in program.splitlines(keepends=True):
        body = line.rstrip("\n")
        if 0 < len(body) <= 100 and not body.lstrip().startswith("#") and _balanced_before(program, start):
            for j in range(1, len(body)):
                if body[j - 1].isalnum() and body[j] in ")]}":
                    prefix = program[: start + j]
                    closers = closers_for(prefix)
                    if closers and body[j:].startswith(closers):
                        out.append((prefix, body[j + len(closers):]))
        start += len(line)
    return out


def _balanced_before(program: str, start: int) -> bool:
    """No bracket is open where the line starts (the line is a statement of its own)."""
    depth = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(program[:start]).readline):
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return False
    return depth == 0


def _benchmark(rng: random.Random, n: int, max_depth: int, data_dir) -> list[dict]:
    cuts = [(p, rest) for prog in _benchmark_lines(data_dir) for p, rest in _cuts(prog)
            if len(bracket_structure(p)[0]) <= max_depth]
    rng.shuffle(cuts)
    rows = []
    for prefix, rest in cuts[:n]:
        line_start = prefix.rfind("\n") + 1
        clean = _last_lines(prefix[:line_start], 6) + prefix[line_start:]
        closers = closers_for(clean)
        answer = closers + rest + "\n"
        opens, _ = bracket_structure(clean)
        inner = opens[-1]
        # One extra opener: the identifier's last character becomes `(` (same character
        # count), or the innermost `(` doubles (`((` is one token in many vocabularies).
        candidates = [clean[:-1] + "("]
        diff = (len(clean) - 1, len(clean))
        if clean[inner] == "(":
            candidates.append(clean[:inner] + "(" + clean[inner:])
        rows.append(_row("brackets", "benchmark", _kind_of(closers), clean, answer, candidates, ")" + answer, diff))
    return rows


def _last_lines(text: str, k: int) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(lines[-k:])


# -- variable binding --------------------------------------------------------------------
PAIRS = (("first", "last"), ("left", "right"), ("low", "high"), ("old", "new"), ("head", "tail"),
         ("start", "end"), ("small", "big"), ("mean", "total"), ("inner", "outer"), ("prev", "next"))
ROLES = {"first": "items[0]", "last": "items[-1]", "left": "pair[0]", "right": "pair[1]", "low": "min(values)",
         "high": "max(values)", "old": "before", "new": "after", "head": "chain[0]", "tail": "chain[-1]",
         "start": "span[0]", "end": "span[1]", "small": "min(sizes)", "big": "max(sizes)", "mean": "avg(xs)",
         "total": "sum(xs)", "inner": "loops[0]", "outer": "loops[-1]", "prev": "steps[-2]", "next": "steps[-1]"}


def _container(expr: str) -> str:
    """`items[0]` -> items; `min(values)` -> values."""
    return expr.split("(")[-1].rstrip(")") if "(" in expr else expr.split("[")[0]


def _binding(rng: random.Random, n: int, source: str) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = rng.sample(PAIRS, 1)[0] if rng.random() < 0.5 else tuple(reversed(rng.sample(PAIRS, 1)[0]))
        kind = "swap" if i % 2 == 0 else "rename"
        want = ROLES[a]
        # Only the containers the two roles read: short prompts keep patching affordable.
        params = ", ".join(dict.fromkeys(_container(ROLES[x]) for x in (a, b)))
        head = f"def pick({params}):\n"
        lines_clean = f"{head}    {a} = {ROLES[a]}\n    {b} = {ROLES[b]}\n"
        if kind == "swap":  # the two names trade values: the other name now holds `want`
            lines_corrupt = f"{head}    {a} = {ROLES[b]}\n    {b} = {ROLES[a]}\n"
            corrupt_answer = b
        else:  # the name holding `want` is renamed to a third name
            others = [x for p in PAIRS for x in p if x[0] not in (a[0], b[0])]
            c = rng.choice(others)
            lines_corrupt = f"{head}    {c} = {ROLES[a]}\n    {b} = {ROLES[b]}\n"
            corrupt_answer = c
        # The prompt ends before the identifier's leading space: BPE vocabularies fold it in.
        if source == "return":
            tail, lead = f"    # return {want}\n    return", " "
        else:
            tail, lead = f"    # log {want}\n    log(", ""
        clean = lines_clean + tail
        corrupt = lines_corrupt + tail
        start = next(k for k in range(min(len(clean), len(corrupt))) if clean[k] != corrupt[k])
        end = len(lines_clean)
        rows.append(_row("variable_binding", source, kind, clean, lead + a, [corrupt], lead + corrupt_answer, (start, end),
                         opens=[], closed=[], depth=2))
    return rows


def generate(spec: dict, data_dir=None) -> pl.DataFrame:
    """The candidate pairs of one generated dataset (`spec`: benchmark, pairs, max_depth,
    sources, seed); byte-identical for the same spec."""
    task = spec["benchmark"]
    if task not in TASKS:
        raise ConfigError(f"datasets: benchmark {task!r} is not a generated task ({', '.join(TASKS)})")
    sources = spec.get("sources") or list(SOURCES[task])
    wrong = [s for s in sources if s not in SOURCES[task]]
    if wrong:
        raise ConfigError(f"datasets.sources: {', '.join(wrong)} not a source of {task} "
                          f"(choose from {', '.join(SOURCES[task])})")
    n, max_depth = int(spec.get("pairs", 200)), int(spec.get("max_depth", 6))
    rows = []
    for source in sources:
        rng = random.Random(f"{spec.get('seed', 0)}/{task}/{source}")  # str seeds hash stably
        if source == "template":
            made = _template(rng, n, max_depth)
        elif source == "code":
            made = _code(rng, n, max_depth)
        elif source == "benchmark":
            made = _benchmark(rng, n, max_depth, data_dir)
        else:
            made = _binding(rng, n, source)
        for i, row in enumerate(made):
            rows.append({"pair_id": f"{task}/{source}/{i:04d}", **row})
    return pl.DataFrame(rows, schema=SCHEMA)


def describe(df: pl.DataFrame) -> str:
    counts = df.group_by("source").len().sort("source")
    return json.dumps({s: int(c) for s, c in counts.iter_rows()})
