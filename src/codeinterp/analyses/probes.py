"""Linear probes for code properties of each token (stage `probes`), with controls.

A probe reads one property of a token (its lexical class, the bracket depth before it, its
indentation level, whether it is inside a string, its innermost AST node type) from the
residual stream at the token's own position (the state after reading the token), per layer.
Only code tokens (`in_code`) with a label are probed.

- Probes: logistic regression for categories (`lexical`, `in_string`, `ast_node`), ridge
  regression for ordinal ones (`bracket_depth`, `indent`: accuracy of the rounded, clipped
  prediction, and R^2). Features standardised on the training folds. Cross-validated with
  folds grouped by problem: the tokens of one problem are never on both sides of a split.
- Control task (Hewitt and Liang 2019): every token type (token_id) gets one random label
  drawn from the property's empirical label distribution (seeded); the same probe is trained
  on it. Selectivity = accuracy - control accuracy: what the probe finds beyond memorising
  token identities.
- Majority baseline: the training folds' most frequent label, scored on the held-out fold.
- Confidence intervals: problems are resampled (one set of resamples for the whole table, so
  the intervals are paired) and accuracy recomputed from the held-out predictions.

`ast_node` keeps its `AST_CLASSES` most frequent node types and folds the rest into "other"
(the table's `n_classes` counts "other" as one class).

The random-model family and the projection test live in `probe_controls`.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import polars as pl
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold
from threadpoolctl import threadpool_limits

from codeinterp.errors import ConfigError
from codeinterp.uncertainty import MIN_UNITS, Bootstrap

log = logging.getLogger(__name__)

# property -> (token table column, kind)
PROPERTIES = {
    "lexical": ("lexical", "categorical"),
    "bracket_depth": ("depth_total", "ordinal"),
    "indent": ("indent_level", "ordinal"),
    "in_string": ("in_string", "categorical"),
    "ast_node": ("ast_node", "categorical"),
}
AST_CLASSES = 12
# Fixed probe capacity for every layer, property and control (selectivity compares like with
# like). lbfgs at tol 1e-3 converges in a few dozen iterations on standardised residuals; a
# tighter tolerance changes accuracies in the third digit and costs several times the time.
LOGISTIC = {"C": 1.0, "max_iter": 200, "tol": 1e-3}
# Ridge picks its penalty on the training fold (efficient leave-one-out): with fewer tokens
# than residual dimensions a fixed small penalty overfits (R^2 of -30 measured on a random model).
RIDGE_ALPHAS = tuple(10.0 ** k for k in range(-1, 6))

RESULT_SCHEMA = {
    "family": pl.Utf8, "layer": pl.Int64, "property": pl.Utf8, "kind": pl.Utf8,
    "accuracy": pl.Float64, "accuracy_ci_low": pl.Float64, "accuracy_ci_high": pl.Float64,
    "control_accuracy": pl.Float64, "selectivity": pl.Float64, "selectivity_ci_low": pl.Float64,
    "selectivity_ci_high": pl.Float64, "majority_accuracy": pl.Float64, "r2": pl.Float64,
    "control_r2": pl.Float64, "n_tokens": pl.Int64, "n_problems": pl.Int64, "n_classes": pl.Int64,
    "n_token_types": pl.Int64, "folds": pl.Int64,
}


def check_settings(settings: dict, n_layers: int) -> tuple[list[str], list[int]]:
    """(properties, residual layers) from the `probes` config section; one line per bad key."""
    props = settings.get("properties") or list(PROPERTIES)
    for p in props:
        if p not in PROPERTIES:
            raise ConfigError(f"probes.properties: unknown property {p!r} (known: {', '.join(PROPERTIES)})")
    layers = settings.get("layers")
    layers = list(range(n_layers + 1)) if layers is None else sorted(set(int(l) for l in layers))
    bad = [l for l in layers if not 0 <= l <= n_layers]
    if bad:
        raise ConfigError(f"probes.layers: layer {bad[0]} is out of range (residual layers 0..{n_layers})")
    if int(settings.get("folds", 5)) < 2:
        raise ConfigError("probes.folds: need at least 2 folds")
    return list(props), layers


def probe_tokens(tokens: pl.DataFrame, cached: pl.DataFrame | None, max_tokens: int, seed: int) -> pl.DataFrame:
    """Code tokens to probe: `in_code`, held by the cache (`cached`: target_id, position), at
    most `max_tokens` of them as whole problems in a seeded order (the last problem cut short
    only if the first alone exceeds the limit). Sorted by target and position."""
    need = {"target_id", "problem_id", "position", "token_id", "in_code"} | {c for c, _ in PROPERTIES.values()}
    missing = sorted(need - set(tokens.columns))
    if missing:
        raise ConfigError(f"token table: no {missing[0]!r} column")
    frame = tokens.filter(pl.col("in_code").fill_null(False))
    if cached is not None:
        frame = frame.join(cached.select("target_id", "position"), on=["target_id", "position"], how="semi")
    frame = frame.sort("target_id", "position")
    if len(frame) <= max_tokens:
        return frame
    problems = np.array(sorted(frame["problem_id"].unique().to_list()), dtype=object)
    order = problems[np.random.default_rng(seed).permutation(len(problems))]
    sizes = dict(frame.group_by("problem_id").len().iter_rows())
    keep, total = [], 0
    for p in order:
        if keep and total + sizes[p] > max_tokens:
            continue
        keep.append(p)
        total += sizes[p]
    return frame.filter(pl.col("problem_id").is_in(keep)).head(max_tokens)


def encode(frame: pl.DataFrame, prop: str) -> tuple[np.ndarray, np.ndarray, list]:
    """(mask of labelled tokens, integer labels of those, class names): ordinal labels are the
    values themselves; categories are indices into the sorted class names."""
    column, kind = PROPERTIES[prop]
    values = frame[column]
    mask = values.is_not_null().to_numpy()
    if kind == "ordinal":
        y = values.drop_nulls().cast(pl.Int64).to_numpy()
        return mask, y, sorted(set(y.tolist()))
    labels = values.drop_nulls().cast(pl.Utf8)
    if prop == "ast_node":
        counts = labels.value_counts(sort=True).sort(["count", labels.name], descending=[True, False])
        top = set(counts[labels.name].head(AST_CLASSES).to_list())
        labels = labels.map_elements(lambda v: v if v in top else "other", return_dtype=pl.Utf8)
    classes = sorted(labels.unique().to_list())
    lookup = {c: i for i, c in enumerate(classes)}
    return mask, np.array([lookup[v] for v in labels.to_list()], dtype=np.int64), classes


def control_labels(token_ids: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Hewitt and Liang's control task: one label per token type, drawn (seeded) from the
    empirical distribution of `y`; every occurrence of a type gets its type's label."""
    types, inverse = np.unique(token_ids, return_inverse=True)
    values, counts = np.unique(y, return_counts=True)
    draw = np.random.default_rng(seed).choice(values, size=len(types), p=counts / counts.sum())
    return draw[inverse]


