import logging

import polars as pl

from codeinterp.analyses.lens import label_segments, layer_lens, layer_table
from codeinterp.analyses.tuned_lens import load_translators
from codeinterp.access.hooks import check_decomposition
from codeinterp.access.models import load_model
from codeinterp.access.scoring import batches, targets_from_frame
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import run_script, target_facts, write_parquet

log = logging.getLogger("codeinterp.layer_lens")


def main(smk):
    model, tokenizer = load_model(smk.input.model, compute=smk.params.get("compute"))
    table = pl.read_parquet(smk.input.targets)
    targets = targets_from_frame(table)
    pad = tokenizer.pad_token_id or 0
    translators, heldout = None, None
    tuned = smk.input.get("tuned") or []  # empty when tuned_lens is disabled
    tuned = [tuned] if isinstance(tuned, str) else list(tuned)
    if tuned:
        translators, meta = load_translators(tuned[0])
        problems = set(meta["heldout_problems"])
        heldout = set(table.filter(pl.col("problem_id").is_in(sorted(problems)))["target_id"].to_list())
        log.info("tuned lens: layers %s; %d held-out problems, %d held-out targets",
                 sorted(translators), len(problems), len(heldout))
    if targets:
        # The lens reads hooked residual sites: stop if they do not add up for this architecture.
        first = next(iter(batches(targets[:1], 1, pad)))
        check_decomposition(model, first.input_ids, first.attention_mask)
    tokens = layer_lens(model, targets, smk.params.batch_size, pad, translators, heldout)
    tokens = label_segments(tokens, table)
    layers = layer_table(tokens, Bootstrap.from_config(smk.params.config))
    if len(layers):
        facts = target_facts(table)
        layers = layers.with_columns(
            pl.lit(facts["n_scored_tokens"], dtype=pl.Int64).alias("n_scored_tokens"),
            pl.lit(facts["target_origin"]).alias("target_origin"), pl.lit(facts["scored_span"]).alias("scored_span"),
        )
    write_parquet(tokens, smk.output.tokens)
    write_parquet(layers, smk.output.layers)


run_script(snakemake, main)  # noqa: F821
