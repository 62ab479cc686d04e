from codeinterp.access.models import prepare_model
from codeinterp.workflow import run_script


def main(smk):
    prepare_model(dict(smk.params.spec), smk.output[0])


run_script(snakemake, main)  # noqa: F821
