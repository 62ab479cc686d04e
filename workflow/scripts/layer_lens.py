import polars as pl

from codeinterp.analyses.lens import layer_lens
from codeinterp.access.models import load_model
from codeinterp.access.scoring import targets_from_frame
from codeinterp.uncertainty import Bootstrap, summarise_columns
from codeinterp.workflow import run_script, target_facts, write_parquet

STATISTICS = ["entropy", "cross_entropy", "top1_accuracy", "kl_to_final"]


def main(smk):
    model, tokenizer = load_model(smk.input.model)
    table = pl.read_parquet(smk.input.targets)
    tokens = layer_lens(model, targets_from_frame(table), smk.params.batch_size, tokenizer.pad_token_id or 0)
    # Each target weighs the same whatever its length: mean over its tokens first, then over targets.
    per_target = tokens.group_by("target_id", "layer").agg(
        pl.col("entropy").mean(), pl.col("cross_entropy").mean(),
        pl.col("top1_correct").cast(pl.Float64).mean().alias("top1_accuracy"), pl.col("kl_to_final").mean(),
    )
    layers = summarise_columns(per_target, "target_id", ["layer"], STATISTICS, Bootstrap.from_config(smk.params.config))
    if len(layers):
        facts = target_facts(table)
        layers = layers.rename({"n": "n_targets"}).with_columns(
            pl.lit(facts["n_scored_tokens"], dtype=pl.Int64).alias("n_scored_tokens"),
            pl.lit(facts["target_origin"]).alias("target_origin"), pl.lit(facts["scored_span"]).alias("scored_span"),
        )
    write_parquet(tokens, smk.output.tokens)
    write_parquet(layers, smk.output.layers)


run_script(snakemake, main)  # noqa: F821
