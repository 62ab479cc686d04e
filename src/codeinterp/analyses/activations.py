"""The activation cache (stage `cache_activations`): activation sites of the model's own
forward on the analysis targets, stored once so that probes, the tuned lens and the
representation maps read them without running the model again.

Layout of a cache directory:
- `shard-00000.safetensors`, ...: one shard per `shard_tokens` cached tokens (the last may
  hold fewer), each with one tensor per site named by the site (`resid.3`, `head.0`, ...):
  [rows, D], or [rows, n_heads, head_dim] for head sites, in the storage dtype.
- `index.json`, written last: format version, sites, per-row shapes, dtype, positions mode,
  the model's facts, rows per shard, each target's cached position range, and `hash`, the
  sha256 of the settings, the model facts and the targets' ids, tokens and spans
  (`content_hash`), so that a cache made for other targets or settings is recognisable.

Rows are in target order (as given), positions ascending within a target. Positions "code"
are [code_start - 1, code_end): the scored code tokens and the position that predicts the
first of them; "all" is every token of the target. Values are computed in float32 and
rounded once to the storage dtype.

The directory is built in a hidden sibling and renamed into place after its index is
written, so a failed or killed run never leaves a directory that looks complete. With a
`resume` key, the sibling also holds `resume.json` (the key and the shards finished so far):
a run killed midway resumes after its last finished shard, recomputing only the batch that
straddles it, and writes the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from codeinterp.access import hooks
from codeinterp.access.architectures import layout
from codeinterp.access.scoring import Target, make_batch
from codeinterp.errors import ConfigError
from codeinterp.progress import Progress

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_FILE = "index.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
POSITIONS = ("code", "all")


def check_settings(sites, positions: str, dtype: str, shard_tokens: int, batch_size: int) -> None:
    """One line naming the config key of the first bad setting."""
    if isinstance(sites, str) or not sites:
        raise ConfigError(f"activations.sites: expected a non-empty list of site kinds ({', '.join(hooks.KINDS)})")
    for kind in sites:
        if kind not in hooks.KINDS:
            raise ConfigError(f"activations.sites: unknown site kind {kind!r} (known: {', '.join(hooks.KINDS)})")
    if len(set(sites)) != len(sites):
        raise ConfigError(f"activations.sites: repeated site kind in {list(sites)}")
    if not isinstance(positions, str) or positions not in POSITIONS:
        raise ConfigError(f"activations.positions: {positions!r} is not one of {', '.join(POSITIONS)}")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ConfigError(f"activations.dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    for key, value in (("shard_tokens", shard_tokens), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"activations.{key}: expected a positive integer, got {value!r}")


def cached_span(target: Target, positions: str) -> tuple[int, int]:
    """The half-open range of positions of `target` that the cache holds."""
    if positions == "code":
        return target.code_start - 1, target.code_end
    return 0, len(target.input_ids)


def content_hash(targets: list[Target], settings: dict, meta: dict | None) -> str:
    """sha256 of what the cached values depend on: settings, model facts, and every target's
    id, token ids and scored span (the cached positions follow from these)."""
    h = hashlib.sha256()
    h.update(json.dumps({"format_version": FORMAT_VERSION, "settings": settings, "model": meta}, sort_keys=True).encode())
    for t in targets:
        h.update(json.dumps([t.target_id, list(t.input_ids), t.code_start, t.code_end]).encode())
    return h.hexdigest()


class _ShardWriter:
    """Accumulates rows of every site and writes a shard each time `shard_tokens` are held,
    so memory holds at most one shard plus one batch whatever the number of targets."""

    def __init__(self, directory: Path, names: list[str], shard_tokens: int, done: list[int] = (), on_flush=None):
        self.directory, self.names, self.shard_tokens = directory, names, shard_tokens
        self.pending: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        self.n_pending = 0
        self.rows_per_shard: list[int] = list(done)  # shards a killed run finished
        self.bytes = 0
        self.on_flush = on_flush

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for n in self.names:
            self.pending[n].append(values[n])
        self.n_pending += len(values[self.names[0]])
        while self.n_pending >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def finish(self) -> list[int]:
        if self.n_pending:
            self._flush(self.n_pending)
        return self.rows_per_shard

    def _flush(self, n: int) -> None:
        shard, rest = {}, {}
        for name in self.names:
            full = torch.cat(self.pending[name])
            shard[name] = full[:n].contiguous()
            # Cloned so that the written shard's storage is freed with it.
            rest[name] = full[n:].clone()
        path = self.directory / shard_file(len(self.rows_per_shard))
        save_file(shard, path)
        # safetensors creates its files private (0600); give them the mode other outputs get.
        os.chmod(path, self.directory.stat().st_mode & 0o666)
        self.bytes += path.stat().st_size
        self.rows_per_shard.append(n)
        self.pending = {name: [rest[name]] if len(rest[name]) else [] for name in self.names}
        self.n_pending -= n
        if self.on_flush:
            self.on_flush(self.rows_per_shard)


def shard_file(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


@torch.no_grad()
def _batch_values(model, names: list[str], group: list[Target], positions: str, dtype: torch.dtype, pad_id: int,
                  check: bool = False):
    """The sites' values at the cached positions of one right-padded batch, in cache order.
    With `check`, they are captured during `hooks.check_decomposition`'s own forward, so the
    checked batch costs one forward, not two."""
    batch = make_batch(group, pad_id)
    spans = [cached_span(t, positions) for t in group]
    rows = torch.cat([torch.full((b - a,), i, dtype=torch.long) for i, (a, b) in enumerate(spans)])
    cols = torch.cat([torch.arange(a, b) for a, b in spans])
    with hooks.capture(model, names, select=lambda v: v[rows, cols].to(dtype)) as got:
        if check:
            hooks.check_decomposition(model, batch.input_ids, batch.attention_mask)
        else:
            # The body alone: full-vocabulary logits at every position would cost more
            # memory than the activations themselves and are not cached.
            layout(model).body(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return {n: got[n][0] for n in names}


@torch.no_grad()
def _site_shapes(model, names: list[str], pad_id: int) -> dict[str, list[int]]:
    """Per-row shapes of the sites, from a one-token forward (only needed with no targets)."""
    one = Target("_shape", (pad_id, pad_id), 1, 2)
    values = _batch_values(model, names, [one], "all", torch.float32, pad_id)
    return {n: list(v.shape[1:]) for n, v in values.items()}


def write_cache(model, targets: list[Target], out_dir, *, sites: list[str], positions: str, dtype: str,
                shard_tokens: int, batch_size: int, pad_id: int = 0, meta: dict | None = None,
                resume: str | None = None) -> dict:
    """Cache the site kinds `sites` of `model` on `targets` into `out_dir`; returns the index.

    Targets run in their given order, `batch_size` at a time; the first batch a run computes
    is checked with `hooks.check_decomposition` (a RunnerMismatch stops the run before
    anything is kept). The same inputs give byte-identical shards and index. `resume`: a
    key of everything the cache depends on (model included); a killed run's finished
    shards with the same key are kept (see the module docstring).
    """
    check_settings(sites, positions, dtype, shard_tokens, batch_size)
    ids = [t.target_id for t in targets]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"targets: target_id {dup!r} occurs more than once; cache rows would be ambiguous")
    names = hooks.site_names(model, list(sites))
    settings = {"sites": list(sites), "positions": positions, "dtype": dtype, "shard_tokens": shard_tokens,
                "batch_size": batch_size, "pad_id": pad_id}
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    done = _resumable(tmp, resume)
    if done is None and tmp.exists():  # left by a killed run with other inputs, or not resumable
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        index = _write(model, targets, tmp, names, settings, meta, done or [], resume)
        (tmp / RESUME_FILE).unlink(missing_ok=True)
        _replace_dir(tmp, out_dir)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index


RESUME_FILE = "resume.json"


def _resumable(tmp: Path, key: str | None) -> list[int] | None:
    """Rows per finished shard of a killed run with this key, or None."""
    path = tmp / RESUME_FILE
    if key is None or not path.exists():
        return None
    state = json.loads(path.read_text())
    if state.get("key") != key:
        log.warning("discarding stale partial activation cache %s (inputs or settings changed)", tmp)
        return None
    log.info("activation cache: resuming after %d finished shards", len(state["rows_per_shard"]))
    return list(state["rows_per_shard"])


def _save_state(tmp: Path, key: str, rows_per_shard: list[int]) -> None:
    path = tmp / RESUME_FILE
    path.with_name(RESUME_FILE + ".tmp").write_text(json.dumps({"key": key, "rows_per_shard": rows_per_shard}))
    os.replace(path.with_name(RESUME_FILE + ".tmp"), path)


def _write(model, targets: list[Target], tmp: Path, names: list[str], settings: dict, meta: dict | None,
           done: list[int], resume: str | None, stop: int | None = None) -> dict:
    """Write the shards after `done` (and the index); `stop`: only up to that shard file
    (one part of a sharded job, codeinterp.analyses.cache_parts), no index."""
    t0 = time.perf_counter()
    positions, dtype = settings["positions"], DTYPES[settings["dtype"]]
    on_flush = (lambda rows: _save_state(tmp, resume, rows)) if resume else None
    writer = _ShardWriter(tmp, names, settings["shard_tokens"], done, on_flush)
    if resume:
        _save_state(tmp, resume, done)
    skip, row = sum(done), 0  # rows already in finished shards; the first row of the batch
    step = settings["batch_size"]
    progress = Progress("cache_activations", -(-len(targets) // step), log, "batches")
    checked = False
    for start in range(0, len(targets), step):
        group = targets[start : start + step]
        n_rows = sum(b - a for a, b in (cached_span(t, positions) for t in group))
        if row + n_rows <= skip:
            row += n_rows
            progress.advance(resumed=True)
            continue
        values = _batch_values(model, names, group, positions, dtype, settings["pad_id"], check=not checked)
        checked = True
        if row < skip:  # the batch straddling the last finished shard: keep only its new rows
            values = {n: v[skip - row :] for n, v in values.items()}
        row += n_rows
        writer.add(values)
        progress.advance()
        if stop is not None and len(writer.rows_per_shard) >= stop:
            break
    progress.close()
    # Shapes from a one-token forward, not the first batch, which a resumed run may skip.
    shapes = _site_shapes(model, names, settings["pad_id"])
    if stop is not None and len(writer.rows_per_shard) >= stop:
        rows_per_shard = writer.rows_per_shard[:stop]  # rows past the part's last file belong to the next part
    else:
        rows_per_shard = writer.finish()
    if stop is not None:
        return {"sites": names, "shapes": shapes, "rows_per_shard": rows_per_shard[len(done):], "first": len(done)}
    index = build_index(targets, settings, meta, names, shapes, rows_per_shard)
    tmp_index = tmp / (INDEX_FILE + ".tmp")
    tmp_index.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    os.replace(tmp_index, tmp / INDEX_FILE)
    seconds = time.perf_counter() - t0
    log.info("activation cache: %d targets, %d rows, %d sites, %d shards, %.1f MB in %.1f s (%.1f MB/s)",
             len(targets), index["n_rows"], len(names), len(rows_per_shard), writer.bytes / 1e6, seconds,
             writer.bytes / 1e6 / max(seconds, 1e-9))
    return index


def build_index(targets: list[Target], settings: dict, meta: dict | None, names: list[str], shapes: dict,
                rows_per_shard: list[int]) -> dict:
    positions = settings["positions"]
    spans = [cached_span(t, positions) for t in targets]
    return {
        "format_version": FORMAT_VERSION,
        "hash": content_hash(targets, settings, meta),
        "settings": settings,
        "sites": names,
        "shapes": shapes,
        "dtype": settings["dtype"],
        "positions": positions,
        "model": meta,
        "n_rows": int(sum(rows_per_shard)),
        "shards": [shard_file(i) for i in range(len(rows_per_shard))],
        "rows_per_shard": rows_per_shard,
        "targets": {"target_id": [t.target_id for t in targets], "start": [a for a, _ in spans],
                    "end": [b for _, b in spans]},
    }


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished directory into place; an older cache is moved aside first, because a
    directory cannot be replaced by a rename, and removed only once the new one is in place."""
    old = out_dir.parent / f".{out_dir.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old.exists():
        shutil.rmtree(old)


