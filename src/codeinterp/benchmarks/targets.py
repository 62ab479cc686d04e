"""The `select_targets` stage: the texts analyses run on, as exact token ids plus a scored span.

A target's ids are the prompt's ids exactly as generation fed them to the model (BOS
included), followed by the answer's ids:
- generated targets keep the ids the model generated (`ids_source` "generated");
- canonical targets, and generations without recorded ids (replay), tokenise the answer as
  a continuation of the prompt ids (`prompts.encode_continuation`): "joint" when prompt +
  answer tokenise to the prompt's ids plus tokens starting at the boundary, "split" when a
  token would have straddled the boundary and the answer was tokenised on its own.

Two character spans are mapped to tokens through offsets: `all` (the extracted code) and
`body` (the solution body, `prompts.body_span`: for a full HumanEval function, what follows
the signature and docstring it copies from the prompt). `code_start`/`code_end` hold the
scored one, chosen by `score`, so analyses read one span whatever was chosen. `answer`
scores everything the model wrote up to the end of the code, [answer_start, all_end): a
reasoning chain and its code both (BTP's "regular" mode), whereas `body` and `all` score
code only with the chain in the context (BTP's "chain_code"); text after the code block is
never scored.

Sources: `canonical` solutions, `correct` generations (passed), `both`, or `generated`: every
generated sample with an extractable code block, passed or not, so that analyses can
compare passed with failed samples. `outcome` says which: canonical, passed or failed.
"""

from __future__ import annotations

import logging

import polars as pl

from codeinterp.benchmarks import prompts
from codeinterp.errors import ConfigError

log = logging.getLogger(__name__)

SOURCES = ("canonical", "correct", "both", "generated")
SCORES = ("body", "all", "answer")

TARGET_SCHEMA = {
    "target_id": pl.Utf8,
    "dataset": pl.Utf8,
    "problem_id": pl.Utf8,
    "origin": pl.Utf8,  # canonical | generated
    "sample_index": pl.Int64,
    "mode": pl.Utf8,  # prompt mode: code | reasoning
    "chat": pl.Boolean,  # chat template (True) or completion prompt (False)
    "ids_source": pl.Utf8,  # generated | joint | split (see the module docstring)
    "scored": pl.Utf8,  # body | all | answer: which span code_start/code_end hold
    "outcome": pl.Utf8,  # canonical | passed | failed
    "text": pl.Utf8,
    "input_ids": pl.List(pl.Int64),
    "code_start": pl.Int64,
    "code_end": pl.Int64,
    "all_start": pl.Int64,
    "all_end": pl.Int64,
    "body_start": pl.Int64,
    "body_end": pl.Int64,
    "answer_start": pl.Int64,  # first token of the answer (the prompt's ids come before)
    "n_tokens": pl.Int64,
}


def token_span(offsets: list[tuple[int, int]], start_char: int, end_char: int) -> tuple[int, int]:
    """Tokens whose first character lies in [start_char, end_char)."""
    inside = [i for i, (s, e) in enumerate(offsets) if start_char <= s < end_char and e > s]
    if not inside:
        raise ValueError(f"no token starts inside characters [{start_char}, {end_char})")
    return inside[0], inside[-1] + 1


def _span(offsets, start: int, end: int, shift: int) -> tuple[int, int] | None:
    try:
        a, b = token_span(offsets, start, end)
    except ValueError:
        return None
    return a + shift, b + shift


def assemble(target_id: str, prompt_text: str, prompt_ids: list[int], answer: str, answer_ids: list[int],
             offsets: list[tuple[int, int]], code: tuple[int, int], body: tuple[int, int], score: str,
             ids_source: str) -> dict | None:
    """One target row from the prompt's ids and the answer's ids with character offsets into
    `answer`; `code` and `body` are character spans in `answer`. None when the scored span
    is empty or has no context token before it."""
    if score not in SCORES:
        raise ConfigError(f"targets.score {score!r} is not one of {', '.join(SCORES)}")
    if not answer[code[0] : code[1]].strip() or not prompt_ids:
        return None
    shift = len(prompt_ids)
    all_span = _span(offsets, *code, shift)
    body_span = _span(offsets, *body, shift) if answer[body[0] : body[1]].strip() else None
    scored = {"body": body_span, "all": all_span,
              "answer": (shift, all_span[1]) if all_span else None}[score]
    if scored is None:
        return None
    input_ids = list(prompt_ids) + list(answer_ids)
    return {
        "target_id": target_id,
        "text": prompt_text + answer,
        "input_ids": input_ids,
        "code_start": scored[0],
        "code_end": scored[1],
        "all_start": all_span[0] if all_span else None,
        "all_end": all_span[1] if all_span else None,
        "body_start": body_span[0] if body_span else None,
        "body_end": body_span[1] if body_span else None,
        "scored": score,
        "answer_start": shift,
        "ids_source": ids_source,
        "n_tokens": len(input_ids),
    }


def make_target(tokenizer, target_id: str, context: str, code: str, suffix: str = "", *,
                prompt_ids: list[int] | None = None, body: tuple[int, int] | None = None,
                score: str = "all") -> dict | None:
    """A target whose answer is `code + suffix` after `context`; `body` is a character span
    in `code` (default: all of it). The prompt ids default to `prompts.encode_prompt`."""
    if prompt_ids is None:
        prompt_ids = prompts.encode_prompt(tokenizer, context)
    answer = code + suffix
    ids, offsets, joint = prompts.encode_continuation(tokenizer, context, prompt_ids, answer)
    return assemble(target_id, context, prompt_ids, answer, ids, offsets, (0, len(code)),
                    body or (0, len(code)), score, "joint" if joint else "split")


