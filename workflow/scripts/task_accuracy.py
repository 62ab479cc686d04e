from codeinterp.causal.run import Stage
from codeinterp.causal.task_metrics import task_accuracy
from codeinterp.workflow import run_script


def main(smk):
    stage = Stage(smk, "task_accuracy")
    table = task_accuracy(stage.model, stage.pairs, int(smk.params.settings["batch_size"]), stage.boot, stage.pad)
    stage.finish(table)


run_script(snakemake, main)  # noqa: F821
