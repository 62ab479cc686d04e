import polars as pl
from transformers import AutoTokenizer

from codeinterp.benchmarks.task_pairs import tokenise_pairs
from codeinterp.workflow import run_script, write_parquet


def main(smk):
    tokenizer = AutoTokenizer.from_pretrained(smk.input.model)
    table = tokenise_pairs(pl.read_parquet(smk.input.candidates), tokenizer, smk.wildcards.dataset)
    write_parquet(table, smk.output[0])


run_script(snakemake, main)  # noqa: F821
