from codeinterp.causal.head_roles import head_roles
from codeinterp.causal.run import Stage
from codeinterp.workflow import run_script


def main(smk):
    s = smk.params.settings
    stage = Stage(smk, "head_roles", s["max_pairs"])
    table = head_roles(stage.model, stage.pairs, int(s["batch_size"]), int(s["top_k"]), stage.boot, stage.pad)
    stage.finish(table)


run_script(snakemake, main)  # noqa: F821
