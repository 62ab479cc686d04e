"""Analysis targets in memory, batching, and the code-token loss every analysis shares.

A target is one token sequence (the exact ids the model saw) and the half-open span
[code_start, code_end) of its code tokens. Token t is predicted at position t - 1, so the
scored positions are code_start - 1 .. code_end - 2. Batches are right-padded: positions
then start at 0 for every row and padding after a row's end cannot reach its real tokens
through causal attention, so no position ids need adjusting.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import torch

from codeinterp.access.heads import head_intervention


@dataclass(frozen=True)
class Target:
    target_id: str
    input_ids: tuple[int, ...]
    code_start: int
    code_end: int

    def __post_init__(self):
        if not 1 <= self.code_start < self.code_end <= len(self.input_ids):
            raise ValueError(
                f"target {self.target_id}: code span [{self.code_start}, {self.code_end}) "
                f"does not fit in {len(self.input_ids)} tokens (and needs one context token)"
            )

    @property
    def n_scored(self) -> int:
        return self.code_end - self.code_start


def targets_from_frame(df: pl.DataFrame) -> list[Target]:
    return [
        Target(r["target_id"], tuple(r["input_ids"]), r["code_start"], r["code_end"])
        for r in df.select("target_id", "input_ids", "code_start", "code_end").iter_rows(named=True)
    ]


@dataclass
class Batch:
    target_ids: list[str]
    input_ids: torch.Tensor  # [B, T] right-padded
    attention_mask: torch.Tensor  # [B, T]
    rows: torch.Tensor  # [N] batch row of each scored position
    positions: torch.Tensor  # [N] position whose logits predict the scored token
    labels: torch.Tensor  # [N] the scored token
    owner: torch.Tensor  # [N] index (within the batch) of the target the position belongs to


def make_batch(targets: list[Target], pad_id: int = 0) -> Batch:
    width = max(len(t.input_ids) for t in targets)
    ids = torch.full((len(targets), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(targets), width), dtype=torch.long)
    rows, positions, labels, owner = [], [], [], []
    for i, t in enumerate(targets):
        ids[i, : len(t.input_ids)] = torch.tensor(t.input_ids)
        mask[i, : len(t.input_ids)] = 1
        pos = torch.arange(t.code_start - 1, t.code_end - 1)
        rows.append(torch.full_like(pos, i))
        positions.append(pos)
        labels.append(torch.tensor(t.input_ids[t.code_start : t.code_end]))
        owner.append(torch.full_like(pos, i))
    return Batch(
        [t.target_id for t in targets], ids, mask,
        torch.cat(rows), torch.cat(positions), torch.cat(labels), torch.cat(owner),
    )


# Tokens per batch (rows x padded width), or None for batches of `batch_size` sequences. Set
# once per job from the config (`compute.batch_tokens`, codeinterp.workflow.run_script).
BATCH_TOKENS: int | None = None


def set_batch_tokens(tokens: int | None) -> None:
    global BATCH_TOKENS
    BATCH_TOKENS = tokens


def length_order(targets: list[Target]) -> list[Target]:
    """The order batches take: by length (padding stays small), then id."""
    return sorted(targets, key=lambda t: (len(t.input_ids), t.target_id))


def batch_bounds(ordered: list[Target], batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each batch of `ordered`: at most `batch_size` sequences and, with a
    token budget, at most BATCH_TOKENS padded tokens (a longer target gets a batch alone)."""
    bounds, start = [], 0
    while start < len(ordered):
        stop = min(start + batch_size, len(ordered))
        if BATCH_TOKENS is not None:
            # Sorted by length: the widest sequence of [start, stop) is the last one.
            while stop - start > 1 and (stop - start) * len(ordered[stop - 1].input_ids) > BATCH_TOKENS:
                stop -= 1
        bounds.append((start, stop))
        start = stop
    return bounds


def batches(targets: list[Target], batch_size: int, pad_id: int = 0):
    """Batches in a fixed order (`length_order`, cut by `batch_bounds`)."""
    ordered = length_order(targets)
    for start, stop in batch_bounds(ordered, batch_size):
        yield make_batch(ordered[start:stop], pad_id)


def per_target_mean(values: torch.Tensor, owner: torch.Tensor, n_targets: int) -> torch.Tensor:
    """Mean of per-position values within each target."""
    sums = torch.zeros(n_targets, dtype=values.dtype).index_add_(0, owner, values)
    counts = torch.zeros(n_targets, dtype=values.dtype).index_add_(0, owner, torch.ones_like(values))
    return sums / counts


def code_losses(model, batch: Batch, keep: torch.Tensor | None = None, fill: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the code tokens, one value per target in the batch (float32).

    Only the scored positions go through the readout: full-vocabulary logits for every
    position would cost more than the rest of a small model's forward. The readout is the
    model's own (final-logit softcapping included), from `sites.layout`.
    """
    from codeinterp.access.sites import layout

    lay = layout(model)

    def run():
        out = lay.body(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        logits = lay.logits(out.last_hidden_state[batch.rows, batch.positions], normed=True)
        ce = torch.nn.functional.cross_entropy(logits, batch.labels, reduction="none")
        return per_target_mean(ce, batch.owner, len(batch.target_ids))

    if keep is None:
        return run()
    with head_intervention(model, keep, fill):
        return run()
