"""Exact activation patching on clean/corrupted pairs (rule activation_patching).

Denoising runs the corrupted input and restores one site from the clean run; noising runs the
clean input and writes one site from the corrupted run. The corrupted run is either the
counterfactual prompt (symmetric token replacement) or the clean prompt with Gaussian noise
added to the embeddings of the pair's differing span (Meng et al. 2022: 3 x the embeddings'
standard deviation, several seeded samples). The metric is the logit difference between the
pair's answer tokens, normalised so that the clean run scores 1 and the corrupted run 0.

Sites: the residual stream (layer x position), the attention and MLP outputs (layer x
position, optionally a window of consecutive layers), each head's output (layer x head, every
position), and, for AtP*'s QK fix, each head's query (`head_q`: layer x query head x position) and
key (`head_k`: layer x KV head x position), written through `access.attention.probe`. Patched runs share the batch axis and start at the first patched layer from the
target run's cached residual stream (`BlockRunner`); that fast path is compared with the
model's own forward on the first batch of every run. Positions before the pair's differing span
hold the same values in both runs (causal attention), so patching them changes nothing: they
are filled with the target run's metric without a forward (`computed = False`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import polars as pl
import torch

from codeinterp.access.architectures import BlockRunner, RunnerMismatch, layout
from codeinterp.access.attention import probe
from codeinterp.access.hooks import capture, edit_site, site_names
from codeinterp.causal.pairs import PairBatch, logit_diff, n_batches, normalised, pair_batches
from codeinterp.progress import Progress

KINDS = ("resid", "attn", "mlp", "head", "head_q", "head_k")
QK = ("head_q", "head_k")


@dataclass(frozen=True)
class Setting:
    kind: str
    layer: int  # the reported layer (centre of a window)
    layers: tuple[int, ...]  # the layers patched
    position: int  # -1: every position (heads)
    head: int = -1


def settings_for(kind: str, n_layers: int, n_heads: int, positions: list[int], window: int = 1,
                 n_kv: int | None = None) -> list[Setting]:
    if kind in QK:
        heads = n_heads if kind == "head_q" else (n_kv or n_heads)
        return [Setting(kind, l, (l,), t, h) for l in range(n_layers) for h in range(heads) for t in positions]
    if kind == "resid":
        return [Setting(kind, l, (l,), t) for l in range(n_layers + 1) for t in positions]
    if kind == "head":
        return [Setting(kind, l, (l,), -1, h) for l in range(n_layers) for h in range(n_heads)]
    out = []
    for l in range(n_layers):
        lo = max(0, l - (window - 1) // 2)
        hi = min(n_layers, lo + window)
        out.extend(Setting(kind, l, tuple(range(lo, hi)), t) for t in positions)
    return out


def embedding_noise(model, batch: PairBatch, scale: float, samples: int, seed: int) -> torch.Tensor:
    """[samples, B, T, D] Gaussian noise on each pair's span, std = scale x the std of the
    embedding matrix, seeded per (seed, pair, sample): the same whatever the batching."""
    emb = model.get_input_embeddings().weight
    std = float(emb.float().std()) * scale
    B, T = batch.clean.shape
    out = torch.zeros(samples, B, T, emb.shape[1])
    for i, p in enumerate(batch.pairs):
        start, end = p.span
        for s in range(samples):
            g = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{p.pair_id}/{s}".encode()))
            out[s, i, start:end] = torch.randn(end - start, emb.shape[1], generator=g) * std
    return out


class Patcher:
    """One batch of pairs, one corruption (a noise tensor or the counterfactual prompt) and one
    direction: caches of the clean and corrupted runs and the patched runs. `qk`: also cache
    every layer's queries and keys (sites head_q, head_k)."""

    def __init__(self, model, batch: PairBatch, direction: str, noise: torch.Tensor | None = None, qk: bool = False):
        self.model, self.batch, self.direction, self.noise, self.qk = model, batch, direction, noise, qk
        self.lay = layout(model)
        self.n = len(self.lay.blocks)
        self.runner = BlockRunner(model, batch.mask)
        names = site_names(model)
        self.clean, self.clean_metric = self._run(batch.clean, None, names)
        bad_ids = batch.clean if noise is not None else batch.corrupt
        self.corrupt, self.corrupt_metric = self._run(bad_ids, noise, names)
        self.target, self.source = (self.corrupt, self.clean) if direction == "denoising" else (self.clean, self.corrupt)
        self.target_metric = self.corrupt_metric if direction == "denoising" else self.clean_metric
        self.n_kv = int(self.clean["head_k.0"].shape[1]) if qk else None

    def _noised(self, noise):
        return edit_site(self.model, "resid.0", lambda v: v + noise.to(v.dtype)) if noise is not None else _null()

    @torch.no_grad()
    def _run(self, ids, noise, names):
        with self._noised(noise), capture(self.model, names) as got, \
                (probe(self.model) if self.qk else _null()) as calls:
            logits = self.model(input_ids=ids, attention_mask=self.batch.mask).logits
        values = {k: v[0] for k, v in got.items()}
        for layer, call in (calls.items() if self.qk else ()):
            values[f"head_q.{layer}"], values[f"head_k.{layer}"] = call.query.detach(), call.key.detach()
        return values, logit_diff(logits, self.batch)

    def _source_at(self, name: str, rows: int, setting_of_row: list[Setting]):
        """A hook fn writing, in each repeated copy r of the batch, the source value of
        `setting_of_row[r]` where it patches site `name`."""
        B = len(self.batch)
        kind, layer = name.split(".")
        layer = int(layer)

        def fn(value):
            value = value.clone()
            for r, s in enumerate(setting_of_row):
                if s.kind != kind or layer not in s.layers:
                    continue
                sl = slice(r * B, (r + 1) * B)
                src = self.source[name]
                if kind == "head":
                    value[sl, :, s.head] = src[:, :, s.head]
                else:
                    value[sl, s.position] = src[:, s.position]
            return value

        return fn

    def _qk_edit(self, setting_of_row: list[Setting]):
        """A probe edit writing the source query (key) of each row's head_q (head_k) setting."""
        B = len(self.batch)

        def edit(layer, q, k):
            mine = [(r, s) for r, s in enumerate(setting_of_row) if s.kind in QK and s.layer == layer]
            if not mine:
                return q, k
            q, k = q.clone(), k.clone()
            for r, s in mine:
                value = q if s.kind == "head_q" else k
                value[r * B:(r + 1) * B, s.head, s.position] = self.source[f"{s.kind}.{layer}"][:, s.head, s.position]
            return q, k

        return edit

    def _edits(self, settings: list[Setting]) -> list:
        names = sorted({f"{s.kind}.{l}" for s in settings if s.kind not in ("resid", *QK) for l in s.layers})
        edits = [edit_site(self.model, name, self._source_at(name, 0, settings)) for name in names]
        if any(s.kind in QK for s in settings):
            edits.append(probe(self.model, edit=self._qk_edit(settings)))
        return edits

    @torch.no_grad()
    def run(self, settings: list[Setting]) -> torch.Tensor:
        """Logit difference of each setting's patched run: [len(settings), B]. All settings of one
        call start at the same layer (the caller groups them)."""
        B = len(self.batch)
        R = len(settings)
        start = min(min(s.layers) for s in settings)
        resid = self.target[f"resid.{start}"].repeat(R, *([1] * (self.target[f"resid.{start}"].dim() - 1)))
        for r, s in enumerate(settings):
            if s.kind == "resid" and s.layer == start:
                resid[r * B:(r + 1) * B, s.position] = self.source[f"resid.{start}"][:, s.position]
        edits = self._edits(settings)
        for e in edits:
            e.__enter__()
        try:
            final = self.runner.run(resid, start) if start < self.n else resid
        finally:
            for e in reversed(edits):
                e.__exit__(None, None, None)
        logits = self.lay.logits(final[torch.arange(R * B), self.batch.last.repeat(R)])
        rows = torch.arange(R * B)
        diff = logits[rows, self.batch.clean_token.repeat(R)] - logits[rows, self.batch.corrupt_token.repeat(R)]
        return diff.view(R, B)

    @torch.no_grad()
    def check(self, rtol: float = 1e-4) -> None:
        """Stop unless the fast path is the model: running nothing patched from the embeddings
        gives the target run's metric, restoring every position of the embeddings gives the
        source run's, one patched setting of each kind agrees with the model's own forward, and
        writing the target's own values back (clean equal to corrupted) changes nothing."""
        T = self.batch.clean.shape[1]
        last = int(self.batch.last.min())
        _close(self._metric_from(self.target["resid.0"]), self.target_metric, "patching nothing", rtol)
        source_metric = self.clean_metric if self.direction == "denoising" else self.corrupt_metric
        _close(self._metric_from(self.source["resid.0"]), source_metric, "restoring every position", rtol)
        probes = [Setting("mlp", 0, (0,), min(last, T - 1)), Setting("head", 0, (0,), -1, 0)]
        if self.qk:
            probes += [Setting("head_q", 0, (0,), last, 0), Setting("head_k", 0, (0,), max(0, last - 1), 0)]
        ids = self.batch.corrupt if (self.direction == "denoising" and self.noise is None) else self.batch.clean
        noise = self.noise if self.direction == "denoising" else None
        for setting in probes:
            fast = self.run([setting])[0]
            edits = [self._noised(noise), *self._edits([setting])]
            for e in edits:
                e.__enter__()
            try:
                slow = logit_diff(self.model(input_ids=ids, attention_mask=self.batch.mask).logits, self.batch)
            finally:
                for e in reversed(edits):
                    e.__exit__(None, None, None)
            _close(fast, slow, f"a patched {setting.kind} site through the block runner", rtol)
        source, self.source = self.source, self.target
        try:
            same = self.run(probes)
        finally:
            self.source = source
        _close(same, self.target_metric.expand_as(same), "writing the run's own values back", rtol)

    def _metric_from(self, resid: torch.Tensor) -> torch.Tensor:
        final = self.runner.run(resid.clone(), 0)
        logits = self.lay.logits(final[torch.arange(len(self.batch)), self.batch.last])
        rows = torch.arange(len(self.batch))
        return logits[rows, self.batch.clean_token] - logits[rows, self.batch.corrupt_token]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _close(a: torch.Tensor, b: torch.Tensor, what: str, rtol: float) -> None:
    scale = float(b.abs().max().clamp_min(1.0))
    err = float((a.float() - b.float()).abs().max())
    if not err <= rtol * scale * 10:
        raise RunnerMismatch(f"activation patching: {what} differs from the model's forward by {err:.2e}; "
                             "refusing to report patching effects")


