import json

import numpy as np
import polars as pl

from codeinterp.pruning import taylor_vs_exact
from codeinterp.workflow import delta_array, run_script, with_ids, write_parquet

HEADS_SCHEMA = {"layer": pl.Int64, "head": pl.Int64, "taylor": pl.Float64, "exact": pl.Float64}


def main(smk):
    exact = delta_array(pl.read_parquet(smk.input.matrix), smk.params.rank_by)
    history = json.loads(open(smk.input.history).read())["history"]
    summary, heads = pl.DataFrame(schema={"ablation": pl.Utf8}), pl.DataFrame(schema=HEADS_SCHEMA)
    if exact is not None and len(history) > 1:
        # Scores of the unpruned model: the ones the first pruning step was chosen from.
        taylor = np.array([[np.nan if v is None else v for v in row] for row in history[1]["scores"]], dtype=float)
        # Taylor scores are |dL/dmask|, a first-order estimate of |delta|: compare with both.
        summary = pl.DataFrame([
            {"ablation": smk.params.rank_by, "against": against, **{k: float(v) for k, v in taylor_vs_exact(taylor, ref).items()}}
            for against, ref in (("delta", exact), ("abs_delta", np.abs(exact)))
        ])
        L, H = exact.shape
        heads = pl.DataFrame(
            {"layer": [l for l in range(L) for _ in range(H)], "head": list(range(H)) * L,
             "taylor": taylor.ravel().tolist(), "exact": exact.ravel().tolist()},
            schema=HEADS_SCHEMA,
        )
    write_parquet(with_ids(summary, smk), smk.output.summary)
    write_parquet(with_ids(heads, smk), smk.output.heads)


run_script(snakemake, main)  # noqa: F821
