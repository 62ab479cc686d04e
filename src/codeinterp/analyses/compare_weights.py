"""Weight-space comparison of two models of one architecture and size (rule compare_weights).

Per (layer, query head), on the matrices of codeinterp.access.weights (norm gains folded):
- the OV circuit W_V[g] W_O[h] and the QK circuit W_Q[h] W_K[g]^T, both [D, D] of rank <= d,
  compared without forming them: <A1 B1, A2 B2>_F = trace((A1^T A2)(B2 B1^T));
- `cosine`: Frobenius cosine similarity; `rel_diff`: ||X_b - X_a||_F / ||X_a||_F (not a
  "fraction of parameters changed", which is near 1 for any fine-tune);
- `read_overlap` / `write_overlap`: how much the top-k singular subspaces agree, the mean
  squared cosine of the principal angles between model a's and model b's top-k left
  (read: residual directions the circuit reads; for QK the query side) and right (write;
  for QK the key side) singular vectors: 1 for the same subspace, about k / D for random ones.
Per layer the same for the MLP's input [D, I] and output [I, D] matrices (`circuit` MLP_in,
MLP_out). Per layer a summary (`level` block): the mean over heads, the lowest cosine and its
head.

Caveats the report repeats: with rotary embeddings W_Q W_K^T is not the whole bilinear form
(the rotation between positions is left out); residual bases of two models are only
comparable when one was trained from the other, so a cosine between unrelated models says
nothing.
"""

from __future__ import annotations

import polars as pl
import torch

from codeinterp.access.weights import Weights, weights
from codeinterp.errors import ConfigError

SCHEMA = {
    "model_a": pl.Utf8, "model_b": pl.Utf8, "level": pl.Utf8, "circuit": pl.Utf8, "layer": pl.Int64,
    "head": pl.Int64, "cosine": pl.Float64, "rel_diff": pl.Float64, "read_overlap": pl.Float64,
    "write_overlap": pl.Float64, "norm_a": pl.Float64, "norm_b": pl.Float64, "min_cosine": pl.Float64,
    "min_head": pl.Int64, "singular_vectors": pl.Int64,
}


def check_comparable(a: Weights, b: Weights, name_a: str, name_b: str) -> None:
    """One line naming both models and the first dimension that differs."""
    for key in ("architecture", "n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden_size", "intermediate_size"):
        if a.dims[key] != b.dims[key]:
            raise ConfigError(f"comparisons.weights: {name_a} and {name_b} differ in {key} "
                              f"({a.dims[key]} vs {b.dims[key]}); weights are compared only between models of one "
                              "architecture and size")


def _low_rank(A: torch.Tensor, B: torch.Tensor, k: int):
    """Frobenius norm and top-k left/right singular vectors of A @ B (A [D, r], B [r, D])."""
    qa, ra = torch.linalg.qr(A.double())
    qb, rb = torch.linalg.qr(B.double().t())
    u, s, vh = torch.linalg.svd(ra @ rb.t())
    return float(s.norm()), qa @ u[:, :k], qb @ vh[:k].t()


def _dense(M: torch.Tensor, k: int):
    """Frobenius norm and top-k left/right singular vectors of M, from the eigenvectors of the
    smaller Gram matrix (an MLP matrix is D x I with I several times D: a full SVD costs more)."""
    M = M.double()
    wide = M.shape[0] <= M.shape[1]
    gram = M @ M.t() if wide else M.t() @ M
    values, vectors = torch.linalg.eigh(gram)  # ascending
    top = vectors[:, -k:].flip(1)
    scale = values[-k:].flip(0).clamp_min(1e-300).sqrt()
    other = (M.t() @ top if wide else M @ top) / scale
    left, right = (top, other) if wide else (other, top)
    return float(M.norm()), left, right


def _overlap(U: torch.Tensor, V: torch.Tensor) -> float:
    k = U.shape[1]
    return float((U.t() @ V).pow(2).sum() / k) if k else float("nan")


