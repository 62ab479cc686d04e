"""Tokenised clean/corrupted prompt pairs (`results/{model}/{dataset}/pairs.parquet`) and the
metric every causal analysis shares.

One row per generated pair (kept or dropped), columns:

=====================  ==============  ===================================================
pair_id                Utf8            stable id from the generator ("brackets/template/0007")
task                   Utf8            brackets | variable_binding
source                 Utf8            generator family (brackets: template, code, benchmark;
                                       variable_binding: return, call)
kind                   Utf8            brackets: ")", "]", "}" or "mixed"; variable_binding:
                                       "rename" or "swap"
depth                  Int64           brackets: unmatched openers at the cut (closers the clean
                                       answer needs); variable_binding: bindings in scope
n_closed               Int64           brackets: pairs already closed before the cut; else 0
clean_prompt           Utf8            text
corrupt_prompt         Utf8            text
clean_answer           Utf8            what completes the clean prompt (brackets: the closers
                                       and the newline)
corrupt_answer         Utf8            what completes the corrupted prompt
answer_prefix          Utf8            decoded common prefix of the two answers' tokens,
                                       appended to both prompts in the ids below
clean_ids              List[Int64]     prompt (+ BOS when the tokenizer adds one) + answer prefix
corrupt_ids            List[Int64]     same length as clean_ids when kept
clean_token            Int64           first answer token where the answers differ (clean)
corrupt_token          Int64           the same for the corrupted prompt
clean_token_text       Utf8
corrupt_token_text     Utf8
span_start, span_end   Int64           token range [start, end) of the prompt region that
                                       differs (where Gaussian-noise corruption applies)
open_positions         List[Int64]     brackets: token positions of the unmatched openers
closed_positions       List[Int64]     brackets: token positions of the tokens of closed pairs
kept                   Boolean
drop_reason            Utf8            "" when kept; otherwise one sentence
=====================  ==============  ===================================================

The metric is the logit difference at the last position, logit[clean_token] -
logit[corrupt_token]: positive when the model prefers the clean answer. Patching normalises it
so that the clean run scores 1 and the corrupted run 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import torch

from codeinterp.progress import Progress

PAIR_COLUMNS = (
    "pair_id", "task", "source", "kind", "depth", "n_closed", "clean_prompt", "corrupt_prompt",
    "clean_answer", "corrupt_answer", "answer_prefix", "clean_ids", "corrupt_ids", "clean_token",
    "corrupt_token", "clean_token_text", "corrupt_token_text", "span_start", "span_end",
    "open_positions", "closed_positions", "kept", "drop_reason",
)


@dataclass(frozen=True)
class Pair:
    pair_id: str
    task: str
    source: str
    kind: str
    depth: int
    n_closed: int
    clean_ids: torch.Tensor  # [T] long
    corrupt_ids: torch.Tensor  # [T] long
    clean_token: int
    corrupt_token: int
    span: tuple[int, int]
    open_positions: tuple[int, ...]
    closed_positions: tuple[int, ...]

    @property
    def length(self) -> int:
        return int(self.clean_ids.shape[0])


def read_pairs(path, kept_only: bool = True, limit: int | None = None) -> list[Pair]:
    """The kept pairs of a pairs table, in file order (the first `limit` when given)."""
    df = pl.read_parquet(path)
    missing = [c for c in PAIR_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a pairs table (missing columns {', '.join(missing)})")
    if kept_only:
        df = df.filter(pl.col("kept"))
    if limit is not None:
        df = df.head(limit)
    return [
        Pair(r["pair_id"], r["task"], r["source"], r["kind"], int(r["depth"]), int(r["n_closed"]),
             torch.tensor(r["clean_ids"], dtype=torch.long), torch.tensor(r["corrupt_ids"], dtype=torch.long),
             int(r["clean_token"]), int(r["corrupt_token"]), (int(r["span_start"]), int(r["span_end"])),
             tuple(r["open_positions"] or ()), tuple(r["closed_positions"] or ()))
        for r in df.iter_rows(named=True)
    ]


@dataclass
class PairBatch:
    pairs: list[Pair]
    clean: torch.Tensor  # [B, T] right-padded
    corrupt: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T] 1 on real tokens
    last: torch.Tensor  # [B] index of each row's last real token (where the metric is read)
    clean_token: torch.Tensor  # [B]
    corrupt_token: torch.Tensor  # [B]

    def __len__(self) -> int:
        return len(self.pairs)


def make_pair_batch(pairs: list[Pair], pad_id: int = 0) -> PairBatch:
    """Right padding: causal attention keeps every real position's value independent of it."""
    for p in pairs:
        if p.clean_ids.shape != p.corrupt_ids.shape:
            raise ValueError(f"pair {p.pair_id}: clean and corrupted prompts differ in length")
    T = max(p.length for p in pairs)
    B = len(pairs)
    clean = torch.full((B, T), pad_id, dtype=torch.long)
    corrupt = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for i, p in enumerate(pairs):
        clean[i, : p.length] = p.clean_ids
        corrupt[i, : p.length] = p.corrupt_ids
        mask[i, : p.length] = 1
    last = torch.tensor([p.length - 1 for p in pairs])
    return PairBatch(pairs, clean, corrupt, mask, last, torch.tensor([p.clean_token for p in pairs]),
                     torch.tensor([p.corrupt_token for p in pairs]))


def pair_batches(pairs: list[Pair], batch_size: int, pad_id: int = 0, progress: str | None = None):
    """Batches of `batch_size` pairs; with `progress` (the stage's name) a line with the time
    left as batches finish (codeinterp.progress)."""
    starts = range(0, len(pairs), batch_size)
    bar = Progress(progress, len(starts), unit="pair batches") if progress else None
    for i in starts:
        yield make_pair_batch(pairs[i : i + batch_size], pad_id)
        if bar is not None:
            bar.advance()
    if bar is not None:
        bar.close()


def n_batches(pairs: list[Pair], batch_size: int) -> int:
    return -(-len(pairs) // batch_size)


def last_logits(logits: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """[B, V] float32 logits at each row's last real position. `logits` may hold the batch
    repeated r times on the batch axis ([r*B, T, V], row j*B + b a copy of row b)."""
    reps = logits.shape[0] // last.shape[0]
    idx = last.repeat(reps).to(logits.device)
    return logits[torch.arange(logits.shape[0], device=logits.device), idx].float()


def logit_diff(logits: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    """[rows] logit[clean_token] - logit[corrupt_token] at the last position (float32)."""
    final = last_logits(logits, batch.last)
    reps = final.shape[0] // len(batch)
    rows = torch.arange(final.shape[0], device=final.device)
    good = batch.clean_token.repeat(reps).to(final.device)
    bad = batch.corrupt_token.repeat(reps).to(final.device)
    return final[rows, good] - final[rows, bad]


def normalised(patched: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor) -> torch.Tensor:
    """(patched - corrupt) / (clean - corrupt): 1 recovers the clean run, 0 the corrupted one.
    NaN where clean and corrupted give the same metric (nothing to recover)."""
    gap = clean - corrupt
    out = (patched - corrupt) / gap
    return torch.where(gap.abs() > 1e-6, out, torch.full_like(out, float("nan")))
