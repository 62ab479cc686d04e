"""Circuit discovery on the component graph (rule circuit): edge attribution patching with
integrated gradients (EAP-IG, Hanna, Pezzelle and Belinkov 2024), then circuits of growing size
verified by exact edge patching.

Edge u -> v scores (a_u(clean) - a_u(corrupt)) . mean over k of dM/dx_v at embeddings
interpolated from the corrupted to the clean prompt (k = 1..steps, EAP-IG's "inputs"
variant), summed over positions and averaged over pairs; M is the logit difference.
A circuit of size k keeps the k edges of largest |score| that lie on a path from the input to
the logits. Its faithfulness is measured exactly: every edge outside it carries the corrupted
run's value of its upstream node (v's input = the corrupted input plus, for each kept edge,
a_u(this run) - a_u(corrupt)), and faithfulness = (mean M(circuit) - mean M(corrupt)) /
(mean M(clean) - mean M(corrupt)) over pairs, with a bootstrap interval that resamples pairs.
The full graph gives 1 and the empty circuit 0, exactly.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from codeinterp.access.edges import EdgeRunner
from codeinterp.causal.pairs import PairBatch, pair_batches
from codeinterp.uncertainty import MIN_UNITS, Bootstrap


def _metric(runner: EdgeRunner, final: torch.Tensor, batch: PairBatch) -> torch.Tensor:
    logits = runner.logits(final, batch.last)
    rows = torch.arange(len(batch))
    return logits[rows, batch.clean_token] - logits[rows, batch.corrupt_token]


def _mask_matrix(runner: EdgeRunner) -> torch.Tensor:
    """[U, V] True where node u writes into target v's input."""
    U, V = len(runner.nodes), len(runner.targets)
    allowed = torch.zeros(U, V, dtype=torch.bool)
    for j, t in enumerate(runner.targets):
        allowed[: runner.upstream(t), j] = True
    return allowed


def eap_ig_scores(model, pairs, steps: int, batch_size: int, pad_id: int = 0) -> tuple[torch.Tensor, EdgeRunner]:
    """[U, V] mean edge scores over pairs (0 where no edge exists)."""
    model.requires_grad_(False)
    total, count, runner = None, 0, None
    for i, batch in enumerate(pair_batches(pairs, batch_size, pad_id)):
        runner = EdgeRunner(model, batch.mask)
        if i == 0:
            runner.check(batch.clean, batch.last)
        with torch.no_grad():
            clean_emb, bad_emb = runner.runner.embed(batch.clean), runner.runner.embed(batch.corrupt)
            clean_outs, _ = runner.forward(clean_emb)
            bad_outs, _ = runner.forward(bad_emb)
        real = batch.mask[..., None].float()
        delta = torch.stack([(c - b) * real for c, b in zip(clean_outs, bad_outs)])  # [U, B, T, D]
        grads = None
        for k in range(1, steps + 1):
            inputs: dict[str, torch.Tensor] = {}

            def combine(target, outs, total):
                x = total + 0  # a node of its own, so that its gradient is this target's alone
                x.retain_grad()
                inputs[target] = x
                return x

            emb = (bad_emb + (clean_emb - bad_emb) * (k / steps)).requires_grad_(True)
            with torch.enable_grad():
                _, final = runner.forward(emb, combine)
                _metric(runner, final, batch).sum().backward()
            g = torch.stack([inputs[t].grad for t in runner.targets])  # [V, B, T, D]
            grads = g if grads is None else grads + g
        grads = grads / steps
        scores = torch.einsum("ubtd,vbtd->uv", delta.double(), grads.double())
        total = scores if total is None else total + scores
        count += len(batch)
    return (total / count).float() * _mask_matrix(runner), runner


def select(scores: torch.Tensor, runner: EdgeRunner, k: int) -> torch.Tensor:
    """[U, V] the top-k edges by |score|, minus those on no path from the input to the logits."""
    allowed = _mask_matrix(runner)
    flat = scores.abs().masked_fill(~allowed, -1).flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        keep[torch.topk(flat, min(k, int(allowed.sum()))).indices] = True
    edges = keep.view_as(scores) & allowed
    return _connected(edges, runner)


def _connected(edges: torch.Tensor, runner: EdgeRunner) -> torch.Tensor:
    target_index = {t: j for j, t in enumerate(runner.targets)}
    node_as_target = [target_index.get(n) for n in runner.nodes]  # input has none
    # Forward: a node is live if it is the input or an in-circuit edge enters it from a live node.
    live = torch.zeros(len(runner.nodes), dtype=torch.bool)
    live[0] = True
    for u, j in enumerate(node_as_target):
        if j is not None:
            live[u] = bool((edges[:, j] & live).any())
    # Backward: a node matters if one of its in-circuit edges reaches the logits or a node that matters.
    matters = torch.zeros(len(runner.nodes), dtype=torch.bool)
    logits = target_index["logits"]
    for u in reversed(range(len(runner.nodes))):
        reach = edges[u, logits]
        for j, t in enumerate(runner.targets[:-1]):
            if edges[u, j] and matters[runner.nodes.index(t)]:
                reach = True
        matters[u] = bool(reach)
    keep = edges & live[:, None] & matters[:, None]
    for j, t in enumerate(runner.targets[:-1]):  # an edge into a node that matters nowhere goes too
        keep[:, j] &= matters[runner.nodes.index(t)] & live[runner.nodes.index(t)]
    return keep


