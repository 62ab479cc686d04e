from codeinterp.analyses.tuned_lens import load_translators
from codeinterp.causal.run import Stage
from codeinterp.causal.task_metrics import task_lens
from codeinterp.workflow import run_script


def main(smk):
    stage = Stage(smk, "task_lens")
    # The tuned lens trained on a benchmark dataset of the same model, when there is one.
    translators = load_translators(smk.input.tuned[0])[0] if smk.input.tuned else None
    table = task_lens(stage.model, stage.pairs, int(smk.params.settings["batch_size"]), stage.boot, stage.pad,
                      translators)
    stage.finish(table)


run_script(snakemake, main)  # noqa: F821
