import time

import polars as pl

from codeinterp.benchmarks.evaluation import evaluate_generations, limits_from_config
from codeinterp.workflow import checkpoint_for, run_script, write_json, write_parquet


def main(smk):
    t0 = time.perf_counter()
    cfg = smk.params.limits
    shard = tuple(smk.params.shard) if smk.params.get("shard") else None
    # Verdicts do not depend on the worker count, so a resumed run may use other threads.
    checkpoint = checkpoint_for(smk, smk.output.verdicts, {"evaluation": dict(cfg), "shard": shard},
                                files=[smk.input.problems, smk.input.generations])
    timing = {}
    verdicts, pass_at_k = evaluate_generations(
        pl.read_parquet(smk.input.problems), pl.read_parquet(smk.input.generations), limits_from_config(cfg),
        smk.threads, cfg["ks"], checkpoint=checkpoint, timing=timing, shard=shard,
    )
    write_parquet(verdicts, smk.output.verdicts)
    if shard is None:  # a shard's pass@k would cover its samples only: the merge computes it
        write_parquet(pass_at_k, smk.output.pass_at_k)
    write_json({"seconds": round(time.perf_counter() - t0, 1), "threads": int(smk.threads), **timing},
               smk.output.timing)
    checkpoint.done()


run_script(snakemake, main)  # noqa: F821
