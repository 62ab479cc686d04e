import json
import logging

import polars as pl

from codeinterp.evaluation import limits_from_config
from codeinterp.generation import settings_from_config
from codeinterp.pruned import baseline_row, pruned_eval
from codeinterp.workflow import delta_array, run_script, with_ids, write_parquet

log = logging.getLogger("pruned_eval")


def main(smk):
    s, c = dict(smk.params.settings), smk.params.limits
    settings, limits = settings_from_config(s, smk.input.model), limits_from_config(c)
    baseline = baseline_row(pl.read_parquet(smk.input.pass_at_k), pl.read_parquet(smk.input.verdicts))
    delta = delta_array(pl.read_parquet(smk.input.matrix), smk.params.rank_by)
    history = json.loads(open(smk.input.history).read())["history"]
    verdicts, summary = pl.DataFrame(), baseline
    if delta is None:
        log.warning("no head ranking for this dataset (no targets): only the unpruned baseline is reported")
    else:
        backend = "transformers" if s["backend"] == "replay" else s["backend"]
        verdicts, rows = pruned_eval(
            pl.read_parquet(smk.input.problems), smk.input.model, settings, backend,
            smk.params.vllm_python, limits, smk.threads, c["ks"], list(smk.params.regimes), delta, history,
        )
        summary = pl.concat([baseline, rows], how="diagonal")
    write_parquet(with_ids(verdicts, smk), smk.output.verdicts)
    write_parquet(with_ids(summary, smk), smk.output.summary)


run_script(snakemake, main)  # noqa: F821
