"""Prompts, one builder per benchmark, and turning a completion back into a runnable program.

The prompt text built here is recorded with every generation, together with its token ids,
and analyses rebuild their contexts from those ids, so what an analysis scores is exactly
what the model saw.

Chat models (`chat: true`) get one of two modes:
- `code`: the model is asked for code only, and the answer is pre-filled with an opening
  python fence, so the completion is the code itself and generation stops at the fence.
- `reasoning`: the model explains first, then gives the code in a python fence.

Base models (`chat: false`) continue a code-shaped prompt, one per benchmark kind, each
ending where the program starts so that a stop sequence can cut the program at its end:
- humaneval: the benchmark's own prompt (signature + docstring); Codex stops.
- mbpp: the task and its tests in a module docstring (bigcode-evaluation-harness format);
  the whole program follows, cut at the first top-level test, print or new docstring.
- leetcode (LiveCodeBench functional): the statement in a docstring, then the starter
  `class Solution` code; the method body follows, cut at the first top-level line.
- stdin (LiveCodeBench AtCoder): the statement, then an opening python fence; the program
  is cut at the closing fence (a stdin program prints at top level, so no `print` stop).
"""

from __future__ import annotations

import ast
import re

from codeinterp.errors import ConfigError

MODES = ("code", "reasoning")
KINDS = ("humaneval", "mbpp", "leetcode", "stdin")
FENCE = "```"
CODE_PREFILL = "```python\n"

_CODE_ONLY = "Answer with only the complete Python code in a single ```python code block."
_REASONING = (
    "First explain your approach in a few sentences, then give the complete Python code "
    "in a single ```python code block."
)
_STDIN_ASK = (
    "Write a Python program that reads the input from standard input and prints the answer "
    "to standard output."
)

# Stops for base-model completion, matched in the generated text only. Each list holds only
# strings that cannot occur inside the part of the program the prompt asks for.
COMPLETION_STOPS = {
    # Chen et al. (2021): the body ends at the first top-level line.
    "humaneval": ["\nclass", "\ndef", "\n#", "\nif", "\nprint"],
    # A whole program: helpers (`def`), imports and classes must survive; tests, demo
    # prints, a main block or the next task's docstring end it.
    "mbpp": ["\nassert", "\nprint(", "\nif __name__", '\n"""', "\n```"],
    # A method body inside `class Solution`: any top-level line ends it.
    "leetcode": ["\nclass", "\ndef", "\n#", "\nif", "\nprint", "\nassert", '\n"""'],
    "stdin": [FENCE],
}


def kind_of(row: dict) -> str:
    """Which program shape a problem asks for: one of KINDS."""
    dataset = row["dataset"]
    if dataset == "humaneval":
        return "humaneval"
    if dataset.startswith("mbpp"):
        return "mbpp"
    return "stdin" if row["test_type"] == "stdin" else "leetcode"


def starter(row: dict) -> str:
    """The starter code ending in a newline.

    LiveCodeBench starters end in the body's indentation ("...:\\n        "); a prompt
    ending in spaces leaves the model to continue mid-token, so the trailing spaces go and
    the body brings its own indentation, in the prompt and in the program alike.
    """
    s = row.get("starter_code") or ""
    if not s:
        return ""
    s = s.rstrip(" \t")
    return s if s.endswith("\n") else s + "\n"


def task_text(row: dict) -> str:
    """What the user asks, per dataset; no chat formatting."""
    kind = kind_of(row)
    if kind == "humaneval":
        return "Complete the following Python function.\n\n```python\n" + row["prompt"].rstrip() + "\n```"
    if kind == "mbpp":
        return row["prompt"].rstrip()
    if kind == "stdin":
        return row["prompt"].rstrip() + "\n\n" + _STDIN_ASK
    return row["prompt"].rstrip() + "\n\nUse this starter code:\n```python\n" + row["starter_code"].rstrip() + "\n```"


def _docstring(text: str) -> str:
    text = text.replace("\r\n", "\n").replace('"""', "'''").strip()
    return '"""\n' + text + '\n"""\n'


def completion_prompt(row: dict) -> str:
    """The code-shaped prompt a base model continues (see the module docstring)."""
    kind = kind_of(row)
    if kind == "humaneval":
        return row["prompt"]
    if kind == "mbpp":
        return _docstring(row["prompt"])
    if kind == "leetcode":
        return _docstring(row["prompt"]) + "\n" + starter(row)
    return row["prompt"].replace("\r\n", "\n").strip() + "\n\n" + _STDIN_ASK + "\n\n" + CODE_PREFILL


