"""Generated pairs at the level of one model's tokenizer (rule `task_pairs`).

For each candidate pair (codeinterp.benchmarks.counterfactual) the corrupted prompt and then
its alternatives are tried in order; the first that gives a usable pair is kept:
- it has as many tokens as the clean prompt (patching compares positions);
- each answer is tokenised in context, prompt + answer minus the prompt's tokens (when the
  prompt's tokens are not a prefix, the answer merges with the prompt's last token, as `(`
  followed by `)` merges into `()`);
- vocabularies merge closers (`))`, `)))`, `)):`), so the two answers are compared token by
  token: their common prefix is appended to both prompts (`answer_prefix`), and the metric's
  tokens are the first tokens where they differ; an answer whose tokens are a prefix of the
  other's has none.
When no offer is usable the row stays in the table with `kept = False` and the preferred
offer's reason. Columns: codeinterp.causal.pairs.
"""

from __future__ import annotations

import logging
from collections import Counter

import polars as pl

from codeinterp.access.models import tokenizer_adds_bos
from codeinterp.errors import ConfigError

log = logging.getLogger("codeinterp.task_pairs")

SCHEMA: dict[str, pl.DataType] = {
    "pair_id": pl.Utf8, "task": pl.Utf8, "source": pl.Utf8, "kind": pl.Utf8, "depth": pl.Int64,
    "n_closed": pl.Int64, "clean_prompt": pl.Utf8, "corrupt_prompt": pl.Utf8, "clean_answer": pl.Utf8,
    "corrupt_answer": pl.Utf8, "answer_prefix": pl.Utf8, "clean_ids": pl.List(pl.Int64),
    "corrupt_ids": pl.List(pl.Int64), "clean_token": pl.Int64, "corrupt_token": pl.Int64,
    "clean_token_text": pl.Utf8, "corrupt_token_text": pl.Utf8, "span_start": pl.Int64, "span_end": pl.Int64,
    "open_positions": pl.List(pl.Int64), "closed_positions": pl.List(pl.Int64), "kept": pl.Boolean,
    "drop_reason": pl.Utf8,
}

LENGTHS_DIFFER = "no corrupted prompt tokenises to as many tokens as the clean one"
NO_DIFFERENCE = "one answer's tokens are a prefix of the other's: no differing token"


