import logging

import polars as pl

from codeinterp.analyses.ablation import ABLATION_SCHEMA, head_ablation
from codeinterp.access.models import load_model
from codeinterp.access.scoring import targets_from_frame
from codeinterp.sharding import shard_targets
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import ablation_fill, checkpoint_for, head_summary, run_script, with_ids, write_parquet

log = logging.getLogger("head_ablation")


def main(smk):
    model, tokenizer = load_model(smk.input.model, compute=smk.params.get("compute"))
    table = pl.read_parquet(smk.input.targets)
    everything = targets_from_frame(table)
    shard = tuple(smk.params.shard) if smk.params.get("shard") else None
    # A shard sweeps a contiguous run of the batches one job would make (codeinterp.sharding).
    targets = shard_targets(everything, smk.params.batch_size, shard[1], shard[0]) if shard else everything
    frames = []
    settings = {"kinds": list(smk.params.kinds), "batch_size": smk.params.batch_size,
                "heads_per_pass": smk.params.heads_per_pass, "shard": shard}
    # Each (kind, batch, layer) step's losses are kept beside the output until it is complete.
    checkpoint = checkpoint_for(smk, smk.output.deltas, settings, targets)
    for kind in smk.params.kinds:
        if not targets:
            log.warning("no targets: nothing to ablate")
            break
        # Mean ablation's fill is the mean over all targets, in every shard.
        fill = ablation_fill(model, everything, kind, smk.params.batch_size)
        frames.append(head_ablation(model, targets, kind, smk.params.batch_size, smk.params.heads_per_pass, fill=fill,
                                   checkpoint=checkpoint))
        log.info("%s ablation done over %d targets", kind, len(targets))
    deltas = pl.concat(frames) if frames else pl.DataFrame(schema=ABLATION_SCHEMA)
    write_parquet(with_ids(deltas, smk), smk.output.deltas)
    if shard is None:  # the merge summarises all shards' targets
        write_parquet(with_ids(head_summary(deltas, table, Bootstrap.from_config(smk.params.config)), smk),
                      smk.output.matrix)
    checkpoint.done()


run_script(snakemake, main)  # noqa: F821
