from codeinterp.analyses.compare_models import compare_pair
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import run_script, write_parquet


def main(smk):
    names = (smk.wildcards.a, smk.wildcards.b)
    tables = compare_pair(names, dict(smk.params.models), dict(smk.params.files), smk.params.rank_by,
                          int(smk.params.settings["top_k"]), Bootstrap.from_config(smk.params.config))
    for kind, table in tables.items():
        write_parquet(table, smk.output[kind])


run_script(snakemake, main)  # noqa: F821
