"""Targets: exact prompt ids as generation used them, generated ids kept, scored spans per benchmark."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from test_prompts import HE, MBPP, bpe_tokenizer

from codeinterp.benchmarks import generation as g
from codeinterp.benchmarks import prompts
from codeinterp.benchmarks.datasets import load_problems, select_problems
from codeinterp.access.models import build_tiny_random, byte_tokenizer
from codeinterp.benchmarks.targets import TARGET_SCHEMA, select_targets

REPO = Path(__file__).resolve().parents[1]
HE_CANON = {**HE, "canonical_solution": HE["prompt"] + "    return 2 * helper(x)\n"}
MBPP_CANON = {**MBPP, "canonical_solution": "def f(x):\n    return x + 1\n"}


def frame(*rows) -> pl.DataFrame:
    from codeinterp.benchmarks.datasets import SCHEMA

    full = [{**{k: None for k in SCHEMA}, **r, "source_index": i} for i, r in enumerate(rows)]
    return pl.DataFrame(full, schema=SCHEMA)


def span_text(tok, t, start="code_start", end="code_end") -> str:
    return tok.decode(t["input_ids"][t[start] : t[end]])


def test_canonical_prompt_ids_are_generation_ids_with_bos():
    """Completion mode, a tokenizer that adds BOS: the target's context is exactly the ids
    generation feeds the model, and the generations table records the same ids."""
    tok = bpe_tokenizer()
    problems = frame(HE_CANON)
    settings = g.Settings(chat=False, max_new_tokens=4, batch_size=1)
    table = g.prompt_table(problems, tok, settings, max_positions=4096)
    ids = table[0]["ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    model, _ = build_tiny_random({"architecture": "llama", "seed": 3}, tokenizer=tok)
    gens = g.generate_transformers(model, tok, table, settings)
    assert gens["prompt_ids"][0].to_list() == ids
    [t] = select_targets(problems, None, None, tok, "canonical", "code", False, 4096, None).iter_rows(named=True)
    assert t["input_ids"][: len(ids)] == ids
    # The body follows "\n" and starts with spaces: "\n" + " " would merge into one token.
    assert t["ids_source"] == "split"
    assert span_text(tok, t) == "    return 2 * helper(x)\n"


def test_humaneval_chat_body_excludes_the_copied_prompt():
    tok = byte_tokenizer()
    problems = frame(HE_CANON)
    body = select_targets(problems, None, None, tok, "canonical", "code", True, 4096, None)
    whole = select_targets(problems, None, None, tok, "canonical", "code", True, 4096, None, score="all")
    b, a = body.row(0, named=True), whole.row(0, named=True)
    assert span_text(tok, b) == "    return 2 * helper(x)\n" and b["scored"] == "body"
    assert span_text(tok, a) == HE_CANON["canonical_solution"] and a["scored"] == "all"
    for t in (a, b):  # both spans recorded whatever is scored
        assert (t["all_start"], t["all_end"], t["body_start"], t["body_end"]) == (a["code_start"], a["code_end"], b["code_start"], b["code_end"])
        assert (t["origin"], t["mode"], t["chat"]) == ("canonical", "code", True)
    assert list(body.schema) == list(TARGET_SCHEMA)


def test_mbpp_body_is_the_whole_program():
    tok = byte_tokenizer()
    [t] = select_targets(frame(MBPP_CANON), None, None, tok, "canonical", "code", True, 4096, None).iter_rows(named=True)
    assert (t["code_start"], t["code_end"]) == (t["all_start"], t["all_end"]) == (t["body_start"], t["body_end"])
    assert span_text(tok, t) == MBPP_CANON["canonical_solution"]


def test_humaneval_chat_scores_the_body_by_default():
    """With score=all most scored tokens of a HumanEval canonical target repeat the prompt."""
    tok = byte_tokenizer()
    problems = select_problems(load_problems("humaneval", REPO / "data"), limit=20)
    whole = select_targets(problems, None, None, tok, "canonical", "code", True, 10**6, None, score="all")
    shares = ((whole["body_start"] - whole["all_start"]) / (whole["all_end"] - whole["all_start"])).to_list()
    assert sorted(shares)[len(shares) // 2] > 0.5
    body = select_targets(problems, None, None, tok, "canonical", "code", True, 10**6, None)
    rows = {r["problem_id"]: r for r in problems.iter_rows(named=True)}
    assert body.height == 20
    for t in body.iter_rows(named=True):
        r = rows[t["problem_id"]]
        assert span_text(tok, t) == r["canonical_solution"][len(r["prompt"]):].rstrip() + "\n"


def generations_row(prompt: str, completion: str, prompt_ids, completion_ids, **kw) -> dict:
    return {"dataset": "humaneval", "problem_id": "P", "sample_index": 0, "backend": "transformers", "mode": "code",
            "prompt": prompt, "completion": completion, "program": "", "prompt_tokens": len(prompt_ids),
            "completion_tokens": len(completion_ids or []), "finish_reason": "stop", "seconds": 0.0,
            "prompt_ids": prompt_ids, "completion_ids": completion_ids, "ids_source": "generated", **kw}


PASSED = pl.DataFrame({"problem_id": ["P"], "sample_index": [0], "status": ["passed"]})


def test_generated_target_keeps_the_generated_ids():
    """The model spelled "return" letter by letter; the tokenizer would merge it into one
    token. The target must score the ids the model produced."""
    tok = bpe_tokenizer()
    prompt = prompts.build_prompt(HE, tok, "code", chat=True)
    prompt_ids = prompts.encode_prompt(tok, prompt)
    code = "def f(x):\n    return 2 * helper(x)\n"
    spelled = [i for ch in code for i in tok(ch, add_special_tokens=False)["input_ids"]] + [tok.convert_tokens_to_ids("`")] * 3
    assert tok.decode(spelled) == code + "```"
    gens = pl.DataFrame([generations_row(prompt, code, prompt_ids, spelled)], schema=g.GENERATION_SCHEMA)
    [t] = select_targets(frame(HE), gens, PASSED, tok, "correct", "code", True, 4096, None, score="all").iter_rows(named=True)
    assert t["input_ids"] == prompt_ids + spelled and t["ids_source"] == "generated"
    assert span_text(tok, t) == code and t["origin"] == "generated"
    [b] = select_targets(frame(HE), gens, PASSED, tok, "correct", "code", True, 4096, None).iter_rows(named=True)
    assert span_text(tok, b) == "    return 2 * helper(x)\n"


def test_reasoning_target_is_the_extracted_block_not_the_first_copy():
    tok = byte_tokenizer()
    prompt = prompts.build_prompt(HE, tok, "reasoning", chat=True)
    sketch = "def f(x):\n    return 2 * helper(x)\n"
    completion = f"First a sketch:\n```python\n{sketch}```\nFinal answer:\n```python\n{sketch}```\n"
    prompt_ids = prompts.encode_prompt(tok, prompt)
    ids = tok(completion, add_special_tokens=False)["input_ids"]
    gens = pl.DataFrame([generations_row(prompt, completion, prompt_ids, ids, mode="reasoning")], schema=g.GENERATION_SCHEMA)
    [t] = select_targets(frame(HE), gens, PASSED, tok, "correct", "reasoning", True, 4096, None, score="all").iter_rows(named=True)
    final = len(prompt_ids) + completion.rindex(sketch)  # one token per byte
    assert (t["code_start"], t["code_end"]) == (final, final + len(sketch))


def test_replayed_generation_is_retokenised_and_says_so():
    tok = bpe_tokenizer()
    problems = frame(HE)
    table = g.prompt_table(problems, tok, g.Settings(chat=False, max_new_tokens=0), max_positions=4096)
    samples = pl.DataFrame({"problem_id": ["P"], "completion": ["    return 2 * helper(x)\n"], "sample_index": [0]})
    gens = g.replay(samples, table, g.Settings(chat=False), tok)
    r = gens.row(0, named=True)
    assert r["ids_source"] == "retokenized" and r["completion_tokens"] is None
    assert tok.decode(r["completion_ids"]) == "    return 2 * helper(x)\n" and r["prompt_ids"] == table[0]["ids"]
    [t] = select_targets(problems, gens, PASSED, tok, "correct", "code", False, 4096, None).iter_rows(named=True)
    assert t["ids_source"] == "split" and t["chat"] is False
    assert t["input_ids"] == r["prompt_ids"] + r["completion_ids"]


def test_unknown_score_is_a_config_error():
    from codeinterp.errors import ConfigError

    with pytest.raises(ConfigError, match="targets.score 'tokens'"):
        select_targets(frame(MBPP_CANON), None, None, byte_tokenizer(), "canonical", "code", True, 4096, None, score="tokens")


def test_generated_source_keeps_failed_samples_and_answer_scores_the_chain():
    """`generated` takes every judged sample with its outcome; `answer` scores the reasoning
    chain and the code (BTP's regular mode), `all` only the code with the chain as context."""
    tok = byte_tokenizer()
    prompt = prompts.build_prompt(HE, tok, "reasoning", chat=True)
    prompt_ids = prompts.encode_prompt(tok, prompt)
    chain = "Double the helper.\n"
    code = "def f(x):\n    return 2 * helper(x)\n"
    completion = f"{chain}```python\n{code}```\nDone.\n"
    ids = tok(completion, add_special_tokens=False)["input_ids"]
    rows = [generations_row(prompt, completion, prompt_ids, ids, mode="reasoning", sample_index=i) for i in (0, 1)]
    gens = pl.DataFrame(rows, schema=g.GENERATION_SCHEMA)
    verdicts = pl.DataFrame({"problem_id": ["P", "P"], "sample_index": [0, 1], "status": ["passed", "timeout"]})
    answer = select_targets(frame(HE), gens, verdicts, tok, "generated", "reasoning", True, 4096, None, score="answer")
    assert answer["outcome"].to_list() == ["passed", "failed"]
    t = answer.row(0, named=True)
    assert t["answer_start"] == len(prompt_ids) == t["code_start"]
    assert tok.decode(t["input_ids"][t["code_start"] : t["code_end"]]) == f"{chain}```python\n{code}"
    assert t["code_end"] == t["all_end"]  # "Done." after the block is never scored
    code_only = select_targets(frame(HE), gens, verdicts, tok, "generated", "reasoning", True, 4096, None, score="all")
    c = code_only.row(1, named=True)
    assert span_text(tok, c) == code and c["answer_start"] == len(prompt_ids)
    # `correct` keeps only the passed sample; canonical targets say so
    assert select_targets(frame(HE), gens, verdicts, tok, "correct", "reasoning", True, 4096, None)["outcome"].to_list() == ["passed"]
    canon = select_targets(frame(HE_CANON), None, None, tok, "canonical", "code", True, 4096, None)
    assert canon["outcome"].to_list() == ["canonical"]


def test_generated_source_refuses_samples_without_verdicts():
    from codeinterp.errors import ConfigError

    tok = byte_tokenizer()
    prompt = prompts.build_prompt(HE, tok, "code", chat=True)
    prompt_ids = prompts.encode_prompt(tok, prompt)
    code = "def f(x):\n    return 1\n"
    ids = tok(code, add_special_tokens=False)["input_ids"]
    gens = pl.DataFrame([generations_row(prompt, code, prompt_ids, ids, sample_index=i) for i in (0, 1)], schema=g.GENERATION_SCHEMA)
    with pytest.raises(ConfigError, match="no verdict"):
        select_targets(frame(HE), gens, PASSED, tok, "generated", "code", True, 4096, None)