def build_prompt(row: dict, tokenizer, mode: str, chat: bool) -> str:
    """The full prompt string, special tokens written out as text; `encode_prompt` tokenises it."""
    if mode not in MODES:
        raise ConfigError(f"prompt mode {mode!r} is not one of {', '.join(MODES)}")
    if not chat:
        return completion_prompt(row)
    instruction = task_text(row) + "\n\n" + (_CODE_ONLY if mode == "code" else _REASONING)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
    )
    return text + CODE_PREFILL if mode == "code" else text


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer's own settings put before any text (BOS for Llama, Gemma, ...)."""
    probe = "x"
    with_special = tokenizer(probe, add_special_tokens=True)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for k in range(len(with_special) - len(plain) + 1):
        if with_special[k : k + len(plain)] == plain:
            return list(with_special[:k])
    return []


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Prompt token ids with the tokenizer's BOS exactly once.

    Base models degrade without the BOS their tokenizer adds; chat templates that want a
    BOS write it as text, and adding another would double it. So the text is tokenised
    without special tokens and the tokenizer's prefix goes in front unless already there.
    Suffix tokens some tokenizers append (EOS) are never added to a prompt.
    """
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    prefix = special_prefix(tokenizer)
    if prefix and ids[: len(prefix)] != prefix:
        ids = prefix + ids
    return ids


def decode_continuation(tokenizer, prompt_ids: list[int], ids: list[int], context: int = 8) -> str:
    """The text `ids` add after `prompt_ids`.

    Decoding generated ids on their own loses what depends on the left context:
    SentencePiece tokenizers drop the leading space of the first piece, which turns a
    4-space indented body into a 3-space one. So the last few prompt tokens are decoded
    with them and their text is removed again. Special tokens among `ids` (EOS, padding)
    are left out, as `skip_special_tokens` would.
    """
    special = set(tokenizer.all_special_ids)
    ids = [t for t in ids if t not in special]
    left = list(prompt_ids[-context:]) if context else []
    head = tokenizer.decode(left, skip_special_tokens=False)
    full = tokenizer.decode(left + ids, skip_special_tokens=False)
    if full.startswith(head):
        return full[len(head) :]
    return tokenizer.decode(ids, skip_special_tokens=False)


# Text a code fragment can follow without merging into one token with it; the first that
# splits cleanly stands in for "the prompt" when the real prompt would merge.
_ANCHORS = (";", "\n", "x", "#")


def _offsets_encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def encode_continuation(tokenizer, prompt_text: str, prompt_ids: list[int], answer: str) -> tuple[list[int], list[tuple[int, int]], bool]:
    """Token ids of `answer` as it follows `prompt_ids`, with character offsets into `answer`.

    The prompt's ids are fixed (they are what generation fed the model), so the answer is
    tokenised to follow them. When prompt + answer tokenise to the prompt's own ids followed
    by tokens starting at the boundary, those tokens are the answer's (`joint` True). When a
    token would straddle the boundary (a prompt ending in "\n" before an indented body
    merges into one "\n   " token in GPT-2-style BPE), the answer is tokenised on its own
    after an anchor that does not merge with it, as a model continuing the prompt token by
    token would produce it (`joint` False).
    """
    n = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    ids, offs = _offsets_encode(tokenizer, prompt_text + answer)
    plain = prompt_ids[len(prompt_ids) - n :] if n else []
    if ids[:n] == list(plain) and (n == len(ids) or offs[n][0] >= len(prompt_text)):
        p = len(prompt_text)
        return ids[n:], [(s - p, e - p) for s, e in offs[n:]], True
    for anchor in _ANCHORS:
        a = tokenizer(anchor, add_special_tokens=False)["input_ids"]
        ids, offs = _offsets_encode(tokenizer, anchor + answer)
        k, m = len(a), len(anchor)
        if ids[:k] == list(a) and (k == len(ids) or offs[k][0] >= m) and (k == 0 or offs[k - 1][1] <= m):
            return ids[k:], [(s - m, e - m) for s, e in offs[k:]], False
    ids, offs = _offsets_encode(tokenizer, answer)
    return ids, offs, False


def continuation_offsets(tokenizer, prompt_ids: list[int], ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The text generated ids add after the prompt and each token's character span in it.

    A token's end is the length of the text decoded up to it; a partial UTF-8 character
    decodes to U+FFFD until its last byte arrives, so each end is the smallest end at or
    after it. Special tokens (EOS) get an empty span.
    """
    ends = [len(decode_continuation(tokenizer, prompt_ids, ids[: i + 1])) for i in range(len(ids))]
    for i in range(len(ends) - 2, -1, -1):
        ends[i] = min(ends[i], ends[i + 1])
    starts = [0] + ends[:-1]
    return decode_continuation(tokenizer, prompt_ids, ids), list(zip(starts, ends))


