from codeinterp.report.build import build_report
from codeinterp.workflow import run_script


def main(smk):
    build_report(dict(smk.input.items()), dict(smk.params.config), smk.output[0])


run_script(snakemake, main)  # noqa: F821
