import polars as pl
from transformers import AutoTokenizer

from codeinterp.access.models import resolve_chat
from codeinterp.benchmarks.targets import select_targets
from codeinterp.workflow import run_script, write_parquet


def main(smk):
    t = smk.params.targets
    tokenizer = AutoTokenizer.from_pretrained(smk.input.model)
    has = "generations" in smk.input.keys()
    table = select_targets(
        pl.read_parquet(smk.input.problems),
        pl.read_parquet(smk.input.generations) if has else None,
        pl.read_parquet(smk.input.verdicts) if has else None,
        tokenizer, t["source"], smk.params.prompt["mode"], resolve_chat(smk.input.model, smk.params.prompt["chat"]),
        t["max_tokens"], t["limit"], score=t["score"],
    )
    write_parquet(table, smk.output[0])


run_script(snakemake, main)  # noqa: F821
