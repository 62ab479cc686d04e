"""Generated counterfactual tasks: seeded clean/corrupted prompt pairs, model-independent.

One row per candidate pair (`results/datasets/{dataset}/problems.parquet`). The corrupted
prompt replaces one small region of the clean one (`diff_start`/`diff_end`: character offsets
into the clean prompt) so that the two can be patched position by position. Tokenizers merge
characters differently (`((` is one token in SmolLM2's and Gemma's vocabularies, two in a
byte-level one; `(` followed by `)` becomes `()`), so each row also offers `alternatives`,
other corrupted prompts with their own answer and region, in order of preference:
`codeinterp.benchmarks.task_pairs` keeps the first one that lines up with the clean prompt's
tokens for the model at hand.

Tasks:
- ``brackets``: what closes the line. The answer is the closers of every still-open bracket,
  innermost first, then the rest of the line and the newline. The counterfactual turns one
  character into an extra opener, so the closer count shifts by one. Sources: ``template`` (the
  published `#print the string N` / `print(str(...` template), ``code`` (nested calls,
  indexing, tuples, lists, dicts, mixed kinds, with pairs already closed earlier on the line),
  ``benchmark`` (lines cut out of HumanEval's and MBPP's canonical solutions where closers
  remain).
- ``variable_binding``: which variable a ``return`` (source ``return``) or a call argument
  (source ``call``) refers to; a comment fixes the wanted value. The corrupted prompt swaps the
  two bindings' values (kind ``swap``) or renames the bound variable (kind ``rename``), so the
  right identifier changes. The two answers start with different characters.
"""

from __future__ import annotations

import ast
import functools
import io
import json
import random
import textwrap
import tokenize

import polars as pl

from codeinterp.errors import ConfigError

TASKS = ("brackets", "variable_binding")
SOURCES = {"brackets": ("template", "code", "benchmark"), "variable_binding": ("return", "call")}
CLOSER = {"(": ")", "[": "]", "{": "}"}
SPEC_KEYS = ("benchmark", "pairs", "max_depth", "sources", "seed")
BENCHMARK_ONLY_KEYS = ("limit", "ids", "sample", "split")  # problem selection: means nothing here
MAX_ALTERNATIVES = 8

