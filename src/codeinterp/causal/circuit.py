"""Circuit discovery on the component graph (rule circuit): edge attribution patching with
integrated gradients (EAP-IG, Hanna, Pezzelle and Belinkov 2024), then circuits of growing size
verified by exact edge patching.

Edge u -> v scores (a_u(clean) - a_u(corrupt)) . (1/m) sum_{k=1..m} dM/dx_v at embeddings
corrupt + k/m (clean - corrupt) (m = ig_steps; EAP-IG's "inputs" variant, the paper's right
Riemann sum), summed over positions and averaged over pairs; M is the logit difference
(`causal.pairs.logit_diff`), x_v target v's own copy of the residual stream (access.edges).
Positive scores help the clean answer. Gradients are taken once per downstream node, never per
edge: the [U, V] score matrix is one product of the upstream differences with them.

A circuit of size k keeps the k edges of largest |score| that lie on a path from the input to
the logits (edges that hang off it are dropped, so a circuit may hold fewer than k). Its
faithfulness is measured exactly: every edge outside it carries the corrupted run's value of
its upstream node (v's input = sum over kept u of a_u(this run) + sum over the others of
a_u(corrupt)), and faithfulness = (mean M(circuit) - mean M(corrupt)) / (mean M(clean) -
mean M(corrupt)) over pairs, a ratio of means with a seeded percentile bootstrap interval
that resamples pairs. The full graph gives 1 and the empty circuit 0, exactly (both run the
same additions as the clean and the corrupted forward).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from codeinterp.access.edges import EdgeRunner
from codeinterp.causal.pairs import PairBatch, n_batches, pair_batches
from codeinterp.progress import Progress
from codeinterp.causal.sublayer import ratio_interval
from codeinterp.uncertainty import Bootstrap


def _metric(runner: EdgeRunner, final: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    logits = runner.logits(final, batch.last)
    rows = torch.arange(len(batch))
    return logits[rows, batch.clean_token] - logits[rows, batch.corrupt_token]


def eap_ig_scores(model, pairs, steps: int, batch_size: int, pad_id: int = 0) -> tuple[torch.Tensor, EdgeRunner]:
    """[U, V] mean edge scores over pairs (0 where no edge exists)."""
    if not pairs:
        raise ValueError("EAP-IG needs at least one pair")
    model.requires_grad_(False)
    total, runner = None, None
    progress = Progress("circuit EAP-IG", n_batches(pairs, batch_size) * steps, unit="gradient steps")
    for i, batch in enumerate(pair_batches(pairs, batch_size, pad_id)):
        runner = EdgeRunner(model, batch.mask)
        with torch.no_grad():
            clean_emb, bad_emb = runner.runner.embed(batch.clean), runner.runner.embed(batch.corrupt)
            clean_outs, clean_final = runner.forward(clean_emb)
            if i == 0:
                runner.check(batch.clean, batch.last, clean_final)
            bad_outs, _ = runner.forward(bad_emb)
            real = batch.mask[..., None].to(clean_emb.dtype)
            delta = torch.stack([((c - b) * real).flatten() for c, b in zip(clean_outs, bad_outs)])  # [U, B*T*D]
            del clean_outs, bad_outs
        grads = torch.zeros(len(runner.targets), delta.shape[1], dtype=torch.float32)  # [V, B*T*D]
        for k in range(1, steps + 1):
            inputs: dict[str, torch.Tensor] = {}

            def combine(target, outs, total_so_far):
                x = total_so_far + 0  # a node of its own, so that its gradient is this target's alone
                x.retain_grad()
                inputs[target] = x
                return x

            emb = (bad_emb + (clean_emb - bad_emb) * (k / steps)).requires_grad_(True)
            with torch.enable_grad():
                _, final = runner.forward(emb, combine)
                _metric(runner, final, batch).sum().backward()
            for j, t in enumerate(runner.targets):
                grads[j] += inputs[t].grad.flatten().float()
            progress.advance()
        scores = (delta.float() @ grads.t()).double() / steps  # [U, V], summed over pairs and positions
        total = scores if total is None else total + scores
    progress.close()
    return (total / len(pairs)).float() * runner.edge_mask(), runner


def _connected(edges: torch.Tensor, runner: EdgeRunner) -> torch.Tensor:
    """The edges of `edges` [U, V] that lie on some path from the input to the logits."""
    keep = edges.numpy().copy()
    as_node = runner.target_nodes()  # target j is node as_node[j] (None: the logits)
    U = len(runner.nodes)
    inner = [(j, u) for j, u in enumerate(as_node) if u is not None]
    logits = as_node.index(None)
    # Nodes come in topological order (upstream nodes are a prefix), so one pass each way.
    live = np.zeros(U, dtype=bool)  # reached from the input
    live[0] = True
    for j, u in inner:
        live[u] = bool((keep[:, j] & live).any())
    matters = np.zeros(U, dtype=bool)  # reaches the logits
    target_of = np.full(U, -1)
    for j, u in inner:
        target_of[u] = j
    node_of_target = np.array([-1 if u is None else u for u in as_node])
    for u in reversed(range(U)):
        outgoing = keep[u]
        reach = outgoing[logits] or bool((outgoing & (node_of_target >= 0) & matters[np.maximum(node_of_target, 0)]).any())
        matters[u] = reach
    on_path = live & matters
    keep &= on_path[:, None]  # the edge's upstream end is reached and reaches the logits
    for j, u in inner:  # and so is its downstream end
        keep[:, j] &= on_path[u]
    return torch.from_numpy(keep)


def select(scores: torch.Tensor, runner: EdgeRunner, k: int) -> torch.Tensor:
    """[U, V] the top-k edges by |score| (ties broken by position, stably), minus those on no
    path from the input to the logits."""
    allowed = runner.edge_mask()
    flat = scores.abs().masked_fill(~allowed, -1).flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    k = min(k, int(allowed.sum()))
    if k > 0:
        keep[torch.argsort(-flat, stable=True)[:k]] = True
    return _connected(keep.view_as(scores) & allowed, runner)


def _combine_for(edges: torch.Tensor, runner: EdgeRunner, bad_outs, prefix):
    """The input of every target with only `edges` [U, V] carrying this run's values: the
    corrupted run's sum of the upstream outputs plus, for each kept edge, a_u(now) - a_u(corrupt)
    (or this run's sum minus the differences of the dropped edges, whichever is shorter)."""
    index = {t: j for j, t in enumerate(runner.targets)}

    def combine(target, outs, total):
        j, n = index[target], len(outs)
        kept = torch.nonzero(edges[:n, j]).flatten().tolist()
        if len(kept) == n:
            return total  # every edge kept: the clean-run sum, bit for bit
        if not kept:
            return prefix[n]  # no edge kept: the corrupted run's sum, bit for bit
        if len(kept) <= n // 2:
            x = prefix[n]
            for u in kept:
                x = x + (outs[u] - bad_outs[u])
            return x
        x = total
        for u in torch.nonzero(~edges[:n, j]).flatten().tolist():
            x = x - (outs[u] - bad_outs[u])
        return x

    return combine


@torch.no_grad()
def patched_metrics(model, pairs, circuits: list[torch.Tensor], batch_size: int, pad_id: int = 0) -> np.ndarray:
    """[len(circuits) + 2, N]: the metric of each circuit's edge-patched run per pair, then the
    clean and the corrupted run's (the graph checked against the model on the first batch)."""
    rows = []
    progress = Progress("circuit patching", n_batches(pairs, batch_size) * len(circuits), unit="circuit runs")
    for i, batch in enumerate(pair_batches(pairs, batch_size, pad_id)):
        runner = EdgeRunner(model, batch.mask)
        clean_emb, bad_emb = runner.runner.embed(batch.clean), runner.runner.embed(batch.corrupt)
        bad_outs, bad_final = runner.forward(bad_emb)
        _, clean_final = runner.forward(clean_emb)
        if i == 0:
            runner.check(batch.clean, batch.last, clean_final)
        prefix = [torch.zeros_like(bad_emb)]  # prefix[n]: the corrupted run's sum of its first n outputs
        for o in bad_outs:
            prefix.append(prefix[-1] + o)
        col = []
        for edges in circuits:
            _, final = runner.forward(clean_emb, _combine_for(edges, runner, bad_outs, prefix))
            col.append(_metric(runner, final, batch))
            progress.advance()
        col += [_metric(runner, clean_final, batch), _metric(runner, bad_final, batch)]
        rows.append(torch.stack(col))
    progress.close()
    return torch.cat(rows, 1).numpy()


def faithfulness(values: np.ndarray, boot: Bootstrap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per circuit: (mean - mean corrupt) / (mean clean - mean corrupt) over pairs, with a
    percentile interval from resampling pairs (NaN below MIN_UNITS pairs)."""
    values = np.asarray(values, dtype=np.float64)
    circ, clean, bad = values[:-2], values[-2], values[-1]
    return ratio_interval((circ - bad).T, clean - bad, boot)


def sizes_for(n_edges: int, sizes: int) -> list[int]:
    """0, `sizes` log-spaced edge counts from 1 to every edge, and every edge."""
    return sorted({int(round(x)) for x in np.geomspace(1, n_edges, sizes)} | {0, n_edges})


def discover(model, pairs, *, steps: int, target: float, sizes: int, batch_size: int, boot: Bootstrap,
             pad_id: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(faithfulness curve, edge table)."""
    scores, runner = eap_ig_scores(model, pairs, steps, batch_size, pad_id)
    allowed = runner.edge_mask()
    ks = sizes_for(int(allowed.sum()), sizes)
    circuits = [select(scores, runner, k) for k in ks]
    # Sizes whose pruned circuits coincide (small k often keeps nothing connected) run once.
    distinct: dict[bytes, int] = {}
    which = [distinct.setdefault(c.numpy().tobytes(), len(distinct)) for c in circuits]
    firsts = [circuits[which.index(i)] for i in range(len(distinct))]
    measured = patched_metrics(model, pairs, firsts, batch_size, pad_id)
    values = np.concatenate([measured[which], measured[-2:]])
    point, low, high = faithfulness(values, boot)
    # A circuit without a head moves nothing between positions: when the prompts differ before the
    # last position, its faithfulness is exactly 0, whatever its size (the report says so).
    is_head = torch.tensor([t.startswith("L") for t in runner.targets])
    curve = pl.DataFrame({"edges_requested": ks, "edges": [int(c.sum()) for c in circuits],
                          "heads": [int(c[:, is_head].any(0).sum()) for c in circuits],
                          "faithfulness": point, "faithfulness_ci_low": low, "faithfulness_ci_high": high,
                          "n": [values.shape[1]] * len(ks)})
    reached = curve.filter((pl.col("faithfulness") >= target) & (pl.col("edges") > 0))
    best = curve.filter(pl.col("edges") > 0).with_columns(pl.col("faithfulness").fill_nan(None)).sort(
        "faithfulness", "edges", descending=[True, False], nulls_last=True)
    chosen_row = (reached if len(reached) else best).row(0, named=True)
    chosen = circuits[ks.index(chosen_row["edges_requested"])]
    curve = curve.with_columns((pl.col("edges_requested") == chosen_row["edges_requested"]).alias("chosen"),
                               pl.lit(bool(len(reached))).alias("reaches_target"), pl.lit(target).alias("target"))
    return curve, edge_table(scores, runner, chosen, len(pairs))


def edge_table(scores: torch.Tensor, runner: EdgeRunner, chosen: torch.Tensor, n: int) -> pl.DataFrame:
    """Every edge of the graph with its score, rank by |score| (0 = strongest) and membership."""
    ui, vi = torch.nonzero(runner.edge_mask(), as_tuple=True)
    s = scores[ui, vi]
    order = torch.argsort(-s.abs(), stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return pl.DataFrame({"upstream": [runner.nodes[i] for i in ui.tolist()],
                         "downstream": [runner.targets[j] for j in vi.tolist()],
                         "score": s.double().numpy(), "rank": rank.numpy(),
                         "in_circuit": chosen[ui, vi].numpy(), "n": [n] * len(ui)}).sort("rank")