def _canonical_code(row: dict, context: str, chat: bool) -> str | None:
    code = row["canonical_solution"]
    if code is None:
        return None
    if not chat and code.startswith(context):
        return code[len(context):]  # completion-style: the body after the starter code
    return code.rstrip() + "\n"


def canonical_targets(problems: pl.DataFrame, tokenizer, mode: str, chat: bool, score: str = "body") -> list[dict]:
    out = []
    for row in problems.iter_rows(named=True):
        context = prompts.build_prompt(row, tokenizer, mode, chat)
        code = _canonical_code(row, context, chat)
        if code is None:
            continue
        suffix = prompts.FENCE if prompts.is_prefilled(context) else ""
        t = make_target(tokenizer, f"{row['problem_id']}#canonical", context, code, suffix,
                        body=prompts.body_span(row, code), score=score)
        if t:
            out.append({**t, "dataset": row["dataset"], "problem_id": row["problem_id"], "origin": "canonical",
                        "outcome": "canonical", "sample_index": None, "mode": mode, "chat": chat})
    return out


def _generated_ids(tokenizer, g: dict) -> tuple[list[int], list[int], list[tuple[int, int]], str]:
    """Prompt ids, completion ids, their offsets into the completion, and where the ids came from."""
    prompt_ids = g.get("prompt_ids")
    if prompt_ids is None:  # a table written before ids were recorded
        prompt_ids = prompts.encode_prompt(tokenizer, g["prompt"])
    prompt_ids = list(prompt_ids)
    ids = g.get("completion_ids")
    if ids is not None and g.get("ids_source", "generated") == "generated":
        text, offsets = prompts.continuation_offsets(tokenizer, prompt_ids, list(ids))
        if text.startswith(g["completion"]):
            return prompt_ids, list(ids), offsets, "generated"
        log.warning("%s sample %s: generated ids do not decode to the recorded completion; re-tokenising",
                    g["problem_id"], g["sample_index"])
    ids, offsets, joint = prompts.encode_continuation(tokenizer, g["prompt"], prompt_ids, g["completion"])
    return prompt_ids, ids, offsets, "joint" if joint else "split"


def correct_targets(generations: pl.DataFrame, verdicts: pl.DataFrame, tokenizer, problems: pl.DataFrame | None = None,
                    score: str = "body", chat: bool = True, only_passed: bool = True) -> list[dict]:
    """Generated solutions that passed (every judged sample unless `only_passed`), with the
    exact recorded prompt ids as context.

    The code is the block the program was built from (`prompts.extract_code_span`), so a
    sketch of the same code earlier in an explanation is context, not the target."""
    rows = {r["problem_id"]: r for r in problems.iter_rows(named=True)} if problems is not None else {}
    judged = verdicts.filter(pl.col("status") == "passed") if only_passed else verdicts
    samples = generations.join(
        judged.select("problem_id", "sample_index", "status"), on=["problem_id", "sample_index"],
    ).sort("problem_id", "sample_index")
    if not only_passed and len(samples) < len(generations):
        raise ConfigError(f"targets.source generated: {len(generations) - len(samples)} generated sample(s) "
                          "have no verdict (the verdicts table does not match the generations)")
    out = []
    for g in samples.iter_rows(named=True):
        replayed = g.get("backend") == "replay"
        start, end = prompts.extract_code_span(g["completion"], not replayed and prompts.is_prefilled(g["prompt"]))
        row = rows.get(g["problem_id"], {"dataset": g["dataset"], "test_type": "assert", "entry_point": ""})
        b0, b1 = prompts.body_span(row, g["completion"][start:end])
        prompt_ids, ids, offsets, source = _generated_ids(tokenizer, g)
        t = assemble(f"{g['problem_id']}#s{g['sample_index']}", g["prompt"], prompt_ids, g["completion"], ids, offsets,
                     (start, end), (start + b0, start + b1), score, source)
        if t:
            out.append({**t, "dataset": g["dataset"], "problem_id": g["problem_id"], "origin": "generated",
                        "outcome": "passed" if g["status"] == "passed" else "failed",
                        "sample_index": g["sample_index"], "mode": g["mode"], "chat": chat and not replayed})
    return out


def select_targets(problems: pl.DataFrame, generations: pl.DataFrame | None, verdicts: pl.DataFrame | None,
                   tokenizer, source: str, mode: str, chat: bool, max_tokens: int, limit: int | None,
                   score: str = "body") -> pl.DataFrame:
    if source not in SOURCES:
        raise ConfigError(f"targets.source {source!r} is not one of {', '.join(SOURCES)}")
    if score not in SCORES:
        raise ConfigError(f"targets.score {score!r} is not one of {', '.join(SCORES)}")
    rows = []
    if source in ("canonical", "both"):
        rows += canonical_targets(problems, tokenizer, mode, chat, score)
    if source in ("correct", "both", "generated"):
        rows += correct_targets(generations, verdicts, tokenizer, problems, score, chat, only_passed=source != "generated")
    kept = [r for r in rows if r["n_tokens"] <= max_tokens]
    if len(kept) < len(rows):
        log.warning("dropped %d target(s) longer than targets.max_tokens=%d", len(rows) - len(kept), max_tokens)
    kept.sort(key=lambda r: r["target_id"])
    if limit is not None:
        kept = kept[:limit]
    return pl.DataFrame(kept, schema=TARGET_SCHEMA).select(list(TARGET_SCHEMA))
