import logging
import time

import polars as pl
from transformers import AutoTokenizer

from codeinterp.analyses.token_labels import token_table
from codeinterp.workflow import run_script, write_parquet

log = logging.getLogger("codeinterp.token_labels")


def main(smk):
    tokenizer = AutoTokenizer.from_pretrained(smk.input.model)
    targets = pl.read_parquet(smk.input.targets)
    began = time.perf_counter()
    table = token_table(targets, tokenizer)
    # Timings go to the log only: result tables stay byte-identical across runs.
    log.info("%d targets, %d tokens (%d in code, %d parsed) labelled in %.2f s", len(targets), len(table),
             table["in_code"].sum(), table.filter(pl.col("in_code"))["parse_ok"].sum(), time.perf_counter() - began)
    write_parquet(table, smk.output.tokens)


run_script(snakemake, main)  # noqa: F821
