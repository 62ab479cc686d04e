import polars as pl

from codeinterp.lens import layer_lens, layer_summary
from codeinterp.models import load_model
from codeinterp.scoring import targets_from_frame
from codeinterp.workflow import run_script, write_parquet


def main(smk):
    model, tokenizer = load_model(smk.input.model)
    targets = targets_from_frame(pl.read_parquet(smk.input.targets))
    tokens = layer_lens(model, targets, smk.params.batch_size, tokenizer.pad_token_id or 0)
    write_parquet(tokens, smk.output.tokens)
    write_parquet(layer_summary(tokens), smk.output.layers)


run_script(snakemake, main)  # noqa: F821