class Encoder:
    """A tokenizer as the models see it: BOS prepended when the tokenizer adds one."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        adds = tokenizer_adds_bos(tokenizer) and tokenizer.bos_token_id is not None
        self.bos = [tokenizer.bos_token_id] if adds else []

    def ids(self, text: str) -> list[int]:
        return self.bos + self.tok(text, add_special_tokens=False)["input_ids"]

    def offsets(self, text: str) -> list[tuple[int, int]]:
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(-1, -1)] * len(self.bos) + [tuple(o) for o in enc["offset_mapping"]]

    def answer(self, prompt: str, answer: str, prompt_ids: list[int]) -> list[int] | None:
        full = self.ids(prompt + answer)
        return full[len(prompt_ids):] if full[: len(prompt_ids)] == prompt_ids else None


def _positions(offsets, chars) -> list[int]:
    """Token index holding each character offset (the token whose span contains it)."""
    return sorted({next(i for i, (s, e) in enumerate(offsets) if s <= c < e)
                   for c in chars if any(s <= c < e for s, e in offsets)})


def _span(offsets, start: int, end: int, clean_ids, corrupt_ids) -> tuple[int, int]:
    """Tokens overlapping the clean prompt's characters [start, end), widened to every token
    that differs between the two prompts (a merge can reach past the replaced characters)."""
    hit = [i for i, (s, e) in enumerate(offsets) if s < end and e > start]
    hit += [i for i, (a, b) in enumerate(zip(clean_ids, corrupt_ids)) if a != b]
    return (min(hit), max(hit) + 1) if hit else (0, 0)


def _offers(row: dict) -> list[dict]:
    first = {"prompt": row["corrupt_prompt"], "answer": row["corrupt_answer"],
             "diff_start": row["diff_start"], "diff_end": row["diff_end"]}
    return [first, *(row.get("alternatives") or [])]


def _try(enc: Encoder, row: dict, clean_ids: list[int], offer: dict) -> tuple[dict | None, str]:
    """The pair's tokens with this corrupted prompt, or None and why not."""
    corrupt_ids = enc.ids(offer["prompt"])
    if len(corrupt_ids) != len(clean_ids):
        return None, LENGTHS_DIFFER
    good = enc.answer(row["clean_prompt"], row["clean_answer"], clean_ids)
    if good is None:
        return None, "the clean answer merges with the clean prompt's last token"
    bad = enc.answer(offer["prompt"], offer["answer"], corrupt_ids)
    if bad is None:
        return None, "the corrupted answer merges with the corrupted prompt's last token"
    k = 0
    while k < min(len(good), len(bad)) and good[k] == bad[k]:
        k += 1
    if k == len(good) or k == len(bad):
        return None, NO_DIFFERENCE
    offsets = enc.offsets(row["clean_prompt"])
    start, end = _span(offsets, offer["diff_start"], offer["diff_end"], clean_ids, corrupt_ids)
    return {"corrupt_prompt": offer["prompt"], "corrupt_answer": offer["answer"],
            "answer_prefix": enc.tok.decode(good[:k]), "clean_ids": clean_ids + good[:k],
            "corrupt_ids": corrupt_ids + good[:k], "clean_token": good[k], "corrupt_token": bad[k],
            "clean_token_text": enc.tok.decode([good[k]]), "corrupt_token_text": enc.tok.decode([bad[k]]),
            "span_start": start, "span_end": end, "open_positions": _positions(offsets, row["open_chars"]),
            "closed_positions": _positions(offsets, row["closed_chars"]), "kept": True, "drop_reason": ""}, ""


def tokenise_pair(enc: Encoder, row: dict) -> dict:
    """One pairs-table row for one candidate pair."""
    out = {k: row[k] for k in ("pair_id", "task", "source", "kind", "depth", "n_closed", "clean_prompt",
                               "corrupt_prompt", "clean_answer", "corrupt_answer")}
    clean_ids = enc.ids(row["clean_prompt"])
    reasons = []
    for offer in _offers(row):
        made, reason = _try(enc, row, clean_ids, offer)
        if made is not None:
            return {**out, **made}
        reasons.append(reason)
    return {**out, "answer_prefix": "", "clean_ids": clean_ids, "corrupt_ids": enc.ids(row["corrupt_prompt"]),
            "clean_token": None, "corrupt_token": None, "clean_token_text": None, "corrupt_token_text": None,
            "span_start": None, "span_end": None, "open_positions": [], "closed_positions": [], "kept": False,
            "drop_reason": reasons[0]}


def tokenise_pairs(candidates: pl.DataFrame, tokenizer, dataset: str = "dataset") -> pl.DataFrame:
    """The pairs table of one model; stops with one line when no pair can be used."""
    enc = Encoder(tokenizer)
    rows = [tokenise_pair(enc, r) for r in candidates.iter_rows(named=True)]
    table = pl.DataFrame(rows, schema=SCHEMA)
    for source in table["source"].unique(maintain_order=True).to_list():
        part = table.filter(pl.col("source") == source)
        reasons = Counter(part.filter(~pl.col("kept"))["drop_reason"].to_list())
        log.info("%s/%s: %d of %d pairs kept; dropped: %s", dataset, source, int(part["kept"].sum()), len(part),
                 dict(reasons) or "none")
    if not table["kept"].any():
        commonest = Counter(table["drop_reason"].to_list()).most_common(1)
        why = commonest[0][0] if commonest else "the dataset has no candidate pairs"
        raise ConfigError(f"datasets.{dataset}: no pair is usable with this model's tokenizer ({why})")
    return table
