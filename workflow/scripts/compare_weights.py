from codeinterp.access.models import load_model
from codeinterp.analyses.compare_weights import compare_weights
from codeinterp.workflow import run_script, write_parquet


def main(smk):
    a, _ = load_model(smk.input.a)
    b, _ = load_model(smk.input.b)
    table, _notes = compare_weights(a, b, smk.wildcards.a, smk.wildcards.b, dict(smk.params.settings))
    write_parquet(table, smk.output[0])


run_script(snakemake, main)  # noqa: F821