def _first_span(batch: PairBatch) -> int:
    return min(p.span[0] for p in batch.pairs)


@torch.no_grad()
def sweep(model, pairs, *, kinds, directions, corruptions, window: int, noise_scale: float, noise_samples: int,
          seed: int, batch_size: int, tokenizer=None, pad_id: int = 0, check_first: bool = True,
          only: set | None = None) -> pl.DataFrame:
    """Per pair: the raw and normalised metric of every patched run (`level` = pair rows).

    `only`: a set of (site, layer, head, from_end) to patch (e.g. the top attribution settings,
    `attribution.top_settings`); settings outside it are neither run nor reported."""
    lay = layout(model)
    n, H = len(lay.blocks), lay.n_heads
    rows = []
    checked = not check_first
    pairs_per_batch = max(1, min(len(pairs), batch_size))
    runs = sum(1 if c == "counterfactual" else noise_samples for c in corruptions) * len(directions) * len(kinds)
    progress = Progress("activation_patching", n_batches(pairs, pairs_per_batch) * runs, unit="site sweeps")
    for batch in pair_batches(pairs, pairs_per_batch, pad_id):
        T = batch.clean.shape[1]
        live = list(range(_first_span(batch), T))
        for corruption in corruptions:
            noises = [None] if corruption == "counterfactual" else list(
                embedding_noise(model, batch, noise_scale, noise_samples, seed))
            for sample, noise in enumerate(noises):
                for direction in directions:
                    patcher = Patcher(model, batch, direction, noise, qk=any(k in QK for k in kinds))
                    if not checked:
                        patcher.check()
                        checked = True
                    for kind in kinds:
                        settings = _kept(settings_for(kind, n, H, live, window, patcher.n_kv), batch, only)
                        values = _run_grouped(patcher, settings, max(1, batch_size // len(batch)))
                        rows.extend(_rows(batch, patcher, settings, values, corruption, sample, direction, window,
                                          tokenizer))
                        if kind != "head":
                            skipped = _kept(settings_for(kind, n, H, [t for t in range(T) if t not in live], window,
                                                         patcher.n_kv), batch, only)
                            filled = torch.stack([patcher.target_metric] * len(skipped)) if skipped else None
                            rows.extend(_rows(batch, patcher, skipped, filled, corruption, sample, direction, window,
                                              tokenizer, computed=False))
                        progress.advance()
    progress.close()
    table = pl.DataFrame(rows)
    if table.is_empty():
        return table
    keys = ["pair_id", "corruption", "direction", "site", "layer", "head", "position"]
    # Noise samples: the mean over samples is the pair's effect.
    return table.group_by(keys, maintain_order=True).agg(
        pl.col("source", "depth", "length", "from_end", "token", "window", "computed").first(),
        pl.col("metric", "clean_metric", "corrupt_metric", "normalised").mean(), pl.len().alias("samples"))


def _kept(settings: list[Setting], batch: PairBatch, only: set | None) -> list[Setting]:
    """The settings in `only` for at least one pair of the batch (positions counted from each
    pair's end, as the attribution table ranks them)."""
    if only is None:
        return settings
    lengths = {p.length for p in batch.pairs}
    return [s for s in settings
            if any((s.kind, s.layer, s.head, s.position - n if s.position >= 0 else 0) in only for n in lengths)]


def _run_grouped(patcher: Patcher, settings: list[Setting], per_pass: int) -> torch.Tensor:
    out = [None] * len(settings)
    by_start: dict[int, list[int]] = {}
    for i, s in enumerate(settings):
        by_start.setdefault(min(s.layers), []).append(i)
    for idx in by_start.values():
        for k in range(0, len(idx), per_pass):
            chunk = idx[k:k + per_pass]
            values = patcher.run([settings[i] for i in chunk])
            for j, i in enumerate(chunk):
                out[i] = values[j]
    return torch.stack(out) if out else torch.zeros(0)


def _rows(batch, patcher, settings, values, corruption, sample, direction, window, tokenizer, computed=True):
    rows = []
    if not settings:
        return rows
    norm = normalised(values, patcher.clean_metric, patcher.corrupt_metric)
    for j, s in enumerate(settings):
        for i, p in enumerate(batch.pairs):
            if s.position >= p.length:
                continue
            tok = tokenizer.decode([int(p.clean_ids[s.position])]) if (tokenizer is not None and s.position >= 0) else ""
            rows.append({
                "pair_id": p.pair_id, "source": p.source, "depth": p.depth, "length": p.length,
                "corruption": corruption, "sample": sample, "direction": direction, "site": s.kind, "layer": s.layer,
                "head": s.head, "position": s.position, "from_end": s.position - p.length if s.position >= 0 else 0,
                "token": tok, "window": window if s.kind in ("attn", "mlp") else 1, "computed": computed,
                "metric": float(values[j, i]), "clean_metric": float(patcher.clean_metric[i]),
                "corrupt_metric": float(patcher.corrupt_metric[i]), "normalised": float(norm[j, i]),
            })
    return rows


def summarise(per_pair: pl.DataFrame, boot) -> pl.DataFrame:
    """The per-pair rows (`level` = pair) and the mean normalised effect with its interval over
    pairs (`level` = group) for each setting, by position from the end: over all pairs
    (source "all", depth -1) and per (source, depth). `token` is the commonest clean token at
    that position of the group's pairs."""
    from codeinterp.causal.task_metrics import group_means

    if per_pair.is_empty():
        return per_pair.with_columns(pl.lit("pair").alias("level"))
    setting = ["corruption", "direction", "site", "window", "layer", "head", "from_end"]
    rows = per_pair.filter(pl.col("normalised").is_not_nan())
    parts = []
    for by in (setting, ["source", "depth", *setting]):
        means = group_means(rows, by, ["normalised", "metric"], boot)
        tokens = rows.group_by(by).agg(pl.col("token").mode().sort().first())
        part = means.join(tokens, on=by, how="left")
        if "source" not in by:
            part = part.with_columns(pl.lit("all").alias("source"), pl.lit(-1, dtype=pl.Int64).alias("depth"))
        parts.append(part)
    groups = pl.concat(parts, how="diagonal_relaxed").with_columns(pl.lit("group").alias("level"))
    return pl.concat([per_pair.with_columns(pl.lit("pair").alias("level")), groups], how="diagonal_relaxed")
