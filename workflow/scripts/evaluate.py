import polars as pl

from codeinterp.benchmarks.evaluation import evaluate_generations, limits_from_config
from codeinterp.workflow import run_script, write_parquet


def main(smk):
    cfg = smk.params.limits
    verdicts, pass_at_k = evaluate_generations(
        pl.read_parquet(smk.input.problems), pl.read_parquet(smk.input.generations), limits_from_config(cfg),
        smk.threads, cfg["ks"],
    )
    write_parquet(verdicts, smk.output.verdicts)
    write_parquet(pass_at_k, smk.output.pass_at_k)


run_script(snakemake, main)  # noqa: F821
