"""Failure prediction (stage `failure_probe`): does the residual stream tell whether a
generated sample will pass its tests?

Each judged sample is run through the model once (prompt ids + completion ids, exactly as
generated). From that forward come
- the residual stream `resid.0..resid.{n}` at two positions: `prompt_end`, the last prompt
  token (before any code is written), and `code_end`, the last generated token;
- the baseline's two features: the prompt length and the completion's mean token
  log-probability under the model (the model's own readout of the final residual).

Label: passed (1) versus any other verdict (0). Per layer and position a standardised
logistic regression is cross-validated with folds grouped by problem (no problem is split
between training and held-out samples, so the probe cannot recognise the problem instead
of the outcome), and the AUC of the pooled held-out scores is reported with a percentile
bootstrap interval over problems (the held-out scores are fixed; problems are resampled).
The baseline runs the same protocol on prompt length alone (comparable with prompt_end)
and on prompt length + mean log-probability (comparable with code_end).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from codeinterp.access.architectures import layout
from codeinterp.access.hooks import capture
from codeinterp.access.scoring import Target, batches
from codeinterp.errors import ConfigError
from codeinterp.uncertainty import MIN_UNITS, Bootstrap

log = logging.getLogger(__name__)

POSITIONS = ("prompt_end", "code_end")
C = 1.0  # sklearn's default inverse regularisation, recorded in the table
RESULT_SCHEMA = {
    "feature": pl.Utf8, "position": pl.Utf8, "layer": pl.Int64, "auc": pl.Float64, "auc_ci_low": pl.Float64,
    "auc_ci_high": pl.Float64, "n_samples": pl.Int64, "n_problems": pl.Int64, "n_passed": pl.Int64, "n_problems_passed": pl.Int64,
    "n_excluded": pl.Int64, "folds": pl.Int64, "C": pl.Float64, "seed": pl.Int64,
    "note": pl.Utf8,
}


def labelled_samples(generations: pl.DataFrame, verdicts: pl.DataFrame) -> pl.DataFrame:
    """One row per generated sample with its label, sorted by (problem_id, sample_index).

    A sample without a verdict is refused: its label would be a guess. Samples without
    generated ids (nothing to run) are refused too."""
    for name, df, cols in (("generations", generations, ("problem_id", "sample_index", "prompt_ids", "completion_ids")),
                           ("verdicts", verdicts, ("problem_id", "sample_index", "status"))):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ConfigError(f"{name} table has no {missing[0]!r} column")
    keys = ["problem_id", "sample_index"]
    for name, df in (("generations", generations), ("verdicts", verdicts)):
        if df.select(keys).is_duplicated().any():
            raise ConfigError(f"{name} table: some (problem_id, sample_index) occur more than once")
    joined = generations.select(*keys, "prompt_ids", "completion_ids").join(
        verdicts.select(*keys, "status"), on=keys, how="left")
    if joined["status"].null_count():
        first = joined.filter(pl.col("status").is_null()).row(0, named=True)
        raise ConfigError(f"{joined['status'].null_count()} generated samples have no verdict, e.g. problem "
                          f"{first['problem_id']} sample {first['sample_index']}: run evaluate on these generations")
    if joined["completion_ids"].null_count() or joined["prompt_ids"].list.len().min() == 0:
        raise ConfigError("generations table: some samples have no prompt_ids or completion_ids (replayed text?)")
    return joined.with_columns(passed=(pl.col("status") == "passed").cast(pl.Int64)).sort(keys)


@dataclass
class Features:
    resid: np.ndarray  # [N, 2 positions, n_layers + 1, D] float32
    prompt_length: np.ndarray  # [N]
    mean_logprob: np.ndarray  # [N]


@torch.no_grad()
def sample_features(model, samples: pl.DataFrame, batch_size: int, pad_id: int) -> Features:
    """Residuals at the two positions and the baseline features, from one forward per sample.
    Every sample needs at least one completion id (callers drop the others)."""
    lay = layout(model)
    names = [f"resid.{l}" for l in range(len(lay.blocks) + 1)]
    targets = [Target(str(i), tuple(p) + tuple(c), len(p), len(p) + len(c))
               for i, (p, c) in enumerate(zip(samples["prompt_ids"].to_list(), samples["completion_ids"].to_list()))]
    n, d = len(targets), None
    resid, logprob = None, np.zeros(n)
    for batch in batches(targets, batch_size, pad_id):
        idx = [int(t) for t in batch.target_ids]
        ends = torch.tensor([[targets[i].code_start - 1, targets[i].code_end - 1] for i in idx])
        rows = torch.arange(len(idx))[:, None]
        with capture(model, names, select=lambda v: v[rows, ends].float()) as got:
            out = lay.body(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        # The readout of the normed final state at the completion's predicting positions only.
        logits = lay.logits(out.last_hidden_state[batch.rows, batch.positions], normed=True)
        lp = -torch.nn.functional.cross_entropy(logits, batch.labels, reduction="none")
        sums = torch.zeros(len(idx), dtype=torch.float64).index_add_(0, batch.owner, lp.double())
        counts = torch.zeros(len(idx), dtype=torch.float64).index_add_(0, batch.owner, torch.ones_like(lp, dtype=torch.float64))
        values = torch.stack([got[s][0] for s in names], dim=2)  # [B, 2, L + 1, D]
        if resid is None:
            d = values.shape[-1]
            resid = np.zeros((n, 2, len(names), d), dtype=np.float32)
        resid[idx] = values.numpy()
        logprob[idx] = (sums / counts).numpy()
    lengths = np.array([t.code_start for t in targets], dtype=np.float64)
    return Features(resid, lengths, logprob)


def fold_ids(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold of every sample; a problem's samples all share one fold, classes are balanced
    across folds as far as the grouping allows."""
    out = np.full(len(y), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
        out[test] = k
    return out


def heldout_scores(x: np.ndarray, y: np.ndarray, fold: np.ndarray, seed: int) -> np.ndarray:
    """Held-out P(passed) of every sample; every fold's training part must hold both outcomes
    (`one_outcome_folds` is 0)."""
    scores = np.zeros(len(y))
    # One BLAS thread: these fits are small, and on a shared machine a thread pool per fit
    # makes each L-BFGS step wait on the others (measured: 5x slower under load).
    with threadpool_limits(limits=1):
        for k in np.unique(fold):
            train, test = fold != k, fold == k
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))
            clf.fit(x[train], y[train])
            scores[test] = clf.predict_proba(x[test])[:, 1]
    return scores


