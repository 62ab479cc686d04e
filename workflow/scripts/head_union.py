from codeinterp.analyses.head_union import union_from_files
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import run_script, write_parquet


def main(smk):
    files = dict(zip(smk.params.datasets, smk.input.deltas))
    table = union_from_files(smk.input.model, files, smk.params.rank_by, int(smk.params.top_k),
                             Bootstrap.from_config(smk.params.config))
    write_parquet(table, smk.output[0])


run_script(snakemake, main)  # noqa: F821
