# codeinterp: mechanistic interpretability of code-generating language models.
# Run from any directory: snakemake -s <repo>/Snakefile -d <workdir> --cores 2 [--configfile <file>]
from snakemake.utils import min_version

min_version("9.0")


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/finetune.smk"
include: "rules/datasets.smk"
include: "rules/generation.smk"
include: "rules/evaluation.smk"
include: "rules/targets.smk"
include: "rules/labels.smk"
include: "rules/activations.smk"
include: "rules/lens.smk"
include: "rules/probes.smk"
include: "rules/failure.smk"
include: "rules/representation.smk"
include: "rules/ablation.smk"
include: "rules/pruning.smk"
include: "rules/subset_search.smk"
include: "rules/pairs.smk"
include: "rules/tasks.smk"
include: "rules/patching.smk"
include: "rules/circuit.smk"
include: "rules/compare.smk"
include: "rules/report.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