def _pair_stats(inner: float, a, b) -> dict:
    """a, b: (norm, left, right) of the two models' matrices; `inner` their Frobenius product."""
    (na, ua, va), (nb, ub, vb) = a, b
    diff2 = max(na * na + nb * nb - 2 * inner, 0.0)
    return {"cosine": inner / (na * nb) if na and nb else float("nan"), "rel_diff": diff2 ** 0.5 / na if na else float("nan"),
            "read_overlap": _overlap(ua, ub), "write_overlap": _overlap(va, vb), "norm_a": na, "norm_b": nb}


def _factored_inner(A1, B1, A2, B2) -> float:
    return float(torch.trace((A1.double().t() @ A2.double()) @ (B2.double() @ B1.double().t())))


def _head_rows(a: Weights, b: Weights, layer: int, k: int) -> list[dict]:
    rows = []
    for h in range(a.dims["n_heads"]):
        g = a.group(h)
        circuits = {
            "OV": ((a.W_V[layer][g], a.W_O[layer][h]), (b.W_V[layer][g], b.W_O[layer][h])),
            "QK": ((a.W_Q[layer][h], a.W_K[layer][g].t()), (b.W_Q[layer][h], b.W_K[layer][g].t())),
        }
        for circuit, ((A1, B1), (A2, B2)) in circuits.items():
            rank = min(k, A1.shape[1])
            stats = _pair_stats(_factored_inner(A1, B1, A2, B2), _low_rank(A1, B1, rank), _low_rank(A2, B2, rank))
            rows.append({"level": "head", "circuit": circuit, "layer": layer, "head": h, **stats,
                         "singular_vectors": rank})
    return rows


def _mlp_rows(a: Weights, b: Weights, layer: int, k: int) -> list[dict]:
    rows = []
    for circuit, ma, mb in (("MLP_in", a.mlp_in[layer], b.mlp_in[layer]), ("MLP_out", a.mlp_out[layer], b.mlp_out[layer])):
        rank = min(k, *ma.shape)
        inner = float((ma.double() * mb.double()).sum())
        rows.append({"level": "mlp", "circuit": circuit, "layer": layer, "head": None,
                     **_pair_stats(inner, _dense(ma, rank), _dense(mb, rank)), "singular_vectors": rank})
    return rows


def _block_rows(heads: list[dict], layer: int) -> list[dict]:
    rows = []
    for circuit in ("OV", "QK"):
        mine = [r for r in heads if r["circuit"] == circuit]
        worst = min(mine, key=lambda r: (r["cosine"], r["head"]))
        mean = {c: sum(r[c] for r in mine) / len(mine) for c in ("cosine", "rel_diff", "read_overlap", "write_overlap",
                                                                 "norm_a", "norm_b")}
        rows.append({"level": "block", "circuit": circuit, "layer": layer, "head": None, **mean,
                     "min_cosine": worst["cosine"], "min_head": worst["head"], "singular_vectors": mine[0]["singular_vectors"]})
    return rows


def compare(a: Weights, b: Weights, name_a: str, name_b: str, singular_vectors: int = 8) -> pl.DataFrame:
    check_comparable(a, b, name_a, name_b)
    rows = []
    for layer in range(a.dims["n_layers"]):
        heads = _head_rows(a, b, layer, singular_vectors)
        rows += heads + _mlp_rows(a, b, layer, singular_vectors) + _block_rows(heads, layer)
    table = pl.DataFrame([{"model_a": name_a, "model_b": name_b, **r} for r in rows], schema=SCHEMA)
    order = {"head": 0, "mlp": 1, "block": 2}
    return (table.with_columns(pl.col("level").replace_strict(order, return_dtype=pl.Int64).alias("_order"))
            .sort("_order", "layer", "head", "circuit", nulls_last=True).drop("_order"))


@torch.no_grad()
def compare_weights(model_a, model_b, name_a: str, name_b: str, settings: dict) -> tuple[pl.DataFrame, list[str]]:
    """The comparison table of two loaded models and the caveats that apply to their architecture."""
    a, b = weights(model_a), weights(model_b)
    return compare(a, b, name_a, name_b, int(settings.get("singular_vectors", 8))), a.notes
