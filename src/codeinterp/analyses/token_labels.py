"""The token table (stage `token_labels`): one row per token of every target, with code labels.

Other stages join on (target_id, position). Labels come from Python's own `tokenize` and
`ast` run on the code text, mapped to the model's tokens through character offsets.

Text and offsets come from the token ids (the model saw ids, not text). The target's decoded
text is the tokenizer's decode of all its ids (special tokens kept, no clean-up of spaces);
`token_pieces` splits it into what each token adds, decoding incrementally over a short
window so that context-dependent rules (a SentencePiece decoder dropping the first piece's
leading space) apply as in the full decode, and checks the pieces against the full decode.
A token that decodes to part of a UTF-8 character adds nothing: it gets a zero-width span
at the character, and the token that completes the character covers it.

The code text is what the tokens of [all_start, all_end) decode to: the decoded text between
the first code token's start and the last one's end. A code text whose first statement is
indented (a function body completing a prompt's signature) is parsed inside `if True:` and
the wrapper is removed from the tree: its statements sit under Module at depth 1.

Each token's labels are those of its anchor: its first non-whitespace character, or its
first character when it is all whitespace, or, when zero-width, the character it is part of.

Columns (labels are null outside the code span, and the AST ones when parse_ok is false):
- target_id, problem_id; position (index in input_ids); token_id;
- token_text: what the token adds to the decoded text (concatenated in order they give it;
  "" for a token holding part of a character); char_start, char_end: its span in that text;
- in_code: position in [all_start, all_end); scored: position in [code_start, code_end);
- parse_ok: the target's code text parsed with `ast` (null without a code span);
- label_source: ast (parsed), tokenize (tokenize only), fallback (after the point where
  `tokenize` raised: a regular-expression lexer labels the rest; indent_level is null there);
- lexical: keyword, identifier, builtin (a builtin's name read as a variable: a Load of a
  Name; without the AST a builtin's name not after '.', 'def' or 'class'), operator (also
  stray characters tokenize cannot read), bracket_open, bracket_close, number, string (f-strings
  whole, as Python 3.11 tokenizes them), comment, newline_indent (NEWLINE, NL, INDENT,
  DEDENT, a line's leading indentation, a backslash continuation), whitespace (the rest);
- depth_paren, depth_square, depth_curly, depth_total: brackets of each kind open just before
  the token's anchor (the same as before its first character: whitespace holds no brackets).
  A closing bracket counts the bracket it closes; brackets in strings and comments do not
  count; an unmatched closing bracket leaves its kind's depth at 0;
- n_open, n_close: opening / closing brackets among the token's characters (`))` has 2);
- indent_level: blocks open on the token's logical line, counted from tokenize's INDENT and
  DEDENT (comment and blank lines before a DEDENT belong to the block they follow);
- in_string, in_comment: the anchor is inside a string literal / a comment;
- ast_node: type name of the innermost AST node whose source span holds the anchor (Module
  when none; Python 3.11 gives an f-string's parts the whole f-string's span, so those parts
  are skipped and the string's characters belong to the JoinedStr); ast_depth: its depth,
  Module 0;
- ident_role (identifiers and builtins, parse_ok only): def for a binding (function / class
  name, parameter, Store of a name or attribute: assignment, for, with, comprehension and
  walrus targets; import alias, global / nonlocal, except ... as, match capture), else use
  (Load, Del, attribute and keyword-argument names);
- straddles: the token's characters fall into more than one lexical category, whitespace
  and newline_indent not counted (`):` straddles, `))` and `\\n    return` do not);
- code_line: the line of code holding the anchor, without its newline (for tooltips).
"""

from __future__ import annotations

import ast
import bisect
import builtins
import io
import keyword
import re
import tokenize as tk
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from codeinterp.errors import ConfigError

LEXICAL = ("keyword", "identifier", "builtin", "operator", "bracket_open", "bracket_close", "number",
           "string", "comment", "newline_indent", "whitespace")
KEYWORD, IDENT, BUILTIN, OPERATOR, OPEN, CLOSE, NUMBER, STRING, COMMENT, NEWLINE, SPACE = range(len(LEXICAL))
BUILTINS = frozenset(n for n in dir(builtins) if not n.startswith("_"))
BRACKETS = {"(": (0, 1), ")": (0, -1), "[": (1, 1), "]": (1, -1), "{": (2, 1), "}": (2, -1)}
_LINE_TYPES = (tk.NEWLINE, tk.NL, tk.INDENT, tk.DEDENT)