class ActivationCache:
    """Read access to a cache directory: the index at construction, tensors on demand."""

    def __init__(self, directory):
        self.directory = Path(directory)
        path = self.directory / INDEX_FILE
        if not path.exists():
            raise ConfigError(f"{path} not found: {self.directory} is not a finished activation cache")
        self.index: dict = json.loads(path.read_text())
        if self.index.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"{path}: format version {self.index.get('format_version')!r}, this codeinterp reads "
                              f"{FORMAT_VERSION} (run cache_activations again)")
        self.sites: list[str] = list(self.index["sites"])
        self.offsets = np.concatenate([[0], np.cumsum(self.index["rows_per_shard"], dtype=np.int64)])
        self.rows = self._rows()

    def _rows(self) -> pl.DataFrame:
        tg = self.index["targets"]
        start, end = np.asarray(tg["start"], dtype=np.int64), np.asarray(tg["end"], dtype=np.int64)
        counts = end - start
        n = int(counts.sum())
        # position = start of its target + rank within the target
        first_row = np.cumsum(counts) - counts
        within = np.arange(n, dtype=np.int64) - np.repeat(first_row, counts)
        return pl.DataFrame({
            "row": np.arange(n, dtype=np.int64),
            "target_id": pl.Series(tg["target_id"], dtype=pl.Utf8).gather(np.repeat(np.arange(len(counts)), counts)),
            "position": np.repeat(start, counts) + within,
            "shard": np.repeat(np.arange(len(self.offsets) - 1, dtype=np.int64), self.index["rows_per_shard"]),
        })

    def select(self, target_ids=None, positions=None, tokens: pl.DataFrame | None = None) -> np.ndarray:
        """Row indices. With `tokens` (any frame with target_id and position columns, e.g. the
        token table filtered by a label) the rows come in the frame's order, one per token,
        so values line up with the frame's other columns; a token the cache does not hold
        is an error (semi-join the frame with `rows` first to keep only cached tokens).
        Otherwise rows are in cache order. `target_ids` and `positions` filter further."""
        if tokens is not None:
            missing = [c for c in ("target_id", "position") if c not in tokens.columns]
            if missing:
                raise ConfigError(f"tokens frame has no {missing[0]!r} column")
            keys = tokens.select(pl.col("target_id").cast(pl.Utf8), pl.col("position").cast(pl.Int64))
            found = keys.join(self.rows, on=["target_id", "position"], how="left", maintain_order="left")
            if found["row"].null_count():
                first = found.filter(pl.col("row").is_null()).row(0, named=True)
                raise ConfigError(
                    f"{found['row'].null_count()} of {len(found)} tokens are not in the activation cache "
                    f"(positions mode {self.index['positions']!r}), e.g. {first['target_id']} position {first['position']}"
                )
            frame = found
        else:
            frame = self.rows
        if target_ids is not None:
            frame = frame.filter(pl.col("target_id").is_in(list(target_ids)))
        if positions is not None:
            frame = frame.filter(pl.col("position").is_in([int(p) for p in positions]))
        return frame["row"].to_numpy().astype(np.int64)

    def read(self, site: str, rows: np.ndarray | None = None) -> torch.Tensor:
        """float32 values of one site at `rows` (all rows when None), in the order of `rows`.
        Only that site's tensor of the shards holding some of the rows is read, and of each
        only the range between its first and last requested row."""
        if site not in self.sites:
            raise ConfigError(f"site {site!r} is not in the activation cache {self.directory} "
                              f"(cached: {_summary(self.sites)})")
        n = int(self.offsets[-1])
        rows = np.arange(n, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"cache rows out of range: the cache has {n} rows")
        out = torch.empty((len(rows), *self.index["shapes"][site]), dtype=torch.float32)
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(shard_of):
            where = np.nonzero(shard_of == s)[0]
            local = rows[where] - self.offsets[s]
            lo, hi = int(local.min()), int(local.max()) + 1
            with safe_open(self.directory / self.index["shards"][s], framework="pt") as f:
                block = f.get_slice(site)[lo:hi]
            out[torch.from_numpy(where)] = block[torch.from_numpy(local - lo)].float()
        return out


def _summary(sites: list[str]) -> str:
    kinds = sorted({s.split(".")[0] for s in sites})
    return ", ".join(f"{k}.*" for k in kinds)
