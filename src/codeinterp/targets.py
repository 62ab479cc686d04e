"""The `select_targets` stage: the texts analyses run on, as exact token ids plus a code span.

Each target is tokenised once, as the whole sequence the model would see (prompt + code),
and the code's character span is mapped to tokens through the tokenizer's offsets; the
answer is never tokenised separately and aligned from the end, which goes wrong whenever
a token straddles the boundary.
"""

from __future__ import annotations

import logging

import polars as pl

from . import prompts
from .errors import ConfigError

log = logging.getLogger(__name__)

SOURCES = ("canonical", "correct", "both")

TARGET_SCHEMA = {
    "target_id": pl.Utf8,
    "dataset": pl.Utf8,
    "problem_id": pl.Utf8,
    "origin": pl.Utf8,
    "sample_index": pl.Int64,
    "text": pl.Utf8,
    "input_ids": pl.List(pl.Int64),
    "code_start": pl.Int64,
    "code_end": pl.Int64,
    "n_tokens": pl.Int64,
}


def token_span(offsets: list[tuple[int, int]], start_char: int, end_char: int) -> tuple[int, int]:
    """Tokens whose first character lies in [start_char, end_char)."""
    inside = [i for i, (s, e) in enumerate(offsets) if start_char <= s < end_char and e > s]
    if not inside:
        raise ValueError(f"no token starts inside characters [{start_char}, {end_char})")
    return inside[0], inside[-1] + 1


def make_target(tokenizer, target_id: str, context: str, code: str, suffix: str = "") -> dict | None:
    """One target row; None when the code is empty or has no context token before it."""
    if not code.strip():
        return None
    text = context + code + suffix
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    start, end = token_span(enc["offset_mapping"], len(context), len(context) + len(code))
    if start < 1:
        return None
    return {
        "target_id": target_id,
        "text": text,
        "input_ids": enc["input_ids"],
        "code_start": start,
        "code_end": end,
        "n_tokens": len(enc["input_ids"]),
    }


def _canonical_code(row: dict, context: str, chat: bool) -> str | None:
    code = row["canonical_solution"]
    if code is None:
        return None
    if not chat and code.startswith(context):
        return code[len(context):]  # completion-style: the body after the starter code
    return code.rstrip() + "\n"


def canonical_targets(problems: pl.DataFrame, tokenizer, mode: str, chat: bool) -> list[dict]:
    out = []
    for row in problems.iter_rows(named=True):
        context = prompts.build_prompt(row, tokenizer, mode, chat)
        code = _canonical_code(row, context, chat)
        if code is None:
            continue
        suffix = prompts.FENCE if chat and mode == "code" else ""
        t = make_target(tokenizer, f"{row['problem_id']}#canonical", context, code, suffix)
        if t:
            out.append({**t, "dataset": row["dataset"], "problem_id": row["problem_id"], "origin": "canonical", "sample_index": None})
    return out


def correct_targets(generations: pl.DataFrame, verdicts: pl.DataFrame, tokenizer) -> list[dict]:
    """Generated solutions that passed, with the exact recorded prompt as context."""
    passed = generations.join(
        verdicts.filter(pl.col("status") == "passed").select("problem_id", "sample_index"),
        on=["problem_id", "sample_index"],
    ).sort("problem_id", "sample_index")
    out = []
    for g in passed.iter_rows(named=True):
        prefilled = g["mode"] == "code" and g["prompt"].endswith(prompts.CODE_PREFILL)
        code = prompts.extract_code(g["completion"], prefilled)
        at = g["completion"].find(code)
        if at < 0:
            continue
        context = g["prompt"] + g["completion"][:at]
        t = make_target(tokenizer, f"{g['problem_id']}#s{g['sample_index']}", context, code, g["completion"][at + len(code):])
        if t:
            out.append({**t, "dataset": g["dataset"], "problem_id": g["problem_id"], "origin": "generated", "sample_index": g["sample_index"]})
    return out


def select_targets(problems: pl.DataFrame, generations: pl.DataFrame | None, verdicts: pl.DataFrame | None,
                   tokenizer, source: str, mode: str, chat: bool, max_tokens: int, limit: int | None) -> pl.DataFrame:
    if source not in SOURCES:
        raise ConfigError(f"targets.source {source!r} is not one of {', '.join(SOURCES)}")
    rows = []
    if source in ("canonical", "both"):
        rows += canonical_targets(problems, tokenizer, mode, chat)
    if source in ("correct", "both"):
        rows += correct_targets(generations, verdicts, tokenizer)
    kept = [r for r in rows if r["n_tokens"] <= max_tokens]
    if len(kept) < len(rows):
        log.warning("dropped %d target(s) longer than targets.max_tokens=%d", len(rows) - len(kept), max_tokens)
    kept.sort(key=lambda r: r["target_id"])
    if limit is not None:
        kept = kept[:limit]
    return pl.DataFrame(kept, schema=TARGET_SCHEMA).select(list(TARGET_SCHEMA))
