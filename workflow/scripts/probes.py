"""Rule `probes`: linear probes per residual layer with controls, and the projection test."""

import logging
import time

import polars as pl

from codeinterp.access.models import load_model
from codeinterp.access.scoring import targets_from_frame
from codeinterp.analyses.activations import ActivationCache
from codeinterp.analyses.probe_controls import run_stage
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import run_script, write_parquet

log = logging.getLogger("codeinterp.probes")


def main(smk):
    t0 = time.perf_counter()
    model, tokenizer = load_model(smk.input.model, compute=smk.params.get("compute"))
    targets = targets_from_frame(pl.read_parquet(smk.input.targets))
    tokens = pl.read_parquet(smk.input.tokens)
    cache = ActivationCache(smk.input.activations)
    pad = tokenizer.pad_token_id or 0
    table, projection = run_stage(model, targets, tokens, cache, dict(smk.params.probes), int(smk.params.seed),
                                  Bootstrap.from_config(smk.params.config), int(smk.params.batch_size), pad)
    write_parquet(table, smk.output.probes)
    write_parquet(projection, smk.output.projection)
    log.info("probes: %d rows, projection: %d rows, %.1f s in all", len(table), len(projection),
             time.perf_counter() - t0)


run_script(snakemake, main)  # noqa: F821
