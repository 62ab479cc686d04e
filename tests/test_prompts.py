"""Prompts, stops, token ids and programs per benchmark and mode (known answers, no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from codeinterp.benchmarks import prompts
from codeinterp.benchmarks.datasets import load_problems
from codeinterp.benchmarks.generation import cut_at_stop
from codeinterp.access.models import byte_tokenizer

REPO = Path(__file__).resolve().parents[1]

# "\n" + " " merge into one token, so a prompt ending in "\n" followed by an indented body
# tokenises differently together than apart (as GPT-2-style BPE vocabularies do).
MERGES = (("Ċ", "Ġ"), ("r", "e"), ("t", "u"), ("re", "tu"), ("retu", "r"), ("retur", "n"))
BOS_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def bpe_tokenizer(bos: bool = True, merges=MERGES) -> PreTrainedTokenizerFast:
    """A byte-level BPE whose post-processor adds `<s>` as Llama/Gemma tokenizers do."""
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for s in ("<s>", "</s>", "<pad>"):
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = BOS_TEMPLATE
    return fast


def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece-style: spaces become "▁" and the decoder drops the first piece's leading one."""
    chars = "▁abcdefghijklmnopqrstuvwxyz0123456789():=+\n\"'#"
    vocab = {c: i for i, c in enumerate(chars)}
    vocab["</s>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")


def row(dataset="humaneval", **kw) -> dict:
    base = {"dataset": dataset, "problem_id": "P", "prompt": "", "entry_point": "", "starter_code": "",
            "canonical_solution": None, "test_type": "assert", "tests": "{}"}
    return {**base, **kw}


HELPER_PROMPT = (
    "def helper(x: int) -> int:\n    return x + 1\n\n\n"
    "def f(x: int) -> int:\n    \"\"\" helper(x) doubled\n    >>> f(1)\n    4\n    \"\"\"\n"
)
HE = row(prompt=HELPER_PROMPT, starter_code=HELPER_PROMPT, entry_point="f")
LEETCODE = row("livecodebench", problem_id="L", prompt="Return x + 2.\n\nExample 1:\nInput: x = 1\nOutput: 3",
               starter_code="class Solution:\n    def f(self, x: int) -> int:\n        ", entry_point="f")
STDIN = row("livecodebench", problem_id="S", prompt="Print N + 1.\r\n\nInput\n\nN", test_type="stdin")
MBPP = row("mbpp", problem_id="Mbpp/1", prompt="Write a function f.\nYour code should pass these tests:\n\nassert f(1) == 2\n",
           entry_point="f")


def run(program: str, call: str):
    scope: dict = {"__name__": "not_main"}
    exec(compile(program, "<program>", "exec"), scope)
    return eval(call, scope)


# --- programs ---------------------------------------------------------------------------

def test_humaneval_full_definition_keeps_prompt_helpers():
    program = prompts.build_program(HE, "def f(x):\n    return 2 * helper(x)\n")
    assert run(program, "f(1)") == 4


def test_humaneval_body_continues_prompt():
    assert run(prompts.build_program(HE, "    return 2 * helper(x)\n"), "f(1)") == 4


def test_future_import_in_answer_stays_first():
    program = prompts.build_program(HE, "from __future__ import annotations\ndef f(x):\n    return 2 * helper(x)\n")
    assert program.startswith("from __future__ import annotations\n")
    assert run(program, "f(1)") == 4


def test_leetcode_multiline_body_continues_starter():
    """The starter ends in the body's indentation; a body bringing its own must not double it."""
    program = prompts.build_program(LEETCODE, "        y = x + 2\n        return y\n")
    assert run(program, "Solution().f(1)") == 3
    program = prompts.build_program(LEETCODE, "class Solution:\n    def f(self, x):\n        return x + 2\n")
    assert run(program, "Solution().f(1)") == 3


def test_mbpp_and_stdin_programs_are_the_code():
    assert prompts.build_program(MBPP, "import re\ndef f(x):\n    return x + 1\n") == "import re\ndef f(x):\n    return x + 1\n"
    assert prompts.build_program(STDIN, "print(int(input()) + 1)\n") == "print(int(input()) + 1)\n"


# --- completion prompts and stops ------------------------------------------------------

def stops(r):
    return prompts.stop_sequences("code", False, r)


def test_mbpp_completion_keeps_imports_and_helpers():
    prompt = prompts.build_prompt(MBPP, None, "code", chat=False)
    assert prompt.startswith('"""\nWrite a function f.') and "assert f(1) == 2" in prompt and prompt.endswith('"""\n')
    program = "import re\ndef g(x):\n    return x\n\n# f uses g\ndef f(x):\n    print(x)\n    return g(x) + 1\n"
    assert cut_at_stop(program + "\nassert f(1) == 2\n", stops(MBPP)) == (program, True)
    assert cut_at_stop(program + "\nprint(f(1))\n", stops(MBPP)) == (program, True)
    assert cut_at_stop(program + '\n"""\nWrite a function h.\n', stops(MBPP)) == (program, True)


def test_stdin_completion_is_cut_at_the_fence_only():
    prompt = prompts.build_prompt(STDIN, None, "code", chat=False)
    assert prompt.startswith("Print N + 1.\n") and "\r" not in prompt and prompt.endswith("```python\n")
    program = "n = int(input())\nprint(n + 1)\n# done\nif n:\n    print(n)\n"
    assert cut_at_stop(program + "```\nExplanation", stops(STDIN)) == (program, True)


