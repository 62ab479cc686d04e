import logging

import polars as pl

from codeinterp.analyses.ablation import ABLATION_SCHEMA, head_ablation
from codeinterp.access.models import load_model
from codeinterp.access.scoring import targets_from_frame
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import ablation_fill, checkpoint_for, head_summary, run_script, with_ids, write_parquet

log = logging.getLogger("head_ablation")


def main(smk):
    model, tokenizer = load_model(smk.input.model)
    table = pl.read_parquet(smk.input.targets)
    targets = targets_from_frame(table)
    frames = []
    settings = {"kinds": list(smk.params.kinds), "batch_size": smk.params.batch_size,
                "heads_per_pass": smk.params.heads_per_pass}
    # Each (kind, batch, layer) step's losses are kept beside the output until it is complete.
    checkpoint = checkpoint_for(smk, smk.output.deltas, settings, targets)
    for kind in smk.params.kinds:
        if not targets:
            log.warning("no targets: nothing to ablate")
            break
        fill = ablation_fill(model, targets, kind, smk.params.batch_size)
        frames.append(head_ablation(model, targets, kind, smk.params.batch_size, smk.params.heads_per_pass, fill=fill,
                                   checkpoint=checkpoint))
        log.info("%s ablation done over %d targets", kind, len(targets))
    deltas = pl.concat(frames) if frames else pl.DataFrame(schema=ABLATION_SCHEMA)
    matrix = head_summary(deltas, table, Bootstrap.from_config(smk.params.config))
    write_parquet(with_ids(deltas, smk), smk.output.deltas)
    write_parquet(with_ids(matrix, smk), smk.output.matrix)
    checkpoint.done()


run_script(snakemake, main)  # noqa: F821
