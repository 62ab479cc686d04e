import logging

import polars as pl

from codeinterp.ablation import ABLATION_SCHEMA, head_ablation, mean_head_outputs
from codeinterp.models import load_model
from codeinterp.scoring import targets_from_frame
from codeinterp.workflow import run_script, with_ids, write_parquet

log = logging.getLogger("head_ablation")


def main(smk):
    model, tokenizer = load_model(smk.input.model)
    targets = targets_from_frame(pl.read_parquet(smk.input.targets))
    frames = []
    for kind in smk.params.kinds:
        if not targets:
            log.warning("no targets: nothing to ablate")
            break
        fill = mean_head_outputs(model, targets, smk.params.batch_size) if kind == "mean" else None
        frames.append(head_ablation(model, targets, kind, smk.params.batch_size, smk.params.heads_per_pass, fill=fill))
        log.info("%s ablation done over %d targets", kind, len(targets))
    deltas = pl.concat(frames) if frames else pl.DataFrame(schema=ABLATION_SCHEMA)
    matrix = deltas.group_by("ablation", "layer", "head", maintain_order=True).agg(
        pl.col("delta").mean(), pl.col("base_loss").mean(), pl.len().alias("n_targets")
    ).sort("ablation", "layer", "head")
    write_parquet(with_ids(deltas, smk), smk.output.deltas)
    write_parquet(with_ids(matrix, smk), smk.output.matrix)


run_script(snakemake, main)  # noqa: F821
