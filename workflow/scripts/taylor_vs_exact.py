import json

import polars as pl

from codeinterp.analyses.pruning import taylor_vs_exact_tables
from codeinterp.workflow import run_script, with_ids, write_parquet


def main(smk):
    deltas = pl.read_parquet(smk.input.deltas).filter(pl.col("ablation") == smk.params.rank_by)
    history = json.loads(open(smk.input.history).read())["history"]
    summary, heads = taylor_vs_exact_tables(history, deltas)
    write_parquet(with_ids(summary, smk), smk.output.summary)
    write_parquet(with_ids(heads, smk), smk.output.heads)


run_script(snakemake, main)  # noqa: F821