def fold_of(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per token; whole problems per fold (sklearn's GroupKFold, seeded shuffle)."""
    n_groups = len(np.unique(groups))
    k = min(folds, n_groups)
    out = np.empty(len(groups), dtype=np.int64)
    splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (_, test) in enumerate(splitter.split(np.zeros(len(groups)), groups=groups)):
        out[test] = i
    return out


class Task:
    """One property on the sampled tokens: labels, control labels and folds of its tokens."""

    def __init__(self, frame: pl.DataFrame, prop: str, folds: np.ndarray, seed: int):
        self.prop, self.kind = prop, PROPERTIES[prop][1]
        self.mask, self.y, self.classes = encode(frame, prop)
        token_ids = frame["token_id"].to_numpy()[self.mask]
        self.control = control_labels(token_ids, self.y, seed)
        self.folds = folds[self.mask]
        self.problems = frame["problem_id"].to_numpy()[self.mask]
        self.n_types = len(np.unique(token_ids))

    @property
    def usable(self) -> bool:
        return len(np.unique(self.y)) >= 2 and len(np.unique(self.folds)) >= 2


def _fit(kind: str, x: np.ndarray, y: np.ndarray, seed: int):
    if kind == "ordinal":
        return RidgeCV(alphas=RIDGE_ALPHAS).fit(x, y.astype(np.float64))
    if len(np.unique(y)) < 2:  # a training fold with one class: predict it
        return _Constant(y[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(random_state=seed, **LOGISTIC).fit(x, y)


class _Constant:
    def __init__(self, value):
        self.value = value

    def predict(self, x):
        return np.full(len(x), self.value)


def standardise(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) of the training rows; constant features keep scale 1."""
    mean = x_train.mean(0)
    scale = x_train.std(0)
    return mean, np.where(scale > 1e-12, scale, 1.0)


def held_out(x: np.ndarray, fold_all: np.ndarray, tasks: list[Task], seed: int) -> dict:
    """Held-out predictions of every task's probe, control probe and majority baseline.

    Features are standardised once per fold on all of its training tokens (a superset of each
    task's training tokens, never a test token)."""
    out = {t.prop: {w: np.empty(len(t.y), dtype=np.float64) for w in ("probe", "control", "majority")} for t in tasks}
    for f in np.unique(fold_all):
        mean, scale = standardise(x[fold_all != f])
        z = ((x - mean) / scale).astype(np.float64)
        for t in tasks:
            zt = z[t.mask]
            train, test = t.folds != f, t.folds == f
            if not test.any():
                continue
            for which, y in (("probe", t.y), ("control", t.control)):
                model = _fit(t.kind, zt[train], y[train], seed)
                out[t.prop][which][test] = model.predict(zt[test])
            values, counts = np.unique(t.y[train], return_counts=True)
            out[t.prop]["majority"][test] = values[np.argmax(counts)]
    return out


def _correct(t: Task, pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    if t.kind == "ordinal":  # rounded, within the observed label range
        pred = np.clip(np.rint(pred), y.min(), y.max())
    return (pred == y).astype(np.float64)


class Resampler:
    """One set of problem resamples shared by every row of the table (paired intervals)."""

    def __init__(self, problems: list, boot: Bootstrap):
        self.problems = list(problems)
        self.index = {p: i for i, p in enumerate(self.problems)}
        self.boot = boot
        n = len(self.problems)
        self.draws = np.random.default_rng(boot.seed).integers(0, n, size=(boot.resamples, n)) if n >= MIN_UNITS else None

    def per_problem(self, problems: np.ndarray, values: np.ndarray) -> np.ndarray:
        idx = np.array([self.index[p] for p in problems], dtype=np.int64)
        return np.bincount(idx, weights=values, minlength=len(self.problems))

    def ratio_ci(self, num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
        """Percentile interval of sum(num) / sum(den) over resampled problems."""
        if self.draws is None or (den > 0).sum() < MIN_UNITS:
            return float("nan"), float("nan")
        d = den[self.draws].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            stat = num[self.draws].sum(1) / d
        alpha = (1 - self.boot.confidence) / 2
        low, high = np.nanquantile(stat[d > 0], [alpha, 1 - alpha], method="linear")
        return float(low), float(high)


def score(t: Task, pred: dict, res: Resampler) -> dict:
    """One table row's numbers from held-out predictions."""
    good = _correct(t, pred["probe"], t.y)
    ctrl = _correct(t, pred["control"], t.control)
    n = res.per_problem(t.problems, np.ones(len(t.y)))
    acc_p, ctrl_p = res.per_problem(t.problems, good), res.per_problem(t.problems, ctrl)
    ordinal = t.kind == "ordinal"
    row = {
        "kind": t.kind,
        "accuracy": float(good.mean()), "control_accuracy": float(ctrl.mean()),
        "selectivity": float(good.mean() - ctrl.mean()),
        "majority_accuracy": float(_correct(t, pred["majority"], t.y).mean()),
        "r2": float(r2_score(t.y, pred["probe"])) if ordinal else None,
        "control_r2": float(r2_score(t.control, pred["control"])) if ordinal else None,
        "n_tokens": len(t.y), "n_problems": int((n > 0).sum()), "n_classes": len(t.classes),
        "n_token_types": t.n_types, "folds": len(np.unique(t.folds)),
    }
    row["accuracy_ci_low"], row["accuracy_ci_high"] = res.ratio_ci(acc_p, n)
    row["selectivity_ci_low"], row["selectivity_ci_high"] = res.ratio_ci(acc_p - ctrl_p, n)
    return row


def probe_layers(features, layers: list[int], frame: pl.DataFrame, props: list[str], folds: int, seed: int,
                 boot: Bootstrap, family: str) -> pl.DataFrame:
    """The result rows of one model family: `features(layer)` gives the [N, D] residuals of
    `frame`'s tokens (in its order) at that layer."""
    groups = frame["problem_id"].to_numpy()
    fold_all = fold_of(groups, folds, seed) if len(frame) else np.zeros(0, dtype=np.int64)
    tasks = [t for t in (Task(frame, p, fold_all, seed) for p in props)]
    for t in tasks:
        if not t.usable:
            log.warning("probes: %s skipped (%d tokens, %d labels, %d problems): nothing to cross-validate",
                        t.prop, len(t.y), len(np.unique(t.y)), len(np.unique(t.problems)))
    tasks = [t for t in tasks if t.usable]
    res = Resampler(sorted(set(groups.tolist())), boot)
    rows = []
    for layer in layers if tasks else []:
        t0 = time.perf_counter()
        x = np.asarray(features(layer), dtype=np.float32)
        # One BLAS thread per fit: on a shared 2-core machine more threads only contend.
        with threadpool_limits(1):
            preds = held_out(x, fold_all, tasks, seed)
        for t in tasks:
            rows.append({"family": family, "layer": layer, "property": t.prop, **score(t, preds[t.prop], res)})
        log.info("probes %s: layer %d, %d tokens, %d properties in %.1f s", family, layer, len(x), len(tasks),
                 time.perf_counter() - t0)
    return results_frame(rows)


def results_frame(rows: list[dict]) -> pl.DataFrame:
    df = pl.DataFrame(rows, schema=RESULT_SCHEMA) if rows else pl.DataFrame(schema=RESULT_SCHEMA)
    return df.select(list(RESULT_SCHEMA)).sort("family", "property", "layer")


def best_layers(results: pl.DataFrame, family: str = "trained") -> dict[str, int]:
    """Per property, the layer of highest selectivity (the lowest layer on ties)."""
    out = {}
    for prop, g in results.filter(pl.col("family") == family).group_by("property", maintain_order=True):
        g = g.sort(["selectivity", "layer"], descending=[True, False])
        out[prop[0]] = int(g["layer"][0])
    return dict(sorted(out.items()))


def probe_directions(x: np.ndarray, t: Task, seed: int) -> np.ndarray:
    """Orthonormal basis [D, r] of the span of the probe's weight vectors in the residual basis:
    the probe fitted on every labelled token, its standardisation undone (w / scale)."""
    z_mean, scale = standardise(x[t.mask])
    z = (x[t.mask] - z_mean) / scale
    with threadpool_limits(1):
        model = _fit(t.kind, z.astype(np.float64), t.y, seed)
    w = np.atleast_2d(model.coef_) / scale  # [k, D]
    u, s, _ = np.linalg.svd(w.T, full_matrices=False)
    keep = s > s.max() * 1e-6
    return u[:, keep]