@torch.no_grad()
def patched_metrics(model, pairs, circuits: list[torch.Tensor], batch_size: int, pad_id: int = 0) -> np.ndarray:
    """[len(circuits) + 2, N]: the metric of each circuit's edge-patched run per pair, then the
    clean and the corrupted run's."""
    rows = []
    for batch in pair_batches(pairs, batch_size, pad_id):
        runner = EdgeRunner(model, batch.mask)
        clean_emb, bad_emb = runner.runner.embed(batch.clean), runner.runner.embed(batch.corrupt)
        bad_outs, bad_final = runner.forward(bad_emb)
        _, clean_final = runner.forward(clean_emb)
        prefix = [torch.zeros_like(bad_emb)]  # prefix[k]: sum of the corrupted run's first k outputs
        for o in bad_outs:
            prefix.append(prefix[-1] + o)
        col = []
        for edges in circuits:
            def combine(target, outs, total, edges=edges):
                j = runner.targets.index(target)
                x = prefix[len(outs)]
                for u in torch.nonzero(edges[: len(outs), j]).flatten().tolist():
                    x = x + (outs[u] - bad_outs[u])
                return x

            _, final = runner.forward(clean_emb, combine)
            col.append(_metric(runner, final, batch))
        col += [_metric(runner, clean_final, batch), _metric(runner, bad_final, batch)]
        rows.append(torch.stack(col))
    return torch.cat(rows, 1).numpy()


def faithfulness(values: np.ndarray, boot: Bootstrap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per circuit: (mean - mean corrupt) / (mean clean - mean corrupt), with percentile
    intervals from resampling pairs (NaN below MIN_UNITS pairs)."""
    circ, clean, bad = values[:-2], values[-2], values[-1]

    def ratio(idx):
        gap = clean[idx].mean() - bad[idx].mean()
        return (circ[:, idx].mean(1) - bad[idx].mean()) / gap if abs(gap) > 1e-9 else np.full(len(circ), np.nan)

    n = values.shape[1]
    point = ratio(np.arange(n))
    if n < MIN_UNITS:
        return point, np.full_like(point, np.nan), np.full_like(point, np.nan)
    rng = np.random.default_rng(boot.seed)
    draws = np.stack([ratio(rng.integers(0, n, n)) for _ in range(boot.resamples)])
    alpha = (1 - boot.confidence) / 2
    low, high = np.nanquantile(draws, [alpha, 1 - alpha], axis=0)
    return point, low, high


def discover(model, pairs, *, steps: int, target: float, sizes: int, batch_size: int, boot: Bootstrap,
             pad_id: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(faithfulness curve, edge table)."""
    scores, runner = eap_ig_scores(model, pairs, steps, batch_size, pad_id)
    allowed = _mask_matrix(runner)
    n_edges = int(allowed.sum())
    ks = sorted({int(round(x)) for x in np.geomspace(1, n_edges, sizes)} | {0, n_edges})
    circuits = [select(scores, runner, k) for k in ks]
    values = patched_metrics(model, pairs, circuits, batch_size, pad_id)
    point, low, high = faithfulness(values, boot)
    curve = pl.DataFrame({"edges_requested": ks, "edges": [int(c.sum()) for c in circuits],
                          "faithfulness": point, "faithfulness_ci_low": low, "faithfulness_ci_high": high,
                          "n": [values.shape[1]] * len(ks)})
    reached = curve.filter((pl.col("faithfulness") >= target) & (pl.col("edges") > 0))
    chosen_row = reached.row(0, named=True) if len(reached) else curve.sort("faithfulness").row(-1, named=True)
    chosen = circuits[ks.index(chosen_row["edges_requested"])]
    curve = curve.with_columns((pl.col("edges_requested") == chosen_row["edges_requested"]).alias("chosen"),
                               pl.lit(bool(len(reached))).alias("reaches_target"), pl.lit(target).alias("target"))
    ui, vi = torch.nonzero(allowed, as_tuple=True)
    s = scores[ui, vi]
    order = torch.argsort(-s.abs(), stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    edges = pl.DataFrame({"upstream": [runner.nodes[i] for i in ui.tolist()],
                          "downstream": [runner.targets[j] for j in vi.tolist()],
                          "score": s.double().numpy(), "rank": rank.numpy(),
                          "in_circuit": chosen[ui, vi].numpy(), "n": [len(pairs)] * len(ui)}).sort("rank")
    return curve, edges
