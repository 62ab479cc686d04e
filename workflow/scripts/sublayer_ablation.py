from codeinterp.causal.run import Stage
from codeinterp.causal.sublayer import sublayer_ablation
from codeinterp.workflow import run_script


def main(smk):
    stage = Stage(smk, "sublayer_ablation")
    s = smk.params.settings
    table = sublayer_ablation(stage.model, stage.pairs, list(s["kinds"]), int(s["batch_size"]), stage.boot, stage.pad)
    stage.finish(table)


run_script(snakemake, main)  # noqa: F821
