"""Prompts, one builder per dataset, and turning a completion back into a runnable program.

The prompt text built here is recorded with every generation, and analyses rebuild their
contexts from the recorded text, so what an analysis scores is exactly what the model saw.

Two modes:
- `code`: the model is asked for code only, and the answer is pre-filled with an opening
  python fence, so the completion is the code itself and generation stops at the fence.
- `reasoning`: the model explains first, then gives the code in a python fence.
"""

from __future__ import annotations

import re

from .errors import ConfigError

MODES = ("code", "reasoning")
FENCE = "```"
CODE_PREFILL = "```python\n"

_CODE_ONLY = "Answer with only the complete Python code in a single ```python code block."
_REASONING = (
    "First explain your approach in a few sentences, then give the complete Python code "
    "in a single ```python code block."
)


def task_text(row: dict) -> str:
    """What the user asks, per dataset; no chat formatting."""
    dataset = row["dataset"]
    if dataset == "humaneval":
        return "Complete the following Python function.\n\n```python\n" + row["prompt"].rstrip() + "\n```"
    if dataset.startswith("mbpp"):
        return row["prompt"].rstrip()
    if row["test_type"] == "stdin":
        return (
            row["prompt"].rstrip()
            + "\n\nWrite a Python program that reads the input from standard input and "
            "prints the answer to standard output."
        )
    return row["prompt"].rstrip() + "\n\nUse this starter code:\n```python\n" + row["starter_code"].rstrip() + "\n```"


def build_prompt(row: dict, tokenizer, mode: str, chat: bool) -> str:
    """The full prompt string, special tokens written out as text (tokenise it without adding any)."""
    if mode not in MODES:
        raise ConfigError(f"prompt mode {mode!r} is not one of {', '.join(MODES)}")
    if not chat:
        # Completion-style for base models: the code itself is the prompt.
        head = row["starter_code"] if row["starter_code"] else "# " + task_text(row).replace("\n", "\n# ") + "\n"
        return head
    instruction = task_text(row) + "\n\n" + (_CODE_ONLY if mode == "code" else _REASONING)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
    )
    return text + CODE_PREFILL if mode == "code" else text


def stop_sequences(mode: str, chat: bool) -> list[str]:
    if chat and mode == "code":
        return [FENCE]
    if not chat:
        return ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
    return []


_BLOCK = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str, prefilled: bool) -> str:
    """The code in a completion: up to the closing fence when the fence was pre-filled,
    otherwise the last fenced block, otherwise the whole text."""
    if prefilled:
        return completion.split(FENCE, 1)[0]
    blocks = _BLOCK.findall(completion)
    if blocks:
        return blocks[-1]
    return completion


def _imports_of(source: str) -> str:
    lines = [ln for ln in source.splitlines() if re.match(r"^(import |from \S+ import )", ln)]
    return "\n".join(lines) + ("\n" if lines else "")


def build_program(row: dict, code: str) -> str:
    """A runnable program from extracted code.

    When the code defines the entry point, it stands alone (plus the starter's imports, which
    models often leave out); otherwise it is a body continuing the starter code, as in
    HumanEval's completion format.
    """
    entry = row.get("entry_point") or ""
    starter = row.get("starter_code") or ""
    defines_entry = bool(entry) and re.search(rf"^\s*def {re.escape(entry)}\s*\(", code, re.MULTILINE)
    if not starter or row.get("test_type") == "stdin":
        return code
    if defines_entry or re.search(r"^class Solution\b", code, re.MULTILINE):
        return _imports_of(starter) + code
    return starter + code
