import logging
import time

import polars as pl

from codeinterp.analyses.failure import failure_probe
from codeinterp.access.hooks import check_decomposition
from codeinterp.access.models import load_model
from codeinterp.access.scoring import Target, make_batch
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import run_script, with_ids, write_json, write_parquet

log = logging.getLogger("codeinterp.failure_probe")


def main(smk):
    t0 = time.perf_counter()
    model, tokenizer = load_model(smk.input.model, compute=smk.params.get("compute"))
    pad = tokenizer.pad_token_id or 0
    generations = pl.read_parquet(smk.input.generations)
    verdicts = pl.read_parquet(smk.input.verdicts)
    if len(generations):
        # The probe reads hooked residual sites: stop if they do not add up for this architecture.
        first = generations.row(0, named=True)
        ids = tuple(first["prompt_ids"]) + tuple(first["completion_ids"] or ())
        check_decomposition(model, *_one(ids, pad))
    settings = smk.params.settings
    table = failure_probe(model, generations, verdicts, folds=int(settings["folds"]),
                          batch_size=int(settings["batch_size"]), seed=int(smk.params.seed),
                          boot=Bootstrap.from_config(smk.params.config), pad_id=pad)
    write_parquet(with_ids(table, smk), smk.output.table)
    # Wall-clock time stays out of the result table (byte-identical reruns).
    write_json({"seconds": round(time.perf_counter() - t0, 1), "threads": int(smk.threads)}, smk.output.timing)
    log.info("failure probe: %d rows in %.1f s", len(table), time.perf_counter() - t0)


def _one(ids, pad):
    batch = make_batch([Target("check", ids, 1, len(ids))], pad)
    return batch.input_ids, batch.attention_mask


run_script(snakemake, main)  # noqa: F821