ALTERNATIVE = pl.Struct({"prompt": pl.Utf8, "answer": pl.Utf8, "diff_start": pl.Int64, "diff_end": pl.Int64})
SCHEMA: dict[str, pl.DataType] = {
    "pair_id": pl.Utf8, "task": pl.Utf8, "source": pl.Utf8, "kind": pl.Utf8, "depth": pl.Int64,
    "n_closed": pl.Int64, "clean_prompt": pl.Utf8, "corrupt_prompt": pl.Utf8, "clean_answer": pl.Utf8,
    "corrupt_answer": pl.Utf8, "diff_start": pl.Int64, "diff_end": pl.Int64, "open_chars": pl.List(pl.Int64),
    "closed_chars": pl.List(pl.Int64), "alternatives": pl.List(ALTERNATIVE),
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


def diff_region(clean: str, corrupt: str) -> tuple[int, int]:
    """[start, end) of the characters of `clean` that `corrupt` replaces. A pure insertion
    (an opener doubled) marks the character before it, the one the insertion merges with."""
    n = min(len(clean), len(corrupt))
    start = next((i for i in range(n) if clean[i] != corrupt[i]), n)
    suffix = 0
    while suffix < n - start and clean[-1 - suffix] == corrupt[-1 - suffix]:
        suffix += 1
    end = len(clean) - suffix
    return (start - 1, start) if end <= start else (start, end)


def _row(task, source, kind, clean, answer, corrupts, opens=None, closed=None, depth=None):
    """`corrupts`: (corrupted prompt, its answer) pairs, the preferred one first."""
    if opens is None:
        opens, closed = bracket_structure(clean)
    unique: dict[str, str] = {}
    for prompt, wrong in corrupts:
        unique.setdefault(prompt, wrong)  # the first offer of a prompt keeps its place
    first, *rest = list(unique.items())[: MAX_ALTERNATIVES + 1]
    start, end = diff_region(clean, first[0])
    alternatives = [{"prompt": p, "answer": a, **dict(zip(("diff_start", "diff_end"), diff_region(clean, p)))}
                    for p, a in rest]
    return {
        "task": task, "source": source, "kind": kind,
        "depth": len(opens) if depth is None else depth, "n_closed": len(closed) // 2,
        "clean_prompt": clean, "corrupt_prompt": first[0], "clean_answer": answer, "corrupt_answer": first[1],
        "diff_start": start, "diff_end": end, "open_chars": opens, "closed_chars": closed,
        "alternatives": alternatives,
    }


def _kind_of(closers: str) -> str:
    kinds = set(closers)
    return closers[0] if len(kinds) == 1 else "mixed"


# -- brackets ----------------------------------------------------------------------------
def extra_openers(clean: str, rest: str = "") -> list[tuple[str, str]]:
    """Corrupted versions of a cut line with one more unmatched opener, each with its answer
    (its closers + `rest` + newline), most local first: a space or operator after the
    innermost opener turned into `(` (`a[i - 1` -> `a[i(- 1`), the innermost `(` doubled,
    the same replacements before it, and last the cut character itself (often merging with
    the first closer into `()`); lines that stay Python go before those that do not."""
    opens, _ = bracket_structure(clean)
    line_start = clean.rfind("\n") + 1
    inner = opens[-1] if opens else line_start
    body_start = line_start + len(clean[line_start:]) - len(clean[line_start:].lstrip())
    spots = [p for p in range(len(clean) - 2, inner, -1) if clean[p] in " .,:+-*/%=<>&|"]
    tries = [(clean[:p] + "(" + clean[p + 1:], p) for p in spots]
    if opens and clean[inner] == "(":
        tries.append((clean[:inner] + "(" + clean[inner:], inner + 1))
    tries += [(clean[:p] + "(" + clean[p + 1:], p) for p in range(inner - 1, body_start, -1)
              if clean[p] in " .,:+-*/%=<>&|"]
    tries.append((clean[:-1] + "(", len(clean) - 1))
    out = []
    for corrupt, at in tries:
        if bracket_structure(corrupt)[0] == sorted(opens + [at]):  # not inside a string or comment
            out.append((corrupt, closers_for(corrupt) + rest + "\n"))
    return sorted(out, key=lambda offer: not line_parses(offer[0] + offer[1]))


def line_parses(text: str) -> bool:
    """Whether the last line of `text` (its last non-empty one) is a Python statement, as
    far as one line can be: a compound statement's header gets a body, `elif`/`except` a
    statement before them."""
    line = [x for x in text.splitlines() if x.strip()][-1].strip()
    body = line + " pass" if line.endswith(":") else line
    for head in ("", "if 1: pass\n", "try: pass\n"):
        try:
            ast.parse("def _():\n" + textwrap.indent(head + body, "    "))
            return True
        except SyntaxError:
            continue
    return False


def _template(rng: random.Random, n: int, max_depth: int) -> list[dict]:
    rows = []
    for i in range(n):
        depth = 1 + i % max_depth  # openers: print( + str( x (depth - 1)
        num = rng.randint(10, 99)
        head = f"#print the string {num}\nprint(" + "str(" * (depth - 1)
        clean = head + str(num)
        answer = ")" * depth + "\n"
        wrong = ")" * (depth + 1) + "\n"
        # Preferred: double the innermost opener (`((` is one token in most code vocabularies);
        # otherwise the number's first digit becomes the opener (byte-level vocabularies).
        corrupts = [(head + "(" + str(num), wrong), (head + "(" + str(num)[1:], wrong)]
        rows.append(_row("brackets", "template", ")", clean, answer, corrupts))
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
        for _ in range(depth):
            opener = _opener(rng, kinds)
            parts.append(opener)
            if rng.random() < 0.4:  # pairs closed earlier on the line, for the counting study
                parts.append(_closed_group(rng) + ", ")
                if opener.startswith("{"):  # the next item of a dict is a key: value
                    parts.append(f"'{rng.choice(NAMES)}': ")
        prefix = "".join(parts) + rng.choice(NAMES)
        attr = rng.choice(NAMES)
        clean = prefix + "." + attr
        answer = closers_for(clean) + "\n"
        # The attribute dot becomes the extra opener: `base.attr` -> `base(attr` (a call).
        corrupts = [(prefix + "(" + attr, ")" + answer)]
        corrupts += [offer for offer in extra_openers(clean) if line_parses(offer[0] + offer[1])]
        rows.append(_row("brackets", "code", _kind_of(answer.strip()), clean, answer, corrupts))
    return rows


@functools.lru_cache(maxsize=2)
def _benchmark_cuts(data_dir: str) -> tuple[tuple[str, str, int], ...]:
    """(prefix, rest, depth) of every cut of HumanEval's and MBPP's canonical solutions."""
    from codeinterp.benchmarks.datasets import load_problems

    cuts = []
    for name in ("humaneval", "mbpp"):
        for program in load_problems(name, data_dir)["canonical_solution"].to_list():
            for prefix, rest in _cuts((program or "").replace("\r\n", "\n")):
                cuts.append((prefix, rest, len(bracket_structure(prefix)[0])))
    return tuple(cuts)


def _cuts(program: str) -> list[tuple[str, str]]:
    """(prefix, rest of the line after its closers) at identifier or number ends of
    single-line statements where the source itself continues with the closers of every
    bracket still open on the line."""
    out = []
    start = 0
    statements = _statement_lines(program)
    for number, line in enumerate(program.splitlines(keepends=True), 1):
        body = line.rstrip("\n")
        if 0 < len(body) <= 100 and not body.lstrip().startswith("#") and number in statements:
            for j in range(1, len(body)):
                if body[j - 1].isalnum() and body[j] in ")]}":
                    prefix = program[: start + j]
                    closers = closers_for(prefix)
                    if closers and body[j:].startswith(closers):
                        out.append((prefix, body[j + len(closers):]))
        start += len(line)
    return out


def _statement_lines(program: str) -> set[int]:
    """Line numbers where a token starts with no bracket open (not inside a multi-line
    string or bracket), up to where Python's tokenizer gives up."""
    depth, lines = 0, set()
    try:
        for tok in tokenize.generate_tokens(io.StringIO(program).readline):
            if depth == 0 and tok.start[1] == len(tok.line) - len(tok.line.lstrip()):
                lines.add(tok.start[0])
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return lines


def _benchmark(rng: random.Random, n: int, max_depth: int, data_dir) -> list[dict]:
    if data_dir is None:
        raise ConfigError("datasets: the brackets benchmark source needs the data directory (data_dir)")
    cuts = [(p, rest) for p, rest, depth in _benchmark_cuts(str(data_dir)) if depth <= max_depth]
    rng.shuffle(cuts)
    rows = []
    for prefix, rest in cuts:
        if len(rows) == n:
            break
        line_start = prefix.rfind("\n") + 1
        clean = _last_lines(prefix[:line_start], 6) + prefix[line_start:]  # a few lines of context
        corrupts = extra_openers(clean, rest)
        if corrupts:
            closers = closers_for(clean)
            rows.append(_row("brackets", "benchmark", _kind_of(closers), clean, closers + rest + "\n", corrupts))
    return rows


def _last_lines(text: str, k: int) -> str:
    return "".join(text.splitlines(keepends=True)[-k:])


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


def _renames(rng: random.Random, a: str, b: str) -> list[str]:
    """Third names for the renamed binding, other first characters than `a` and `b`; names as
    long as `a` first (byte-level vocabularies: same token count)."""
    others = sorted({x for p in PAIRS for x in p if x[0] not in (a[0], b[0])})
    rng.shuffle(others)
    return sorted(others, key=lambda x: len(x) != len(a))


def _binding(rng: random.Random, n: int, source: str) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = rng.choice(PAIRS)
        if rng.random() < 0.5:
            a, b = b, a
        kind = "swap" if i % 2 == 0 else "rename"
        want = ROLES[a]
        # Only the containers the two roles read: short prompts keep patching affordable.
        params = ", ".join(dict.fromkeys(_container(ROLES[x]) for x in (a, b)))
        head = f"def pick({params}):\n"
        # The prompt ends before the identifier's leading space: BPE vocabularies fold it in.
        if source == "return":
            tail, lead = f"    # return {want}\n    return", " "
        else:
            tail, lead = f"    # log {want}\n    log(", ""
        clean = f"{head}    {a} = {ROLES[a]}\n    {b} = {ROLES[b]}\n{tail}"
        if kind == "swap":  # the two names trade values: the other name now holds `want`
            corrupts = [(f"{head}    {a} = {ROLES[b]}\n    {b} = {ROLES[a]}\n{tail}", lead + b)]
        else:  # the name holding `want` is renamed to a third name
            corrupts = [(f"{head}    {c} = {ROLES[a]}\n    {b} = {ROLES[b]}\n{tail}", lead + c)
                        for c in _renames(rng, a, b)]
        rows.append(_row("variable_binding", source, kind, clean, lead + a, corrupts, opens=[], closed=[], depth=2))
    return rows


def check_spec(spec: dict) -> tuple[str, list[str], int, int]:
    """(task, sources, pairs, max_depth) of a generated dataset's spec; one line naming the bad key."""
    task = spec.get("benchmark")
    if task not in TASKS:
        raise ConfigError(f"datasets: benchmark {task!r} is not a generated task ({', '.join(TASKS)})")
    unknown = [k for k in spec if k not in SPEC_KEYS and k not in BENCHMARK_ONLY_KEYS]
    if unknown:
        raise ConfigError(f"datasets.{unknown[0]}: not a key of a generated task (keys: {', '.join(SPEC_KEYS)})")
    misplaced = [k for k in BENCHMARK_ONLY_KEYS if spec.get(k) is not None]
    if misplaced:
        raise ConfigError(f"datasets.{misplaced[0]}: selects benchmark problems; a generated task uses pairs")
    sources = spec.get("sources") or list(SOURCES[task])
    wrong = [s for s in sources if s not in SOURCES[task]]
    if wrong:
        raise ConfigError(f"datasets.sources: {', '.join(map(str, wrong))} not a source of {task} "
                          f"(choose from {', '.join(SOURCES[task])})")
    sizes = {}
    for key, default, top in (("pairs", 200, None), ("max_depth", 6, 12)):
        value = spec.get(key, default)
        if value is None:
            value = default
        if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (top and value > top):
            raise ConfigError(f"datasets.{key}: {value!r} is not an integer from 1"
                              + (f" to {top}" if top else ""))
        sizes[key] = value
    return task, list(sources), sizes["pairs"], sizes["max_depth"]


def generate(spec: dict, data_dir=None, name: str | None = None) -> pl.DataFrame:
    """The candidate pairs of one generated dataset (`spec`: benchmark, pairs, max_depth,
    sources, seed; `name`: the dataset's name in pair ids, the task's by default);
    byte-identical for the same spec."""
    task, sources, n, max_depth = check_spec(spec)
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
            rows.append({"pair_id": f"{name or task}/{source}/{i:04d}", **row})
    return pl.DataFrame(rows, schema=SCHEMA)


def describe(df: pl.DataFrame) -> str:
    counts = df.group_by("source").len().sort("source")
    return json.dumps({s: int(c) for s, c in counts.iter_rows()})
