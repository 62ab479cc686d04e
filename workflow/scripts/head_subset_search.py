import json

import polars as pl

from codeinterp.analyses.ablation import ranking_from_deltas
from codeinterp.access.models import load_model
from codeinterp.analyses.pruning import regime_heads
from codeinterp.access.scoring import targets_from_frame
from codeinterp.analyses.subset_search import cma_head_subset, compare_subsets
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import ablation_fill, checkpoint_for, delta_array, run_script, with_ids, write_json, write_parquet


def main(smk):
    p, kind = smk.params.search, smk.params.rank_by
    model, tokenizer = load_model(smk.input.model, compute=smk.params.get("compute"))
    targets = targets_from_frame(pl.read_parquet(smk.input.targets))
    delta = delta_array(pl.read_parquet(smk.input.matrix), kind)
    history = json.loads(open(smk.input.history).read())["history"]
    k, pad = p["k"], tokenizer.pad_token_id or 0
    result, compare = {"heads": [], "loss": None, "history": []}, pl.DataFrame()
    # Subset losses found before a kill are kept beside the output; the seeded search replays.
    checkpoint = checkpoint_for(smk, smk.output.search, {"search": dict(p), "rank_by": kind, "seed": smk.params.seed},
                                targets)
    if targets and delta is not None:
        # Every set is removed with the intervention the heads were ranked by.
        fill = ablation_fill(model, targets, kind, p["batch_size"])
        result = cma_head_subset(model, targets, k, p["batch_size"], smk.params.seed, p["max_evals"],
                                 sigma0=p["sigma0"], popsize=p["popsize"], fill=fill, pad_id=pad,
                                 checkpoint=checkpoint)
        taylor_order = [tuple(h) for row in history[1:] for h in row["pruned"]]
        sets = {
            "cma_es": [tuple(h) for h in result["heads"]],
            # The least important heads are the ones whose removal should cost least.
            "ablation_least": ranking_from_deltas(delta, most_first=False)[:k],
            "ablation_most": regime_heads(delta, {"kind": "top_k", "k": k}),
        }
        if len(taylor_order) >= k:
            sets["taylor_first_pruned"] = taylor_order[:k]
        compare = compare_subsets(model, targets, k, p["batch_size"], sets, fill=fill, pad_id=pad,
                                  boot=Bootstrap.from_config(smk.params.config))
        compare = compare.with_columns(pl.lit(kind).alias("ablation"))
    write_json({"settings": dict(p), "ablation": kind, **result}, smk.output.search)
    write_parquet(with_ids(compare, smk), smk.output.compare)
    checkpoint.done()


run_script(snakemake, main)  # noqa: F821
