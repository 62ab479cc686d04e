import polars as pl

from codeinterp.evaluation import evaluate_generations
from codeinterp.sandbox import Limits
from codeinterp.workflow import run_script, write_parquet


def main(smk):
    c = smk.params.limits
    limits = Limits(timeout_s=c["timeout_s"], cpu_s=c["cpu_s"], memory_mb=c["memory_mb"],
                    output_bytes=c["output_bytes"], isolation=c["isolation"])
    verdicts, pass_at_k = evaluate_generations(
        pl.read_parquet(smk.input.problems), pl.read_parquet(smk.input.generations), limits, smk.threads, c["ks"]
    )
    write_parquet(verdicts, smk.output.verdicts)
    write_parquet(pass_at_k, smk.output.pass_at_k)


run_script(snakemake, main)  # noqa: F821
