import polars as pl

from codeinterp.analyses.ablation import KNOCKOUT_SCHEMA, knockout_curves
from codeinterp.access.models import load_model
from codeinterp.access.scoring import targets_from_frame
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import ablation_fill, checkpoint_for, delta_array, run_script, with_ids, write_parquet


def main(smk):
    model, _ = load_model(smk.input.model, compute=smk.params.get("compute"))
    targets = targets_from_frame(pl.read_parquet(smk.input.targets))
    kind = smk.params.rank_by
    deltas = delta_array(pl.read_parquet(smk.input.matrix), kind)
    settings = {"rank_by": kind, "batch_size": smk.params.batch_size, "steps_per_pass": smk.params.steps_per_pass,
                "every": smk.params.every}
    # The ranking is an input too: a checkpoint from another ranking is stale.
    checkpoint = checkpoint_for(smk, smk.output[0], settings, targets, files=[smk.input.matrix])
    if targets and deltas is not None:
        # Heads are removed the way they were ranked: zero ablation, or replaced by their mean.
        fill = ablation_fill(model, targets, kind, smk.params.batch_size)
        curves = knockout_curves(model, targets, deltas, smk.params.batch_size, steps_per_pass=smk.params.steps_per_pass,
                                 every=smk.params.every, kind=kind, fill=fill,
                                 boot=Bootstrap.from_config(smk.params.config), checkpoint=checkpoint)
    else:
        curves = pl.DataFrame(schema={"order": pl.Utf8, **KNOCKOUT_SCHEMA})
    write_parquet(with_ids(curves, smk), smk.output[0])
    checkpoint.done()


run_script(snakemake, main)  # noqa: F821