def one_outcome_folds(y: np.ndarray, fold: np.ndarray) -> int:
    """Folds whose training part holds one outcome only: a probe trained there predicts a
    constant, and pooling such scores with the other folds' would give an AUC of nothing."""
    return sum(len(np.unique(y[fold != k])) < 2 for k in np.unique(fold))


def weighted_auc(scores: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC (ties count one half) of fixed scores under each row of `weights` [R, N]: the
    bootstrap's resampled problems enter as sample counts. NaN where a class has no weight."""
    weights = np.atleast_2d(weights)
    levels, inverse = np.unique(scores, return_inverse=True)
    onehot = np.zeros((len(scores), len(levels)))
    onehot[np.arange(len(scores)), inverse] = 1.0
    pos = (weights * (y == 1)) @ onehot  # [R, U] positive weight at each score level
    neg = (weights * (y == 0)) @ onehot
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(1)
    den = pos.sum(1) * neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def problem_resamples(groups: np.ndarray, boot: Bootstrap) -> np.ndarray | None:
    """[R, N] sample weights: how often each sample's problem is drawn in each resample.
    None below MIN_UNITS problems (no interval)."""
    problems, index = np.unique(groups, return_inverse=True)
    if len(problems) < MIN_UNITS:
        return None
    rng = np.random.default_rng(boot.seed)
    draws = rng.integers(0, len(problems), size=(boot.resamples, len(problems)))
    counts = np.stack([np.bincount(d, minlength=len(problems)) for d in draws])
    return counts[:, index].astype(np.float64)


def _auc_row(x, y, fold, seed, weights, boot) -> dict:
    scores = heldout_scores(x, y, fold, seed)
    row = {"auc": float(roc_auc_score(y, scores)), "auc_ci_low": None, "auc_ci_high": None}
    if weights is not None:
        aucs = weighted_auc(scores, y, weights)
        aucs = aucs[np.isfinite(aucs)]
        alpha = (1 - boot.confidence) / 2
        if len(aucs):
            row["auc_ci_low"], row["auc_ci_high"] = (float(v) for v in np.quantile(aucs, [alpha, 1 - alpha]))
    return row


def _designs(features: Features) -> list[tuple[str, str, int | None, np.ndarray]]:
    """(feature, position, layer, X) of every probe, baselines first."""
    n_layers = features.resid.shape[2]
    out = [("prompt_length", "prompt_end", None, features.prompt_length[:, None]),
           ("prompt_length+mean_logprob", "code_end", None,
            np.stack([features.prompt_length, features.mean_logprob], axis=1))]
    for p, position in enumerate(POSITIONS):
        out.extend(("resid", position, l, features.resid[:, p, l]) for l in range(n_layers))
    return out


def probe_table(features: Features, samples: pl.DataFrame, folds: int, seed: int, boot: Bootstrap,
                n_excluded: int = 0) -> pl.DataFrame:
    """One row per (feature, position, layer): held-out AUC with its interval over problems.
    Without both outcomes, with fewer problems than folds, or when some fold would train on
    one outcome only (passes confined to few problems), every row has a note and no AUC."""
    y = samples["passed"].to_numpy().astype(np.int64)
    groups = samples["problem_id"].to_numpy()
    n_problems = len(np.unique(groups))
    note = None
    if len(np.unique(y)) < 2:
        note = f"only one outcome ({'passed' if len(y) and y[0] else 'not passed'}) among {len(y)} samples: no AUC"
    elif n_problems < folds:
        note = f"{n_problems} problems, fewer than failure_probe.folds = {folds}: no AUC"
    fold = fold_ids(y, groups, folds, seed) if note is None else None
    if fold is not None and one_outcome_folds(y, fold):
        note = (f"{one_outcome_folds(y, fold)} of {folds} folds would train on one outcome only (passed samples in "
                f"{len(np.unique(groups[y == 1]))} problem(s), other outcomes in {len(np.unique(groups[y == 0]))}): no AUC")
        fold = None
    weights = problem_resamples(groups, boot) if note is None else None
    rows = []
    for feature, position, layer, x in _designs(features):
        row = {"feature": feature, "position": position, "layer": layer}
        if note is None:
            row.update(_auc_row(x, y, fold, seed, weights, boot))
            if weights is None:
                row["note"] = f"{n_problems} problems: no interval (fewer than {MIN_UNITS})"
        rows.append(row)
    base = {"n_samples": len(y), "n_problems": n_problems, "n_passed": int(y.sum()),
            "n_problems_passed": len(np.unique(groups[y == 1])), "n_excluded": n_excluded,
            "folds": folds, "C": C, "seed": seed}
    table = pl.DataFrame([{**r, **base, "note": r.get("note", note)} for r in rows], schema=RESULT_SCHEMA)
    return table.sort("feature", "position", "layer", nulls_last=True)


def failure_probe(model, generations: pl.DataFrame, verdicts: pl.DataFrame, *, folds: int, batch_size: int,
                  seed: int, boot: Bootstrap, pad_id: int) -> pl.DataFrame:
    """The whole stage: label, run the model once per sample, probe every layer and position."""
    samples = labelled_samples(generations, verdicts)
    empty = samples["completion_ids"].list.len() == 0
    n_excluded = int(empty.sum())
    if n_excluded:
        # Nothing was generated: there is no last code token and no mean log-probability.
        log.info("%d samples with an empty completion are excluded", n_excluded)
    samples = samples.filter(~empty)
    if samples.is_empty():
        raise ConfigError("failure_probe: no generated sample has a non-empty completion")
    log.info("%d samples of %d problems, %d passed", len(samples), samples["problem_id"].n_unique(),
             int(samples["passed"].sum()))
    features = sample_features(model, samples, batch_size, pad_id)
    return probe_table(features, samples, folds, seed, boot, n_excluded)
