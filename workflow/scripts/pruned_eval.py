import json
import logging

import polars as pl

from codeinterp.benchmarks.evaluation import limits_from_config
from codeinterp.benchmarks.generation import settings_from_config
from codeinterp.access.models import load_model
from codeinterp.analyses.pruned import baseline_row, pruned_eval
from codeinterp.access.scoring import targets_from_frame
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import ablation_fill, delta_array, run_script, with_ids, write_parquet

log = logging.getLogger("pruned_eval")


def main(smk):
    s, c, kind = dict(smk.params.settings), smk.params.limits, smk.params.rank_by
    settings, limits = settings_from_config(s, smk.input.model), limits_from_config(c)
    boot = Bootstrap.from_config(smk.params.config)
    replayed = s["backend"] == "replay"
    delta = delta_array(pl.read_parquet(smk.input.matrix), kind)
    history = json.loads(open(smk.input.history).read())["history"]
    verdicts, summary = pl.DataFrame(), baseline_row(pl.read_parquet(smk.input.pass_at_k), pl.read_parquet(smk.input.verdicts), boot)
    if delta is None:
        log.warning("no head ranking for this dataset (no targets): only the unpruned baseline is reported")
    else:
        targets = targets_from_frame(pl.read_parquet(smk.input.targets))
        # Heads are removed the way they were ranked (mean ablation: replaced by their mean output).
        fill = ablation_fill(load_model(smk.input.model, compute=smk.params.get("compute"))[0], targets, kind, smk.params.batch_size)
        verdicts, rows = pruned_eval(
            pl.read_parquet(smk.input.problems), smk.input.model, settings, "transformers" if replayed else s["backend"],
            smk.params.vllm_python, limits, smk.threads, c["ks"], list(smk.params.regimes), delta, history,
            fill=fill, regenerate_baseline=replayed, boot=boot, compute=smk.params.get("compute"),
        )
        # Replayed samples come from another system: the baseline is this model regenerating unpruned.
        summary = rows if replayed else pl.concat([summary, rows], how="diagonal")
    write_parquet(with_ids(verdicts, smk), smk.output.verdicts)
    write_parquet(with_ids(summary.with_columns(pl.lit(kind).alias("ablation")), smk), smk.output.summary)


run_script(snakemake, main)  # noqa: F821
