import polars as pl

from codeinterp.generation import Settings, run_generation
from codeinterp.models import resolve_chat
from codeinterp.workflow import run_script, write_parquet


def main(smk):
    s = dict(smk.params.settings)
    settings = Settings(
        mode=s["mode"], chat=resolve_chat(smk.input.model, s["chat"]), n=s["n"], temperature=s["temperature"],
        top_p=s["top_p"], max_new_tokens=s["max_new_tokens"], batch_size=s["batch_size"], seed=s["seed"],
        stop=tuple(s["stop"]),
    )
    problems = pl.read_parquet(smk.input.problems)
    table = run_generation(problems, smk.input.model, settings, s["backend"], smk.params.vllm_python, s["samples"])
    write_parquet(table, smk.output[0])


run_script(snakemake, main)  # noqa: F821