TOKEN_SCHEMA = {
    "target_id": pl.Utf8, "problem_id": pl.Utf8, "position": pl.Int64, "token_id": pl.Int64,
    "token_text": pl.Utf8, "char_start": pl.Int64, "char_end": pl.Int64, "in_code": pl.Boolean,
    "scored": pl.Boolean, "parse_ok": pl.Boolean, "label_source": pl.Utf8, "lexical": pl.Utf8,
    "depth_paren": pl.Int64, "depth_square": pl.Int64, "depth_curly": pl.Int64, "depth_total": pl.Int64,
    "n_open": pl.Int64, "n_close": pl.Int64, "indent_level": pl.Int64, "in_string": pl.Boolean,
    "in_comment": pl.Boolean, "ast_node": pl.Utf8, "ast_depth": pl.Int64, "ident_role": pl.Utf8,
    "straddles": pl.Boolean, "code_line": pl.Utf8,
}



def decoder(tokenizer):
    """ids -> text: special tokens kept, no clean-up of spaces (the fast backend when there is one)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return lambda ids: backend.decode(ids, skip_special_tokens=False)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def token_pieces(decode, ids: list[int]) -> list[str]:
    """What each token adds to the decoded text; the pieces concatenate to `decode(ids)`.

    Each step decodes from a window start `w` one token before the first token not yet
    given out, so the cost is linear in the length. Trailing U+FFFD (an incomplete UTF-8
    character) is held back until a later token completes it.
    """
    n = len(ids)
    pieces = [""] * n
    w, given = 0, 0  # window start; characters of decode(ids[w:i]) already given out
    for i in range(n):
        text = decode(ids[w : i + 1])
        stable = len(text) if i == n - 1 else len(text.rstrip("\ufffd"))
        if stable > given:
            pieces[i], given = text[given:stable], stable
        if stable == len(text) and i + 1 < n:  # a clean boundary: slide, keeping one token of context
            w, given = i, len(decode(ids[i : i + 1]))
    if "".join(pieces) != decode(ids):
        raise ConfigError("token_labels: incremental decoding disagrees with the tokenizer's full decode "
                          "(unsupported tokenizer decoder)")
    return pieces



@dataclass
class PyTokens:
    """Python tokens of a code text as (type, string, start, end) with absolute character offsets."""

    toks: list[tuple[int, str, int, int]]
    levels: list[int]  # indent level of each token's logical line
    fallback_start: int  # characters from here on were lexed by the fallback


# Alternatives in order: strings before names (a prefix such as f or rb is a name's letters).
_FALLBACK = re.compile("|".join(f"(?P<{k}>{v})" for k, v in [
    ("comment", r"#[^\r\n]*"),
    ("string", r"(?i:[rbuf]{0,2})(?:'''[\s\S]*?(?:'''|\Z)|\"\"\"[\s\S]*?(?:\"\"\"|\Z)|'[^\n']*'?|\"[^\n\"]*\"?)"),
    ("number", tk.Number), ("name", r"\w+"), ("nl", r"\r?\n"), ("space", r"[ \t\f\\]+"), ("op", r"[^\s\w]"),
]))
_FALLBACK_TYPES = {"comment": tk.COMMENT, "string": tk.STRING, "number": tk.NUMBER, "name": tk.NAME,
                   "nl": tk.NL, "op": tk.OP}


def _fallback_tokens(code: str, start: int) -> list[tuple[int, str, int, int]]:
    """A plain regular-expression lexer for what `tokenize` could not read (no indentation)."""
    out = []
    for m in _FALLBACK.finditer(code, start):
        if m.lastgroup != "space" and m.end() > m.start():
            out.append((_FALLBACK_TYPES[m.lastgroup], m.group(), m.start(), m.end()))
    return out


def python_tokens(code: str, line_starts: list[int]) -> PyTokens:
    toks, levels, level = [], [], 0
    try:
        for t in tk.generate_tokens(io.StringIO(code).readline):
            if t.type in (tk.ENDMARKER, tk.ENCODING) or (t.type == tk.ERRORTOKEN and t.string.isspace()):
                continue
            level += (t.type == tk.INDENT) - (t.type == tk.DEDENT)
            s = line_starts[t.start[0] - 1] + t.start[1]
            e = line_starts[t.end[0] - 1] + t.end[1] if t.end[0] <= len(line_starts) else len(code)
            toks.append((t.type, t.string, s, e))
            levels.append(level)
    except (tk.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        start = toks[-1][3] if toks else 0
        rest = _fallback_tokens(code, start)
        return PyTokens(toks + rest, levels + [-1] * len(rest), start)
    return PyTokens(toks, levels, len(code))



def _parse(code: str) -> tuple[ast.Module | None, bool]:
    """The tree and whether it was parsed inside an `if True:` wrapper (an indented start)."""
    try:
        return ast.parse(code), False
    except (SyntaxError, ValueError):
        pass
    first = next((ln for ln in code.split("\n") if ln.strip() and not ln.lstrip().startswith("#")), "")
    if first[:1] in (" ", "\t"):
        try:
            return ast.parse("if True:\n" + code), True
        except (SyntaxError, ValueError):
            pass
    return None, False


def _top_nodes(tree: ast.Module, wrapped: bool) -> list[ast.AST]:
    if not wrapped:
        return list(tree.body)
    return list(tree.body[0].body) + list(tree.body[1:])


class Spans:
    """Source spans of AST nodes as character offsets in the code text."""

    def __init__(self, code: str, line_starts: list[int], line_shift: int):
        self.code, self.starts, self.shift = code, line_starts, line_shift

    def char(self, line: int, col: int) -> int:
        start = self.starts[line - 1 - self.shift]
        if not self.code[start : start + col].isascii():  # ast columns count UTF-8 bytes
            end = self.code.find("\n", start)
            col = len(self.code[start : None if end < 0 else end].encode()[:col].decode(errors="ignore"))
        return start + col

    def of(self, node: ast.AST) -> tuple[int, int] | None:
        if getattr(node, "lineno", None) is None or node.end_lineno is None or node.lineno - 1 - self.shift < 0:
            return None
        return self.char(node.lineno, node.col_offset), self.char(node.end_lineno, node.end_col_offset)


@dataclass
class AstLabels:
    node: np.ndarray  # per character: index into names/depths (0 = Module)
    names: list[str] = field(default_factory=lambda: ["Module"])
    depths: list[int] = field(default_factory=lambda: [0])
    binding_starts: set[int] = field(default_factory=set)  # first characters of binding NAME tokens
    name_starts: set[int] = field(default_factory=set)  # first characters of ast.Name nodes
    load_starts: set[int] = field(default_factory=set)  # ... of Name nodes read (Load)


def _names_in(name_starts: list[int], a: int, b: int) -> list[int]:
    return name_starts[bisect.bisect_left(name_starts, a) : bisect.bisect_left(name_starts, b)]


def _bindings(node: ast.AST, span: tuple[int, int], spans: Spans, names: list[int]) -> list[int]:
    """First characters of the identifier tokens this node binds (besides Store names)."""
    inside = _names_in(names, *span)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.arg)):
        return inside[:1]
    if isinstance(node, ast.alias) and node.name != "*":
        return inside[-1:] if node.asname else inside[:1]
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return inside
    if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
        return inside[-1:]
    if isinstance(node, ast.ExceptHandler) and node.name and node.body:
        body = spans.of(node.body[0])
        return _names_in(names, span[0], body[0] if body else span[1])[-1:]
    if (isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name) or (
            isinstance(node, ast.MatchMapping) and node.rest):
        return inside[-1:]
    return []


def ast_labels(code: str, line_starts: list[int], name_starts: list[int]) -> AstLabels | None:
    tree, wrapped = _parse(code)
    if tree is None:
        return None
    spans = Spans(code, line_starts, 1 if wrapped else 0)
    out = AstLabels(node=np.zeros(len(code), dtype=np.int32))
    # Pre-order, so a child's span overwrites its parent's. Python 3.11 gives an f-string's
    # parts (constants, formatted values, format specs) the whole f-string's span: such parts
    # are passed over so that the string's own characters stay with its JoinedStr.
    stack = [(n, 1, None) for n in reversed(_top_nodes(tree, wrapped))]
    while stack:
        node, depth, fstring = stack.pop()
        span = spans.of(node)
        passed_over = fstring is not None and span == fstring
        if span is not None and span[1] > span[0] and not passed_over:
            out.node[span[0] : span[1]] = len(out.names)
            out.names.append(type(node).__name__)
            out.depths.append(depth)
            out.binding_starts.update(_bindings(node, span, spans, name_starts))
            if isinstance(node, ast.Name):
                out.name_starts.add(span[0])
                if isinstance(node.ctx, ast.Store):
                    out.binding_starts.add(span[0])
                elif isinstance(node.ctx, ast.Load):
                    out.load_starts.add(span[0])
        inner = span if isinstance(node, ast.JoinedStr) else fstring if passed_over else None
        stack.extend((k, depth + 1, inner) for k in reversed(list(ast.iter_child_nodes(node))))
    return out



def _name_category(string: str, start: int, prev: str | None, al: AstLabels | None) -> int:
    if keyword.iskeyword(string):
        return KEYWORD
    if al is not None:
        # A soft keyword (match, case, _) is a keyword where the tree holds no name there.
        if keyword.issoftkeyword(string) and start not in al.name_starts and start not in al.binding_starts:
            return KEYWORD
        return BUILTIN if string in BUILTINS and start in al.load_starts else IDENT
    return BUILTIN if string in BUILTINS and prev not in (".", "def", "class") else IDENT


def _category(typ: int, string: str, start: int, prev: str | None, al: AstLabels | None) -> int:
    if typ == tk.NAME:
        return _name_category(string, start, prev, al)
    if typ == tk.OP and string in BRACKETS:
        return OPEN if BRACKETS[string][1] > 0 else CLOSE
    simple = {tk.NUMBER: NUMBER, tk.STRING: STRING, tk.COMMENT: COMMENT}
    if typ in simple:
        return simple[typ]
    if typ in _LINE_TYPES:
        return NEWLINE
    return STRING if tk.tok_name.get(typ, "").startswith("FSTRING") else OPERATOR


class CodeLabels:
    """Labels of every character of one code text, and of any span of it (`span_labels`)."""

    def __init__(self, code: str):
        self.code = code
        n = len(code)
        self.line_starts = [0] + [i + 1 for i, c in enumerate(code) if c == "\n"]
        pt = python_tokens(code, self.line_starts)
        self.fallback_start = pt.fallback_start
        names = sorted(s for t, string, s, _ in pt.toks if t == tk.NAME and not keyword.iskeyword(string))
        self.ast = ast_labels(code, self.line_starts, names)
        self.cat = np.full(n, SPACE, dtype=np.int8)
        self.tok = np.full(n, -1, dtype=np.int32)
        self.level = np.full(n, -1, dtype=np.int32)
        self.roles: list[str | None] = []
        self._fill(pt)
        self._gaps()
        self._brackets(pt)

    def _fill(self, pt: PyTokens) -> None:
        pos, prev = 0, None
        for k, (typ, string, a, b) in enumerate(pt.toks):
            level = pt.levels[k]
            self.level[pos:a] = level  # a gap (leading indentation) belongs to the next token's line
            cat = _category(typ, string, a, prev, self.ast)
            self.cat[a:b], self.tok[a:b], self.level[a:b] = cat, k, level
            pos = max(pos, b)
            named = cat in (IDENT, BUILTIN) and self.ast is not None
            self.roles.append(("def" if a in self.ast.binding_starts else "use") if named else None)
            if typ not in (tk.NL, tk.COMMENT, tk.INDENT, tk.DEDENT):
                prev = string
        if pt.levels:
            self.level[pos:] = pt.levels[-1]

    def _gaps(self) -> None:
        """Characters no token covers: leading indentation, newlines and backslash continuations
        are newline_indent, the rest whitespace."""
        code, gap = self.code, self.tok < 0
        for i in np.flatnonzero(gap):
            if code[i] in "\r\n\\":
                self.cat[i] = NEWLINE
        for start in self.line_starts:
            j = start
            while j < len(code) and gap[j] and code[j] in " \t\f":
                self.cat[j] = NEWLINE
                j += 1

    def _brackets(self, pt: PyTokens) -> None:
        depth = [0, 0, 0]
        self.events, after = [], [(0, 0, 0)]
        opens, closes = np.zeros(len(self.code) + 1, np.int64), np.zeros(len(self.code) + 1, np.int64)
        for typ, string, a, _ in pt.toks:
            if typ == tk.OP and string in BRACKETS:
                kind, step = BRACKETS[string]
                depth[kind] = max(0, depth[kind] + step)  # an unmatched closing bracket stays at 0
                self.events.append(a)
                after.append(tuple(depth))
                (opens if step > 0 else closes)[a + 1] += 1
        self.after = np.array(after, dtype=np.int64)
        self.opens, self.closes = np.cumsum(opens), np.cumsum(closes)

    def anchor(self, a: int, b: int) -> int:
        for j in range(a, b):
            if not self.code[j].isspace():
                return j
        return min(a, len(self.code) - 1)

    def span_labels(self, a: int, b: int) -> dict:
        """Labels of the token covering code characters [a, b) (see the module docstring)."""
        j = self.anchor(a, b)
        cat = int(self.cat[j])
        paren, square, curly = self.after[bisect.bisect_left(self.events, j)].tolist()
        k = int(self.tok[j])
        line = bisect.bisect_right(self.line_starts, j) - 1
        end = self.line_starts[line + 1] if line + 1 < len(self.line_starts) else len(self.code)
        ast_ok = self.ast is not None
        level = int(self.level[j])
        return {
            "parse_ok": ast_ok,
            "label_source": "fallback" if j >= self.fallback_start else "ast" if ast_ok else "tokenize",
            "lexical": LEXICAL[cat],
            "depth_paren": paren, "depth_square": square, "depth_curly": curly,
            "depth_total": paren + square + curly,
            "n_open": int(self.opens[b] - self.opens[a]), "n_close": int(self.closes[b] - self.closes[a]),
            "indent_level": level if level >= 0 else None,
            "in_string": cat == STRING, "in_comment": cat == COMMENT,
            "ast_node": self.ast.names[self.ast.node[j]] if ast_ok else None,
            "ast_depth": self.ast.depths[self.ast.node[j]] if ast_ok else None,
            "ident_role": self.roles[k] if k >= 0 else None,
            "straddles": len(set(self.cat[a:b].tolist()) - {SPACE, NEWLINE}) > 1,
            "code_line": self.code[self.line_starts[line] : end].rstrip("\r\n"),
        }



REQUIRED = ("target_id", "problem_id", "input_ids", "code_start", "code_end", "all_start", "all_end")
LABELS = list(TOKEN_SCHEMA)[9:]  # parse_ok onwards: null outside the code span


def _target_rows(decode, row: dict) -> pl.DataFrame:
    cols: dict[str, list] = {k: [] for k in TOKEN_SCHEMA}
    ids = list(row["input_ids"])
    try:
        pieces = token_pieces(decode, ids)
    except ConfigError as err:
        raise ConfigError(f"target {row['target_id']}: {err}") from None
    ends = np.cumsum([len(p) for p in pieces]).tolist()
    starts = [0] + ends[:-1]
    a0, a1 = row["all_start"], row["all_end"]
    has_code = a0 is not None and a1 is not None and a1 > a0 and ends[a1 - 1] > starts[a0]
    if has_code:
        c0 = starts[a0]
        labels = CodeLabels("".join(pieces[a0:a1]))
    s0, s1 = row["code_start"], row["code_end"]
    for p, (tid, piece) in enumerate(zip(ids, pieces)):
        code = has_code and a0 <= p < a1
        base = {"target_id": row["target_id"], "problem_id": row["problem_id"], "position": p, "token_id": tid,
                "token_text": piece, "char_start": starts[p], "char_end": ends[p], "in_code": code,
                "scored": s0 is not None and s0 <= p < s1}
        values = labels.span_labels(starts[p] - c0, ends[p] - c0) if code else {}
        if has_code and not code:
            values = {"parse_ok": labels.ast is not None}
        for k, v in base.items():
            cols[k].append(v)
        for k in LABELS:
            cols[k].append(values.get(k))
    return pl.DataFrame(cols, schema=TOKEN_SCHEMA)


def token_table(targets: pl.DataFrame, tokenizer) -> pl.DataFrame:
    """One row per token of every target (columns in the module docstring), sorted by
    (target_id, position)."""
    missing = [c for c in REQUIRED if c not in targets.columns]
    if missing:
        raise ConfigError(f"targets table lacks column(s) {', '.join(missing)}")
    decode = decoder(tokenizer)
    # A frame per target keeps memory at Polars' size rather than Python objects per cell.
    frames = [_target_rows(decode, row) for row in targets.sort("target_id").iter_rows(named=True)]
    return pl.concat(frames, rechunk=True) if frames else pl.DataFrame(schema=TOKEN_SCHEMA)
