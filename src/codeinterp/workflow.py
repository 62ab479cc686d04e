"""What every workflow script shares: logging to the rule's log, one-line errors, atomic writes."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import polars as pl

from codeinterp.errors import ConfigError


def run_script(snakemake, main) -> None:
    """Run `main(snakemake)` with logging into the rule's log file.

    A ConfigError ends the job with its one-line message (Snakemake then removes the
    job's outputs, so no partial output is left); any other error keeps its traceback.
    """
    log_path = snakemake.log[0] if snakemake.log else None
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", handlers=handlers, force=True)
    try:
        import torch

        torch.set_num_threads(max(1, int(snakemake.threads)))
    except ImportError:
        pass
    compute = _param(snakemake, "compute")
    if compute and compute.get("batch_tokens"):
        from codeinterp.access.scoring import set_batch_tokens

        set_batch_tokens(int(compute["batch_tokens"]))
    try:
        main(snakemake)
    except ConfigError as err:
        logging.getLogger("codeinterp").error("%s", err)
        print(f"codeinterp error: {err}", file=sys.stderr)
        sys.exit(1)
    except Exception:
        # The rule's log is where a user looks first: it gets the traceback too.
        if log_path:
            with open(log_path, "a") as fh:
                import traceback

                traceback.print_exc(file=fh)
        raise


def _param(smk, name: str):
    """A rule parameter, or None (also for stand-ins of the snakemake object without it)."""
    params = getattr(smk, "params", None)
    if params is None:
        return None
    return params.get(name) if hasattr(params, "get") else getattr(params, name, None)


def write_parquet(df: pl.DataFrame, path: str | os.PathLike) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a table.

    Statistics off and no compression level surprises: the same frame gives the same bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # One chunk: a table concatenated from parts (shards, kinds) gives the same bytes as one built whole.
    df.rechunk().write_parquet(tmp, compression="zstd", statistics=False)
    os.replace(tmp, path)


def write_json(obj, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def with_ids(df: pl.DataFrame, snakemake) -> pl.DataFrame:
    """Prefix the model and dataset names, so tables from many runs concatenate safely."""
    if df.width == 0:  # literals alone would make one row out of no table
        return pl.DataFrame(schema={"model": pl.Utf8, "dataset": pl.Utf8})
    return df.select(
        pl.lit(snakemake.wildcards.model, dtype=pl.Utf8).alias("model"),
        pl.lit(snakemake.wildcards.dataset, dtype=pl.Utf8).alias("dataset"),
        pl.all().exclude("model", "dataset"),
    )


def delta_array(matrix: pl.DataFrame, kind: str):
    """The [layer, head] mean-delta array of one ablation kind, or None when there is none."""
    import numpy as np

    m = matrix.filter(pl.col("ablation") == kind)
    if m.is_empty():
        if matrix.is_empty():
            return None
        raise ConfigError(f"ablation.rank_by {kind!r} is not among the computed ablation kinds")
    out = np.full((m["layer"].max() + 1, m["head"].max() + 1), np.nan)
    out[m["layer"].to_numpy(), m["head"].to_numpy()] = m["delta"].to_numpy()
    return out


def ablation_fill(model, targets, kind: str, batch_size: int):
    """What a removed head's output becomes: None for zero ablation, each head's mean output
    over the targets' positions for mean ablation (the same tensor head_ablation ranks with)."""
    if kind == "zero":
        return None
    if kind != "mean":
        raise ConfigError(f"ablation kind {kind!r} is not zero or mean")
    from codeinterp.analyses.ablation import mean_head_outputs

    return mean_head_outputs(model, targets, batch_size)


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """A cheap hash that tells prepared models apart: facts, config, and per weight file its
    size and its first and last MiB (two random models with the same facts differ there)."""
    import hashlib

    h = hashlib.sha256()
    model_dir = Path(model_dir)
    for name in ("facts.json", "config.json"):
        if (model_dir / name).exists():
            h.update((model_dir / name).read_bytes())
    for path in sorted(model_dir.glob("*.safetensors")):
        size = path.stat().st_size
        h.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return h.hexdigest()


def resume_key(targets, model_dir: str | os.PathLike | None, settings: dict, files=()) -> str:
    """Hash of what a resumable state depends on: the targets' token ids and scored spans, the
    model (`model_fingerprint`), the settings and the bytes of any input `files`. A
    checkpoint with another key is stale."""
    import hashlib

    h = hashlib.sha256()
    if model_dir is not None:
        h.update(model_fingerprint(model_dir).encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in files:
        h.update(Path(path).read_bytes())
    for t in targets:
        h.update(json.dumps([t.target_id, list(t.input_ids), t.code_start, t.code_end]).encode())
    return h.hexdigest()


def checkpoint_for(smk, output, settings: dict, targets=(), files=(), name: str | None = None):
    """The job's Checkpoint beside `output`, keyed by its model input (if any), settings,
    targets and input files."""
    from codeinterp.progress import Checkpoint

    model = getattr(smk.input, "model", None) if hasattr(smk, "input") else None
    name = name or getattr(smk, "rule", None) or "job"
    compute = _param(smk, "compute")
    if compute:  # another dtype or batching gives other numbers: not resumable across them
        settings = {**settings, "compute": compute}
    return Checkpoint(output, resume_key(targets, model, settings, files), name, logging.getLogger(f"codeinterp.{name}"))


def target_facts(targets: pl.DataFrame) -> dict:
    """What a table of results averages over: target count, scored tokens, where targets come from."""
    origins = sorted(targets["origin"].unique().to_list()) if len(targets) else []
    scored = "all" if "scored" not in targets.columns or not len(targets) else ",".join(sorted(targets["scored"].unique()))
    return {
        "n_targets": len(targets),
        "n_scored_tokens": int((targets["code_end"] - targets["code_start"]).sum()) if len(targets) else 0,
        "target_origin": ",".join(origins),
        "scored_span": scored,
    }


def head_summary(deltas: pl.DataFrame, targets: pl.DataFrame, boot) -> pl.DataFrame:
    """Per (ablation, layer, head): mean delta over targets, its bootstrap interval, whether the
    interval excludes zero, the clean loss, and what the mean is over."""
    from codeinterp.uncertainty import summarise_over

    summary = summarise_over(deltas, "target_id", ["ablation", "layer", "head"], "delta", boot)
    base = deltas.group_by("ablation", "layer", "head").agg(pl.col("base_loss").mean())
    facts = target_facts(targets)
    out = summary.rename({"mean": "delta", "n": "n_targets"}).join(base, on=["ablation", "layer", "head"], how="left")
    return out.with_columns(
        pl.lit(facts["n_scored_tokens"], dtype=pl.Int64).alias("n_scored_tokens"),
        pl.lit(facts["target_origin"], dtype=pl.Utf8).alias("target_origin"),
        pl.lit(facts["scored_span"], dtype=pl.Utf8).alias("scored_span"),
    ).sort("ablation", "layer", "head")