def test_leetcode_completion_prompt_has_statement_and_starter():
    prompt = prompts.build_prompt(LEETCODE, None, "code", chat=False)
    assert prompt.startswith('"""\nReturn x + 2.') and "Output: 3" in prompt
    assert prompt.endswith('"""\n\nclass Solution:\n    def f(self, x: int) -> int:\n')
    body = "        y = x + 2\n        return y\n"
    assert cut_at_stop(body + "\nprint(Solution().f(1))\n", stops(LEETCODE)) == (body, True)


def test_humaneval_completion_uses_codex_stops():
    assert stops(HE) == ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
    assert prompts.build_prompt(HE, None, "code", chat=False) == HELPER_PROMPT


def test_chat_stops_do_not_depend_on_benchmark():
    for r in (HE, MBPP, STDIN, LEETCODE):
        assert prompts.stop_sequences("code", True, r) == ["```"]
        assert prompts.stop_sequences("reasoning", True, r) == []


# --- token ids --------------------------------------------------------------------------

def test_bos_added_once_when_the_tokenizer_adds_one():
    tok = bpe_tokenizer()
    bos = tok.bos_token_id
    assert tok("x")["input_ids"][0] == bos  # the tokenizer's own setting
    assert prompts.encode_prompt(tok, "def f():\n")[:2] == [bos, tok("d", add_special_tokens=False)["input_ids"][0]]
    chat = prompts.build_prompt(HE, tok, "code", chat=True)
    assert chat.startswith("<s><|user|>")
    ids = prompts.encode_prompt(tok, chat)
    assert ids[0] == bos and ids[1] != bos and ids.count(bos) == 1


def test_no_bos_when_the_tokenizer_adds_none():
    tok = byte_tokenizer()
    assert prompts.encode_prompt(tok, "def f") == tok("def f", add_special_tokens=False)["input_ids"]
    assert prompts.encode_prompt(bpe_tokenizer(bos=False), "x") == [ord("x") - 33]  # byte "x", no prefix


def test_decode_continuation_keeps_the_leading_space_sentencepiece_drops():
    tok = metaspace_tokenizer()
    prompt_ids = tok('"""\n', add_special_tokens=False)["input_ids"]
    body_ids = tok.convert_tokens_to_ids(list("▁▁▁▁return▁1"))  # "    return 1" after a newline
    assert tok.decode(body_ids) == "   return 1"  # decoded alone: one space short
    assert prompts.decode_continuation(tok, prompt_ids, body_ids) == "    return 1"


def test_encode_continuation_never_merges_into_the_prompt():
    tok = bpe_tokenizer()
    context = "def f():\n"
    prompt_ids = prompts.encode_prompt(tok, context)
    joint = tok(context + "    return 1\n", add_special_tokens=False)["input_ids"]
    assert joint[: len(prompt_ids) - 1] != prompt_ids[1:]  # "\n" + " " straddle the boundary
    ids, offsets, was_joint = prompts.encode_continuation(tok, context, prompt_ids, "    return 1\n")
    assert not was_joint and tok.decode(ids) == "    return 1\n"
    assert [o for o in offsets][:5] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 10)]
    ids, offsets, was_joint = prompts.encode_continuation(tok, "x = ", prompts.encode_prompt(tok, "x = "), "return")
    assert was_joint and tok.convert_ids_to_tokens(ids) == ["return"] and offsets == [(0, 6)]


# --- extraction and spans ---------------------------------------------------------------

def test_extract_code_span_is_the_block_used():
    sketch = "def f(x):\n    return x + 1\n"
    text = f"Sketch:\n```python\n{sketch}```\nFinal:\n```python\n{sketch}```\n"
    start, end = prompts.extract_code_span(text, prefilled=False)
    assert text[start:end] == sketch and start == text.rindex(sketch)
    assert prompts.extract_code_span("x = 1\n```\nmore", prefilled=True) == (0, 6)
    assert prompts.extract_code_span("plain", prefilled=False) == (0, 5)


def test_body_span_of_every_humaneval_reference_starts_after_the_prompt():
    problems = load_problems("humaneval", REPO / "data")
    for r in problems.iter_rows(named=True):
        code = r["canonical_solution"].rstrip() + "\n"
        assert prompts.body_span(r, code) == (len(r["prompt"]), len(code)), r["problem_id"]


def test_body_span_per_benchmark():
    assert prompts.body_span(MBPP, "def f(x):\n    '''doc'''\n    return x\n") == (0, 37)
    code = "class Solution:\n    def f(self, x):\n        # add two\n        return x + 2\n"
    assert code[prompts.body_span(LEETCODE, code)[0]:] == "        # add two\n        return x + 2\n"
    assert prompts.body_span(HE, "    return 1\n") == (0, 13)  # a bare body does not parse alone
    assert prompts.body_span(HE, "def g():\n    pass\n") == (0, 18)  # no entry point defined


@pytest.mark.parametrize("r", [HE, MBPP, STDIN, LEETCODE])
def test_chat_prompt_contains_task(r):
    text = prompts.build_prompt(r, byte_tokenizer(), "code", chat=True)
    assert text.endswith("```python\n") and r["prompt"].strip().splitlines()[0] in text
