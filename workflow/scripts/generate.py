import time

import polars as pl

from codeinterp.benchmarks.generation import run_generation, settings_from_config
from codeinterp.workflow import checkpoint_for, run_script, write_json, write_parquet


def main(smk):
    t0 = time.perf_counter()
    cfg = dict(smk.params.settings)
    settings = settings_from_config(cfg, smk.input.model)
    problems = pl.read_parquet(smk.input.problems)
    shard = tuple(smk.params.shard) if smk.params.get("shard") else None
    # Finished batches of a killed run are kept beside the output and resumed.
    checkpoint = checkpoint_for(smk, smk.output.table, {"generation": cfg, "shard": shard}, files=[smk.input.problems])
    table = run_generation(problems, smk.input.model, settings, cfg["backend"], smk.params.vllm_python, cfg["samples"],
                           checkpoint=checkpoint, shard=shard, compute=smk.params.get("compute"))
    write_parquet(table, smk.output.table)
    write_json({"seconds": round(time.perf_counter() - t0, 1), "samples": len(table), "threads": int(smk.threads)},
               smk.output.timing)
    checkpoint.done()


run_script(snakemake, main)  # noqa: F821