def stop_sequences(mode: str, chat: bool, row: dict) -> list[str]:
    """Stop strings for one problem; they apply to the generated text only."""
    if chat:
        return [FENCE] if mode == "code" else []
    return list(COMPLETION_STOPS[kind_of(row)])


def is_prefilled(prompt: str) -> bool:
    """Whether the prompt opened the code fence, so the code runs up to the closing one."""
    return prompt.endswith(CODE_PREFILL)


_BLOCK = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code_span(completion: str, prefilled: bool) -> tuple[int, int]:
    """Character span of the code in a completion: up to the closing fence when the fence
    was pre-filled, otherwise the last fenced block, otherwise the whole text."""
    if prefilled:
        end = completion.find(FENCE)
        return 0, len(completion) if end < 0 else end
    last = None
    for last in _BLOCK.finditer(completion):
        pass
    if last is not None:
        return last.span(1)
    return 0, len(completion)


def extract_code(completion: str, prefilled: bool) -> str:
    start, end = extract_code_span(completion, prefilled)
    return completion[start:end]


def _imports_of(source: str) -> str:
    lines = [ln for ln in source.splitlines() if re.match(r"^(import |from \S+ import )", ln)]
    return "\n".join(lines) + ("\n" if lines else "")


def _future_first(program: str) -> str:
    """`from __future__` imports must open a module; an answer appended to a prompt may carry one."""
    future = re.findall(r"^from __future__ import [^\n]*\n?", program, re.MULTILINE)
    if not future:
        return program
    rest = re.sub(r"^from __future__ import [^\n]*\n?", "", program, flags=re.MULTILINE)
    return "".join(f if f.endswith("\n") else f + "\n" for f in future) + rest


def build_program(row: dict, code: str) -> str:
    """A runnable program from extracted code.

    - stdin and MBPP: the code alone (there is no starter to continue).
    - HumanEval: the whole prompt, then the code. A body continues the prompt's signature;
      a full definition of the entry point overrides the prompt's docstring-only one while
      the prompt's imports and helper functions (HumanEval/10, /32, /38, /50) stay defined.
    - LeetCode: a `class Solution` answer stands alone plus the starter's imports; a body
      continues the starter.
    """
    kind = kind_of(row)
    if kind in ("stdin", "mbpp"):
        return code
    head = starter(row)
    entry = row.get("entry_point") or ""
    if kind == "humaneval":
        if entry and re.search(rf"^def {re.escape(entry)}\s*\(", code, re.MULTILINE):
            return _future_first(head + "\n" + code)
        return head + code
    if re.search(r"^class Solution\b", code, re.MULTILINE):
        return _future_first(_imports_of(head) + code)
    return head + code


def _line_starts(code: str) -> list[int]:
    starts = [0]
    for m in re.finditer("\n", code):
        starts.append(m.end())
    return starts


def body_span(row: dict, code: str) -> tuple[int, int]:
    """Character span of the solution body in `code`.

    For HumanEval and LeetCode, a full definition of the entry point repeats the given
    signature and docstring; the body starts on the line after the docstring (or at the
    first statement when there is none) and runs to the end of the code. For everything
    else (MBPP, stdin programs, bare bodies from completion mode) the whole code is the body.
    """
    whole = (0, len(code))
    entry = row.get("entry_point") or ""
    if kind_of(row) not in ("humaneval", "leetcode") or not entry:
        return whole
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return whole
    fn = next((n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry), None)
    if fn is None or not fn.body:
        return whole
    starts = _line_starts(code)
    # The docstring, possibly after imports the prompt puts first (HumanEval/115).
    lead = 0
    while lead < len(fn.body) - 1 and isinstance(fn.body[lead], (ast.Import, ast.ImportFrom)):
        lead += 1
    doc = fn.body[lead]
    first = fn.body[0]
    if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
        line = doc.end_lineno  # 1-based: the next line's index in `starts`
        start = starts[line] if line < len(starts) else len(code)
    else:
        # No docstring: the body starts on the line after the signature, comments included.
        header = max([fn.lineno] + [n.end_lineno or 0 for n in ast.walk(fn.args) if hasattr(n, "end_lineno")]
                     + ([fn.returns.end_lineno or 0] if fn.returns else []))
        if first.lineno <= header:
            return whole  # a one-line definition: nothing separates signature from body
        start = starts[header] if header < len(starts) else len(code)
    return start, len(code)
