"""What every workflow script shares: logging to the rule's log, one-line errors, atomic writes."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import polars as pl

from .errors import ConfigError


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
    try:
        main(snakemake)
    except ConfigError as err:
        logging.getLogger("codeinterp").error("%s", err)
        print(f"codeinterp error: {err}", file=sys.stderr)
        sys.exit(1)


def write_parquet(df: pl.DataFrame, path: str | os.PathLike) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a table.

    Statistics off and no compression level surprises: the same frame gives the same bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    df.write_parquet(tmp, compression="zstd", statistics=False)
    os.replace(tmp, path)


def write_json(obj, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def with_ids(df: pl.DataFrame, snakemake) -> pl.DataFrame:
    """Prefix the model and dataset names, so tables from many runs concatenate safely."""
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
