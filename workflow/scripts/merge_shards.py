"""Merge a stage's shard tables into the tables one job would have written (codeinterp.sharding)."""
import json

import polars as pl

from codeinterp import sharding
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import head_summary, run_script, with_ids, write_json, write_parquet


def _timing(smk) -> dict:
    parts = [json.loads(open(p).read()) for p in smk.input.timings]
    return {"seconds": round(sum(p["seconds"] for p in parts), 1), "shards": len(parts),
            "shard_seconds": [p["seconds"] for p in parts]}


def main(smk):
    stage = smk.params.stage
    if stage == "generate":
        write_parquet(sharding.merge_generations(smk.input.shards), smk.output.table)
        write_json(_timing(smk), smk.output.timing)
    elif stage == "evaluate":
        verdicts, pass_at_k = sharding.merge_verdicts(smk.input.shards, smk.params.ks)
        write_parquet(verdicts, smk.output.verdicts)
        write_parquet(pass_at_k, smk.output.pass_at_k)
        write_json(_timing(smk), smk.output.timing)
    elif stage == "head_ablation":
        deltas = sharding.merge_deltas(smk.input.shards, smk.params.kinds)
        matrix = head_summary(deltas.drop("model", "dataset"), pl.read_parquet(smk.input.targets),
                              Bootstrap.from_config(smk.params.config))
        write_parquet(deltas, smk.output.deltas)
        write_parquet(with_ids(matrix, smk), smk.output.matrix)
    elif stage == "cache_activations":
        import dataclasses

        from codeinterp.access.models import read_facts
        from codeinterp.access.scoring import targets_from_frame
        from codeinterp.analyses.cache_parts import merge_parts

        targets = targets_from_frame(pl.read_parquet(smk.input.targets))
        merge_parts(list(smk.input.shards), smk.output[0], targets, dataclasses.asdict(read_facts(smk.input.model)))
    elif stage == "activation_patching":
        table = sharding.merge_patching(smk.input.shards, Bootstrap.from_config(smk.params.config))
        write_parquet(with_ids(table, smk), smk.output.table)
        write_json(_timing(smk), smk.output.timing)
    else:
        raise ValueError(f"no merge for stage {stage!r}")


run_script(snakemake, main)  # noqa: F821
