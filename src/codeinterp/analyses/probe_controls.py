"""The probes' model-side controls: residuals of a randomly initialised model of the same
architecture, and the projection test (is a decodable direction used?).

Projection test: at a property's best layer, the span of the probe's weight vectors
(orthonormalised, in the residual basis) is projected out of the residual stream at every
position (`hooks.edit_residual`), and the model's own next-token loss is compared with the
unedited forward on the positions where the property matters: position p predicts token
p + 1, and matters when token p + 1 is a closing bracket (bracket_depth), a newline or
indentation (indent), inside a string (in_string), or any code token (lexical, ast_node).
The baseline removes random subspaces of the same dimension (`RANDOM_DRAWS` seeded draws).
Per target: the mean loss change over its positions; then the mean over targets with a
bootstrap interval, and `excess` = probe change - mean random change, per target.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from codeinterp.access import hooks
from codeinterp.access.architectures import layout
from codeinterp.access.scoring import Target, make_batch
from codeinterp.analyses import probes
from codeinterp.errors import ConfigError
from codeinterp.uncertainty import Bootstrap, bootstrap_means

log = logging.getLogger(__name__)

# Three draws: each costs a full forward over the targets per property (the stage's largest cost
# on CPU); their spread is reported beside their mean.
RANDOM_DRAWS = 3
CHECK_TOKENS = 32

# property -> which next tokens make a position count (a polars predicate on the token table)
MATTERS = {
    "bracket_depth": pl.col("lexical") == "bracket_close",
    "indent": pl.col("lexical") == "newline_indent",
    "in_string": pl.col("in_string").fill_null(False),
    "lexical": pl.col("in_code").fill_null(False),
    "ast_node": pl.col("in_code").fill_null(False),
}

PROJECTION_SCHEMA = {
    "property": pl.Utf8, "layer": pl.Int64, "rank": pl.Int64, "base_loss": pl.Float64,
    "loss_change": pl.Float64, "loss_change_ci_low": pl.Float64, "loss_change_ci_high": pl.Float64,
    "random_loss_change": pl.Float64, "random_loss_change_sd": pl.Float64, "random_loss_change_min": pl.Float64,
    "random_loss_change_max": pl.Float64, "excess": pl.Float64, "excess_ci_low": pl.Float64,
    "excess_ci_high": pl.Float64, "n_random": pl.Int64, "n_tokens": pl.Int64, "n_targets": pl.Int64,
}


def random_init_model(model, seed: int):
    """A randomly initialised model of `model`'s architecture and size (seeded), float32, eager attention."""
    torch.manual_seed(seed)
    fresh = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32, attn_implementation="eager")
    return fresh.eval()


