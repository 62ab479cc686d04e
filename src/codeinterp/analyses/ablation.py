"""Head ablation sweeps, exact and fast, and cumulative knockout curves.

Three layers of machinery:

* `BlockRunner` / `run_from_layer` (from `architectures`, which alone knows how each
  architecture's block computes): run decoder blocks L..end of a Hugging Face model
  directly on a residual stream (TransformerLens' `start_at_layer`). Reusable for causal
  tracing / activation patching.
* `naive_head_ablation`: the reference. One full forward per (layer, head) with that head
  ablated through `heads.head_intervention`, full-vocabulary logits at every position,
  cross-entropy at the scored positions.
* `head_ablation`: the same numbers (to float round-off), much faster. Per batch of
  targets one clean pass runs layer by layer; at layer L it keeps the clean residual
  before the block, the attention module's output `a` and the clean per-head outputs `z`
  (the o_proj input). Ablating head h of layer L changes `a` by exactly
  `(fill_h - z_h) @ W_O[h]` (the projection is linear, its bias does not depend on any
  head), so the ablated residual after layer L's attention is the block's own attention
  half applied to `a + (fill_h - z_h) @ W_O[h]` (through any post-attention norm, as in
  Gemma 2/3 and OLMo 2): no attention of layer L is recomputed. `heads_per_pass` such residuals go on the batch axis, then layer
  L's MLP and blocks L+1..end run once for all of them, and the final norm and the
  readout are applied at the scored positions only. The clean pass continues from
  layer L, so no residual is cached beyond the current layer: memory is
  O(heads_per_pass * batch_size * T * D) whatever the number of targets.
  In the last block only the scored positions are needed as queries (every position is
  still needed as key/value), so `head_ablation` computes that block's queries, attention
  output projection and MLP at the scored positions only (exact: everything downstream of
  the last block's attention is position-wise).

* `knockout` / `knockout_curves`: cumulative removal of heads in a ranking order, several
  steps k on the batch axis per forward (per-row masks through `head_intervention`), the
  layers below the first head a chunk adds run once; the last block again only at the
  scored positions.

Why not faster: ablating a head of layer L changes the residual at every position from L
on, and every position up to the last scored one is a key/value of the scored ones, so
blocks L+1..end-1 must run at every position for each ablation; besides dropping layer L's
attention and most of the last block, an exact sweep cannot skip work (the FLOP count is
printed by `benchmarks/head_ablation_speed.py`).

Every fast path (`head_ablation`, `knockout`, `mean_head_outputs`) first checks, on the
first batch of each call, that its runner's clean per-target losses equal the model's own
forward (`BlockRunner.verify`); a disagreement stops the run with a one-line
`RunnerMismatch`, and an architecture without an adapter is refused before any work.

All losses are the mean cross-entropy over a target's code tokens (as `scoring.code_losses`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from codeinterp.access.architectures import BlockRunner, head_out_weights
from codeinterp.access.heads import full_mask, head_intervention, mask_from_heads
from codeinterp.access.scoring import Batch, Target, batches, per_target_mean
from codeinterp.access.sites import head_out_proj, layout
from codeinterp.progress import NO_CHECKPOINT
from codeinterp.uncertainty import Bootstrap, bootstrap_means

__all__ = [
    "ABLATION_SCHEMA", "KINDS", "KNOCKOUT_SCHEMA", "BlockRunner", "delta_matrix", "head_ablation",
    "knockout", "knockout_curves", "mean_head_outputs", "naive_head_ablation", "ranking_from_deltas",
    "run_from_layer",
]

KINDS = ("zero", "mean")

ABLATION_SCHEMA = {
    "layer": pl.Int64,
    "head": pl.Int64,
    "ablation": pl.Utf8,
    "target_id": pl.Utf8,
    "base_loss": pl.Float64,
    "ablated_loss": pl.Float64,
    "delta": pl.Float64,
}
KNOCKOUT_SCHEMA = {"k": pl.Int64, "layer": pl.Int64, "head": pl.Int64, "loss": pl.Float64, "ci_low": pl.Float64,
                   "ci_high": pl.Float64, "n_targets": pl.Int64}


def _pad_id(model) -> int:
    pad = getattr(model.config, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def _trim(batch: Batch) -> Batch:
    """Drop the columns after the last scored position: causal attention means they cannot
    change any scored logit (usually just the last token of the longest target)."""
    width = int(batch.positions.max()) + 1
    if width == batch.input_ids.shape[1]:
        return batch
    return Batch(
        batch.target_ids, batch.input_ids[:, :width], batch.attention_mask[:, :width],
        batch.rows, batch.positions, batch.labels, batch.owner,
    )


def _rep_index(batch: Batch, B: int, rep: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = (batch.rows[None, :] + B * torch.arange(rep)[:, None]).reshape(-1)
    return rows, batch.positions.repeat(rep)


def run_from_layer(
    model,
    resid: torch.Tensor,
    start_layer: int,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    end_layer: int | None = None,
) -> torch.Tensor:
    """Run blocks start_layer..end_layer-1 on `resid` ([R, T, D], R a multiple of the
    [B, T] `attention_mask`'s B). Returns the residual after the last block run, before
    the final norm."""
    return BlockRunner(model, attention_mask, position_ids).run(resid, start_layer, end_layer)


def _capture_head_outputs(model, layer: int, fn: Callable[[], torch.Tensor]):
    seen = {}

    def hook(module, args):
        seen["z"] = args[0]

    handle = head_out_proj(model, layer).register_forward_pre_hook(hook)
    try:
        out = fn()
    finally:
        handle.remove()
    return out, seen["z"]


@torch.no_grad()
def mean_head_outputs(model, targets: Sequence[Target], batch_size: int, scope: str = "all") -> torch.Tensor:
    """Mean output of every head, [L, H, head_dim], pooled over tokens.

    scope="all" (default): every real (non-pad) position of every target, context and code
    alike; mean ablation replaces a head's output at every position, so this is the matching
    "typical" value. scope="scored": only the positions whose logits are scored.
    Accumulated in float64 in a fixed batch order, hence deterministic.
    """
    if scope not in ("all", "scored"):
        raise ValueError(f"scope {scope!r} is not 'all' or 'scored'")
    lay = layout(model)
    n_layers = len(lay.blocks)
    sums = torch.zeros(n_layers, lay.n_heads * lay.head_dim, dtype=torch.float64)
    count = 0
    for i, batch in enumerate(batches(list(targets), batch_size, _pad_id(model))):
        runner = BlockRunner(model, batch.attention_mask)
        if scope == "all":
            sel = batch.attention_mask.bool()
            count += int(sel.sum())
        else:
            sel = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
            sel[batch.rows, batch.positions] = True
            count += int(sel.sum())
        resid = runner.embed(batch.input_ids)
        if i == 0:
            runner.verify(batch, resid, False, "mean_head_outputs")
        for layer in range(n_layers):
            mid, z = _capture_head_outputs(model, layer, lambda: runner.attn_half(layer, resid))
            sums[layer] += z[sel].double().sum(0)
            if layer < n_layers - 1:
                resid = runner.mlp_half(layer, mid)
    return (sums / max(count, 1)).float().view(n_layers, lay.n_heads, lay.head_dim)


def _resolve_fill(model, targets, kind: str, batch_size: int, fill: torch.Tensor | None):
    if kind not in KINDS:
        raise ValueError(f"ablation kind {kind!r} is not one of {KINDS}")
    if kind == "zero":
        if fill is not None:
            raise ValueError("zero ablation takes no fill")
        return None
    return fill if fill is not None else mean_head_outputs(model, targets, batch_size)


def _frame(records: list[tuple[int, int, str, float, float]], kind: str) -> pl.DataFrame:
    layer, head, tid, base, abl = (list(c) for c in zip(*records)) if records else ([], [], [], [], [])
    df = pl.DataFrame(
        {"layer": layer, "head": head, "ablation": [kind] * len(layer), "target_id": tid,
         "base_loss": base, "ablated_loss": abl},
        schema={k: v for k, v in ABLATION_SCHEMA.items() if k != "delta"},
    )
    df = df.with_columns((pl.col("ablated_loss") - pl.col("base_loss")).alias("delta"))
    return df.sort("layer", "head", "target_id")


@torch.no_grad()
def naive_head_ablation(
    model, targets: Sequence[Target], kind: str = "zero", batch_size: int = 8, fill: torch.Tensor | None = None
) -> pl.DataFrame:
    """Reference sweep: a full forward (full-vocabulary logits everywhere) per head."""
    fill = _resolve_fill(model, targets, kind, batch_size, fill)
    lay = layout(model)
    records = []

    def losses(batch):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
        ce = F.cross_entropy(logits[batch.rows, batch.positions], batch.labels, reduction="none")
        return per_target_mean(ce, batch.owner, len(batch.target_ids))

    for batch in batches(list(targets), batch_size, _pad_id(model)):
        base = losses(batch).tolist()
        for layer in range(len(lay.blocks)):
            for head in range(lay.n_heads):
                with head_intervention(model, mask_from_heads(model, [(layer, head)]), fill):
                    abl = losses(batch).tolist()
                records += [(layer, head, t, b, a) for t, b, a in zip(batch.target_ids, base, abl)]
    return _frame(records, kind)


@torch.no_grad()
def head_ablation(
    model,
    targets: Sequence[Target],
    kind: str = "zero",
    batch_size: int = 8,
    heads_per_pass: int | None = None,
    fill: torch.Tensor | None = None,
    checkpoint=NO_CHECKPOINT,
) -> pl.DataFrame:
    """Exact single-head ablation sweep, fast (see the module docstring).

    kind="zero" replaces a head's output by 0; kind="mean" by `fill` ([L, H, head_dim];
    `mean_head_outputs(model, targets, batch_size)` when not given). `heads_per_pass` heads
    of one layer share a forward on the batch axis (all of the layer's heads by default).
    Returns one row per (layer, head, target) with the clean and ablated code losses.
    A `checkpoint` keeps every (batch, layer) step's losses; a resumed run recomputes only
    the clean pass of the steps it finds.
    """
    fill = _resolve_fill(model, targets, kind, batch_size, fill)
    lay = layout(model)
    n_layers, n_heads, head_dim = len(lay.blocks), lay.n_heads, lay.head_dim
    per_pass = max(1, min(heads_per_pass or n_heads, n_heads))
    records = []
    all_batches = list(batches(list(targets), batch_size, _pad_id(model)))
    checkpoint.begin(len(all_batches) * n_layers, "layers")
    verified = False
    for i, batch in enumerate(all_batches):
        batch = _trim(batch)
        runner = BlockRunner(model, batch.attention_mask)
        restrict = runner.can_restrict_last_block()
        B, T = batch.input_ids.shape
        resid = runner.embed(batch.input_ids)
        ablated = torch.empty(n_layers, n_heads, B)
        last = n_layers - 1
        steps = [f"{kind}-batch{i:05d}-layer{layer:04d}" for layer in range(n_layers)]
        saved = [checkpoint.get(step) for step in steps]
        if not verified and None in saved:  # the first batch this run computes checks the runner
            runner.verify(batch, resid, restrict, "head_ablation")
            verified = True
        for layer in range(n_layers):
            attn, z = _capture_head_outputs(model, layer, lambda: runner.attn_out(layer, resid))
            if saved[layer] is not None:  # only the clean pass runs through a resumed layer
                ablated[layer] = torch.tensor(saved[layer], dtype=ablated.dtype)
            z = z.view(B, T, n_heads, head_dim)
            w = head_out_weights(model, layer)
            for h0 in range(0, n_heads, per_pass) if saved[layer] is None else ():
                hs = list(range(h0, min(h0 + per_pass, n_heads)))
                k = len(hs)
                diff = -z[:, :, hs] if fill is None else fill[layer, hs].to(z.dtype) - z[:, :, hs]
                x = attn.unsqueeze(0) + torch.einsum("btkd,kde->kbte", diff, w[hs])  # [k, B, T, D]
                rows, positions = _rep_index(batch, B, k)
                if layer == last:
                    x = x.reshape(k * B, T, -1)[rows, positions]
                    mid = runner.attn_add(layer, resid[batch.rows, batch.positions].repeat(k, 1), x)
                    out = runner.mlp_half(layer, mid)
                else:
                    x = runner.attn_add(layer, resid, x).reshape(k * B, T, -1)  # resid broadcasts over k
                    x = runner.mlp_half(layer, x)
                    if restrict:
                        x = runner.run(x, layer + 1, last)
                        out = runner.last_block_at(x, rows, positions)
                    else:
                        out = runner.run(x, layer + 1)[rows, positions]
                ablated[layer, hs] = runner.losses_at(out, batch, k)
            if saved[layer] is None:
                checkpoint.put(steps[layer], ablated[layer].tolist())
            if layer < last:
                resid = runner.mlp_half(layer, runner.attn_add(layer, resid, attn))
            else:
                mid = runner.attn_add(layer, resid[batch.rows, batch.positions], attn[batch.rows, batch.positions])
                base = runner.losses_at(runner.mlp_half(layer, mid), batch, 1)[0].tolist()
        for layer in range(n_layers):
            for head in range(n_heads):
                records += [
                    (layer, head, t, b, a) for t, b, a in zip(batch.target_ids, base, ablated[layer, head].tolist())
                ]
    return _frame(records, kind)


def delta_matrix(df: pl.DataFrame) -> np.ndarray:
    """[L, H] mean delta over targets (one ablation kind per frame)."""
    kinds = df["ablation"].unique().to_list()
    if len(kinds) > 1:
        raise ValueError(f"frame mixes ablation kinds {sorted(kinds)}: filter it first")
    agg = df.group_by("layer", "head").agg(pl.col("delta").mean()).sort("layer", "head")
    out = np.full((int(df["layer"].max()) + 1, int(df["head"].max()) + 1), np.nan)
    out[agg["layer"].to_numpy(), agg["head"].to_numpy()] = agg["delta"].to_numpy()
    return out


@torch.no_grad()
def knockout(
    model,
    targets: Sequence[Target],
    ranking: Sequence[tuple[int, int]],
    batch_size: int = 8,
    kind: str = "zero",
    fill: torch.Tensor | None = None,
    steps_per_pass: int = 8,
    every: int = 1,
    boot: Bootstrap | None = None,
    checkpoint=NO_CHECKPOINT,
    step_prefix: str = "knockout",
) -> pl.DataFrame:
    """Cumulative removal in `ranking` order: loss (mean over targets of the per-target code
    loss) with the first k heads removed, k = 0..len(ranking). Columns k, layer, head (the
    head removed at step k, null at k=0), loss, its bootstrap interval over targets
    (`boot`), n_targets.

    `every` > 1 evaluates every `every`-th k only (always including 0 and all heads), for
    real models where each step is a forward pass.

    `steps_per_pass` consecutive k values share a forward on the batch axis; they agree on
    every layer below the earliest head they add to the chunk's first mask, so those layers
    run once, on the batch alone. A `checkpoint` keeps each (batch, chunk of k) step's losses.
    """
    fill = _resolve_fill(model, targets, kind, batch_size, fill)
    lay = layout(model)
    n_layers, n_heads = len(lay.blocks), lay.n_heads
    ranking = [(int(l), int(h)) for l, h in ranking]
    if len(set(ranking)) != len(ranking):
        raise ValueError("knockout ranking repeats a head")
    for l, h in ranking:
        if not (0 <= l < n_layers and 0 <= h < n_heads):
            raise ValueError(f"head ({l}, {h}) is outside the model's {n_layers} x {n_heads} heads")
    n_steps = len(ranking) + 1
    if every < 1:
        raise ValueError(f"knockout every must be >= 1, got {every}")
    chosen = sorted(set(range(0, n_steps, every)) | {n_steps - 1})
    masks = [full_mask(model)]
    for l, h in ranking:
        m = masks[-1].clone()
        m[l, h] = 0.0
        masks.append(m)
    per_target: dict[str, torch.Tensor] = {}  # target id -> loss at every step
    per_pass = max(1, steps_per_pass)
    last = n_layers - 1
    all_batches = list(batches(list(targets), batch_size, _pad_id(model)))
    chunks = range(0, len(chosen), per_pass)
    checkpoint.begin(len(all_batches) * len(chunks), "chunks")
    verified = False
    for i, batch in enumerate(all_batches):
        batch = _trim(batch)
        runner = BlockRunner(model, batch.attention_mask)
        restrict = runner.can_restrict_last_block()
        B = batch.input_ids.shape[0]
        losses = torch.zeros(n_steps, B, dtype=torch.float64)
        emb = runner.embed(batch.input_ids)
        steps = [f"{step_prefix}-batch{i:05d}-chunk{c0:05d}" for c0 in chunks]
        saved = [checkpoint.get(step) for step in steps]
        if not verified and None in saved:  # the first batch this run computes checks the runner
            runner.verify(batch, emb, restrict, "knockout")
            verified = True
        for c0, step, done in zip(chunks, steps, saved):
            ks = chosen[c0 : c0 + per_pass]
            if done is not None:
                losses[ks] = torch.tensor(done, dtype=losses.dtype)
                continue
            k0 = ks[0]
            added = ranking[k0 : ks[-1]]
            split = min(min((l for l, _ in added), default=n_layers), last if restrict else n_layers)
            with head_intervention(model, masks[k0], fill, layers=range(split)):
                resid = runner.run(emb, 0, split)
            keep = torch.stack([masks[k] for k in ks]).repeat_interleave(B, dim=0)  # row j*B+b: mask ks[j]
            x = resid.repeat(len(ks), 1, 1)
            rows, positions = _rep_index(batch, B, len(ks))
            if restrict:
                with head_intervention(model, keep, fill, layers=range(split, last)):
                    x = runner.run(x, split, last)
                out = runner.last_block_at(x, rows, positions, keep[:, last], None if fill is None else fill[last])
            else:
                with head_intervention(model, keep, fill, layers=range(split, n_layers)):
                    out = runner.run(x, split)[rows, positions]
            losses[ks] = runner.losses_at(out, batch, len(ks)).double()
            checkpoint.put(step, losses[ks].tolist())
        per_target.update({t: losses[:, j] for j, t in enumerate(batch.target_ids)})
    matrix = np.stack([per_target[t][chosen].numpy() for t in sorted(per_target)])  # [targets, steps]
    loss, low, high = bootstrap_means(matrix, boot or Bootstrap())
    removed = [(None, None)] + ranking
    return pl.DataFrame(
        {
            "k": chosen,
            "layer": [removed[k][0] for k in chosen],
            "head": [removed[k][1] for k in chosen],
            "loss": loss.tolist(),
            "ci_low": low.tolist(),
            "ci_high": high.tolist(),
            "n_targets": [len(per_target)] * len(chosen),
        },
        schema=KNOCKOUT_SCHEMA,
    )


def ranking_from_deltas(deltas: np.ndarray, most_first: bool) -> list[tuple[int, int]]:
    """All heads ordered by delta (descending if most_first), ties by (layer, head)."""
    L, H = deltas.shape
    heads = [(l, h) for l in range(L) for h in range(H)]
    sign = -1.0 if most_first else 1.0
    return sorted(heads, key=lambda lh: (sign * float(deltas[lh]), lh[0], lh[1]))


def knockout_curves(model, targets: Sequence[Target], delta_matrix: np.ndarray, batch_size: int = 8, **kwargs) -> pl.DataFrame:
    """Knockout curves in both orders: most important first (descending delta) and least
    important first (ascending), column `order` = "most_first" / "least_first"."""
    deltas = np.asarray(delta_matrix, dtype=float)
    if np.isnan(deltas).any():
        raise ValueError("delta matrix has missing heads (NaN)")
    frames = []
    for order, most in (("most_first", True), ("least_first", False)):
        df = knockout(model, targets, ranking_from_deltas(deltas, most), batch_size, step_prefix=order, **kwargs)
        frames.append(df.with_columns(pl.lit(order).alias("order")).select("order", *KNOCKOUT_SCHEMA))
    return pl.concat(frames)
