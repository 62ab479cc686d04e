import polars as pl

from codeinterp.benchmarks.generation import run_generation, settings_from_config
from codeinterp.workflow import run_script, write_parquet


def main(smk):
    cfg = dict(smk.params.settings)
    settings = settings_from_config(cfg, smk.input.model)
    problems = pl.read_parquet(smk.input.problems)
    table = run_generation(problems, smk.input.model, settings, cfg["backend"], smk.params.vllm_python, cfg["samples"])
    write_parquet(table, smk.output[0])


run_script(snakemake, main)  # noqa: F821