@torch.no_grad()
def residuals_at(model, targets: list[Target], frame: pl.DataFrame, layers: list[int], batch_size: int,
                 pad_id: int = 0) -> dict[int, np.ndarray]:
    """resid.{l} of `model` at `frame`'s tokens (target_id, position), in the frame's order,
    float32 [N, D] per layer, from forwards over batches of targets."""
    by_id = {t.target_id: t for t in targets}
    keys = frame.select("target_id", "position").with_row_index("i")
    wanted = [t for t in sorted(by_id) if t in set(keys["target_id"].to_list())]
    names = [f"resid.{l}" for l in layers]
    out = {l: None for l in layers}
    for start in range(0, len(wanted), batch_size):
        group = [by_id[t] for t in wanted[start : start + batch_size]]
        batch = make_batch(group, pad_id)
        sel = keys.filter(pl.col("target_id").is_in([t.target_id for t in group]))
        row_of = {t.target_id: i for i, t in enumerate(group)}
        rows = torch.tensor([row_of[t] for t in sel["target_id"].to_list()], dtype=torch.long)
        cols = torch.tensor(sel["position"].to_numpy(), dtype=torch.long)
        if start == 0:  # the hooks read this architecture right (a short slice: the check is a full forward)
            hooks.check_decomposition(model, batch.input_ids[:1, :CHECK_TOKENS], batch.attention_mask[:1, :CHECK_TOKENS])
        with hooks.capture(model, names, select=lambda v: v[rows, cols].float()) as got:
            layout(model).body(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        at = sel["i"].to_numpy()
        for l in layers:
            if out[l] is None:
                out[l] = np.empty((len(frame), got[f"resid.{l}"][0].shape[-1]), dtype=np.float32)
            out[l][at] = got[f"resid.{l}"][0].numpy()
    return out


def matter_positions(tokens: pl.DataFrame, prop: str) -> pl.DataFrame:
    """(target_id, position) of the positions whose next token makes `prop` matter."""
    nxt = tokens.filter(MATTERS[prop]).select("target_id", (pl.col("position") - 1).alias("position"))
    return nxt.filter(pl.col("position") >= 0).unique().sort("target_id", "position")


def projector(basis: np.ndarray):
    """x -> x minus its component in the span of `basis` [D, r] (orthonormal columns)."""
    q = torch.from_numpy(np.ascontiguousarray(basis, dtype=np.float32))

    def remove(x: torch.Tensor) -> torch.Tensor:
        qq = q.to(x.dtype)
        return x - (x @ qq) @ qq.T

    return remove


def random_basis(dim: int, rank: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed).standard_normal((dim, rank))
    q, _ = np.linalg.qr(g)
    return q


@torch.no_grad()
def position_losses(model, targets: list[Target], batch_size: int, pad_id: int = 0, layer: int | None = None,
                    edit=None) -> pl.DataFrame:
    """Next-token loss at every scored position (target_id, position p predicting token p+1)
    from the model's own forward, optionally with `edit` applied to resid.{layer}. Logits are
    computed only at the batch's scored positions (`logits_to_keep`): the full vocabulary at
    every prompt position would cost more than the blocks. Batches end at the last scored
    position's next token (a causal model's loss there does not see later tokens)."""
    frames = []
    for start in range(0, len(targets), batch_size):
        group = targets[start : start + batch_size]
        batch = make_batch(group, pad_id)
        width = max(t.code_end for t in group)
        keep = torch.unique(batch.positions)  # sorted
        kwargs = {"input_ids": batch.input_ids[:, :width], "attention_mask": batch.attention_mask[:, :width],
                  "logits_to_keep": keep}
        if edit is None:
            logits = model(**kwargs).logits
        else:
            with hooks.edit_residual(model, layer, edit):
                logits = model(**kwargs).logits
        at = torch.searchsorted(keep, batch.positions)
        loss = F.cross_entropy(logits[batch.rows, at].float(), batch.labels, reduction="none")
        frames.append(pl.DataFrame({
            "target_id": [batch.target_ids[i] for i in batch.owner.tolist()],
            "position": batch.positions.numpy().astype(np.int64),
            "loss": loss.numpy().astype(np.float64),
        }))
    return pl.concat(frames) if frames else pl.DataFrame(schema={"target_id": pl.Utf8, "position": pl.Int64, "loss": pl.Float64})


def _per_target(base: pl.DataFrame, edited: pl.DataFrame, where: pl.DataFrame) -> pl.DataFrame:
    both = base.join(where, on=["target_id", "position"], how="semi").join(
        edited.rename({"loss": "edited"}), on=["target_id", "position"], how="left")
    return both.group_by("target_id").agg((pl.col("edited") - pl.col("loss")).mean().alias("delta"),
                                          pl.col("loss").mean().alias("base"), pl.len().alias("n")).sort("target_id")


def projection_test(model, targets: list[Target], tokens: pl.DataFrame, prop: str, layer: int, basis: np.ndarray,
                    base: pl.DataFrame, batch_size: int, seed: int, boot: Bootstrap, pad_id: int = 0) -> dict | None:
    """One row of the projection table (None when no scored position has the property matter)."""
    where = matter_positions(tokens, prop).join(base.select("target_id", "position"), on=["target_id", "position"],
                                                how="semi")
    if where.is_empty():
        log.warning("projection test: %s has no scored position where it matters", prop)
        return None
    keep = set(where["target_id"].to_list())
    group = [t for t in targets if t.target_id in keep]
    t0 = time.perf_counter()
    probe = _per_target(base, position_losses(model, group, batch_size, pad_id, layer, projector(basis)), where)
    draws = []
    for k in range(RANDOM_DRAWS):
        q = random_basis(basis.shape[0], basis.shape[1], seed + 1 + k)
        draws.append(_per_target(base, position_losses(model, group, batch_size, pad_id, layer, projector(q)), where))
    rand = np.stack([d["delta"].to_numpy() for d in draws], axis=1)  # [targets, draws]
    delta = probe["delta"].to_numpy()
    mean, low, high = bootstrap_means(np.stack([delta, delta - rand.mean(1)], axis=1), boot)
    draw_means = rand.mean(0)
    log.info("projection %s at layer %d, rank %d: %d targets, %d positions, %.1f s", prop, layer, basis.shape[1],
             len(group), len(where), time.perf_counter() - t0)
    return {
        "property": prop, "layer": layer, "rank": int(basis.shape[1]), "base_loss": float(probe["base"].mean()),
        "loss_change": float(mean[0]), "loss_change_ci_low": float(low[0]), "loss_change_ci_high": float(high[0]),
        "random_loss_change": float(draw_means.mean()), "random_loss_change_sd": float(draw_means.std(ddof=1)),
        "random_loss_change_min": float(draw_means.min()), "random_loss_change_max": float(draw_means.max()),
        "excess": float(mean[1]), "excess_ci_low": float(low[1]), "excess_ci_high": float(high[1]),
        "n_random": RANDOM_DRAWS, "n_tokens": len(where), "n_targets": len(group),
    }


def projection_frame(rows: list[dict]) -> pl.DataFrame:
    df = pl.DataFrame(rows, schema=PROJECTION_SCHEMA) if rows else pl.DataFrame(schema=PROJECTION_SCHEMA)
    return df.select(list(PROJECTION_SCHEMA)).sort("property")


def run_stage(model, targets: list[Target], tokens: pl.DataFrame, cache, settings: dict, seed: int, boot: Bootstrap,
              batch_size: int, pad_id: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The `probes` stage: (probes table, projection table). `cache` is an ActivationCache of
    `model` on `targets` holding the resid sites of the probed layers."""
    props, layers = probes.check_settings(settings, len(layout(model).blocks))
    missing = [f"resid.{l}" for l in layers if f"resid.{l}" not in cache.sites]
    if missing:
        raise ConfigError(f"probes: the activation cache has no {missing[0]} (set activations.sites to include resid)")
    frame = probes.probe_tokens(tokens, cache.rows, int(settings.get("max_tokens", 20000)), seed)
    log.info("probes: %d code tokens from %d problems, %d targets; layers %s", len(frame),
             frame["problem_id"].n_unique(), frame["target_id"].n_unique(), layers)
    if frame["problem_id"].n_unique() < 2:
        # Nothing to cross-validate (e.g. LiveCodeBench has no canonical targets): empty tables,
        # and the report says no property could be probed.
        log.warning("probes: fewer than two problems with code tokens; nothing is probed")
        return pl.DataFrame(schema=probes.RESULT_SCHEMA), projection_frame([])
    rows = cache.select(tokens=frame)
    folds = int(settings.get("folds", 5))
    tables = [probes.probe_layers(lambda l: cache.read(f"resid.{l}", rows).numpy(), layers, frame, props, folds,
                                  seed, boot, "trained")]
    if settings.get("random_model", True) and len(frame):
        t0 = time.perf_counter()
        fresh = random_init_model(model, seed)
        feats = residuals_at(fresh, targets, frame, layers, batch_size, pad_id)
        del fresh
        log.info("probes: random-init residuals in %.1f s", time.perf_counter() - t0)
        tables.append(probes.probe_layers(lambda l: feats[l], layers, frame, props, folds, seed, boot, "random_init"))
    table = pl.concat(tables).sort("family", "property", "layer")
    proj = []
    if settings.get("projection_test", True) and len(table):
        sampled = set(frame["target_id"].to_list())
        group = [t for t in targets if t.target_id in sampled]
        base = position_losses(model, group, batch_size, pad_id)
        groups = frame["problem_id"].to_numpy()
        fold_all = probes.fold_of(groups, folds, seed)
        for prop, layer in probes.best_layers(table).items():
            task = probes.Task(frame, prop, fold_all, seed)
            basis = probes.probe_directions(cache.read(f"resid.{layer}", rows).numpy(), task, seed)
            row = projection_test(model, group, tokens, prop, layer, basis, base, batch_size, seed, boot, pad_id)
            if row is not None:
                proj.append(row)
    return table, projection_frame(proj)
