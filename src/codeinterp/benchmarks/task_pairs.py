"""Generated pairs at the level of one model's tokenizer (rule `task_pairs`).

For each candidate pair (codeinterp.benchmarks.counterfactual): tokenise the clean prompt and
each corrupted candidate; keep the first candidate with as many tokens as the clean prompt
(patching compares positions). The answers are tokenised in context: prompt + answer, minus
the prompt's tokens (when the prompt's tokens are not a prefix, the answer merges with the
prompt's end and the pair is dropped). Vocabularies merge closers (`))`, `)))`, `)):`), so
the two answers are compared token by token: their common prefix is appended to both
prompts, and the metric's tokens are the first tokens where they differ. Dropped pairs stay
in the table with `kept = False` and a reason (columns: codeinterp.causal.pairs).
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


class _Encoder:
    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.bos = [tokenizer.bos_token_id] if tokenizer_adds_bos(tokenizer) and tokenizer.bos_token_id is not None else []

    def ids(self, text: str) -> list[int]:
        return self.bos + self.tok(text, add_special_tokens=False)["input_ids"]

    def offsets(self, text: str) -> list[tuple[int, int]]:
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(-1, -1)] * len(self.bos) + [tuple(o) for o in enc["offset_mapping"]]

    def answer(self, prompt: str, answer: str, prompt_ids: list[int]) -> list[int] | None:
        full = self.ids(prompt + answer)
        if full[: len(prompt_ids)] != prompt_ids:
            return None
        return full[len(prompt_ids):]


def _positions(offsets, chars) -> list[int]:
    """Token index holding each character offset (the token whose span contains it)."""
    out = []
    for c in chars:
        hit = [i for i, (s, e) in enumerate(offsets) if s <= c < e]
        if hit:
            out.append(hit[0])
    return sorted(set(out))


def _span(offsets, start: int, end: int) -> tuple[int, int]:
    hit = [i for i, (s, e) in enumerate(offsets) if s < end and e > start]
    return (hit[0], hit[-1] + 1) if hit else (0, 0)


def tokenise_pair(enc: _Encoder, row: dict) -> dict:
    """One pairs-table row for one candidate pair."""
    out = {k: row[k] for k in ("pair_id", "task", "source", "kind", "depth", "n_closed", "clean_prompt",
                               "clean_answer", "corrupt_answer")}
    clean_ids = enc.ids(row["clean_prompt"])
    chosen = next((c for c in row["corrupt_candidates"] if len(enc.ids(c)) == len(clean_ids)), None)
    corrupt = chosen or row["corrupt_candidates"][0]
    out.update(corrupt_prompt=corrupt, answer_prefix="", clean_ids=clean_ids,
               corrupt_ids=enc.ids(corrupt), clean_token=None, corrupt_token=None,
               clean_token_text=None, corrupt_token_text=None, span_start=None, span_end=None,
               open_positions=[], closed_positions=[], kept=False, drop_reason="")
    if chosen is None:
        return {**out, "drop_reason": "no corrupted prompt tokenises to as many tokens as the clean one"}
    corrupt_ids = out["corrupt_ids"]
    good = enc.answer(row["clean_prompt"], row["clean_answer"], clean_ids)
    bad = enc.answer(chosen, row["corrupt_answer"], corrupt_ids)
    if good is None or bad is None:
        return {**out, "drop_reason": "the answer merges with the prompt's last token"}
    k = 0
    while k < min(len(good), len(bad)) and good[k] == bad[k]:
        k += 1
    if k == len(good) or k == len(bad):
        return {**out, "drop_reason": "one answer's tokens are a prefix of the other's: no differing token"}
    offsets = enc.offsets(row["clean_prompt"])
    start, end = _span(offsets, row["diff_start"], row["diff_end"])
    return {**out, "answer_prefix": enc.tok.decode(good[:k]), "clean_ids": clean_ids + good[:k],
            "corrupt_ids": corrupt_ids + good[:k], "clean_token": good[k], "corrupt_token": bad[k],
            "clean_token_text": enc.tok.decode([good[k]]), "corrupt_token_text": enc.tok.decode([bad[k]]),
            "span_start": start, "span_end": end, "open_positions": _positions(offsets, row["open_chars"]),
            "closed_positions": _positions(offsets, row["closed_chars"]), "kept": True}


def tokenise_pairs(candidates: pl.DataFrame, tokenizer, dataset: str = "dataset") -> pl.DataFrame:
    """The pairs table of one model; stops with one line when no pair can be used."""
    enc = _Encoder(tokenizer)
    rows = [tokenise_pair(enc, r) for r in candidates.iter_rows(named=True)]
    table = pl.DataFrame(rows, schema=SCHEMA)
    for source in table["source"].unique(maintain_order=True).to_list():
        part = table.filter(pl.col("source") == source)
        reasons = Counter(r for r in part.filter(~pl.col("kept"))["drop_reason"].to_list())
        log.info("%s/%s: %d of %d pairs kept; dropped: %s", dataset, source, int(part["kept"].sum()), len(part),
                 dict(reasons) or "none")
    if len(table) and not table["kept"].any():
        commonest = Counter(table["drop_reason"].to_list()).most_common(1)[0][0]
        raise ConfigError(f"datasets.{dataset}: no pair is usable with this model's tokenizer ({commonest})")
    return table
