# Accuracy, lens and sublayer ablation on generated tasks, and the head-role counting study on
# brackets (codeinterp.causal.task_metrics, sublayer, head_roles).


rule task_accuracy:
    input:
        model=lambda wc: model_dir(wc.model),
        pairs="results/{model}/{dataset}/pairs.parquet",
    output:
        table="results/{model}/{dataset}/causal/task_accuracy.parquet",
        timing="results/{model}/{dataset}/causal/task_accuracy_timing.json",
    params:
        compute=compute_params("task_accuracy"),
        settings=config["task_accuracy"],
        config=bootstrap_params(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/task_accuracy/{model}/{dataset}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/task_accuracy.py"


rule task_lens:
    input:
        model=lambda wc: model_dir(wc.model),
        pairs="results/{model}/{dataset}/pairs.parquet",
        tuned=tuned_lens_for_tasks,
    output:
        table="results/{model}/{dataset}/causal/task_lens.parquet",
        timing="results/{model}/{dataset}/causal/task_lens_timing.json",
    params:
        compute=compute_params("task_lens"),
        settings=config["task_lens"],
        config=bootstrap_params(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/task_lens/{model}/{dataset}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/task_lens.py"


rule sublayer_ablation:
    input:
        model=lambda wc: model_dir(wc.model),
        pairs="results/{model}/{dataset}/pairs.parquet",
    output:
        table="results/{model}/{dataset}/causal/sublayer_ablation.parquet",
        timing="results/{model}/{dataset}/causal/sublayer_ablation_timing.json",
    params:
        compute=compute_params("sublayer_ablation"),
        settings=config["sublayer_ablation"],
        config=bootstrap_params(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/sublayer_ablation/{model}/{dataset}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/sublayer_ablation.py"


rule head_roles:
    input:
        model=lambda wc: model_dir(wc.model),
        pairs="results/{model}/{dataset}/pairs.parquet",
    output:
        table="results/{model}/{dataset}/causal/head_roles.parquet",
        timing="results/{model}/{dataset}/causal/head_roles_timing.json",
    params:
        compute=compute_params("head_roles"),
        settings=config["head_roles"],
        config=bootstrap_params(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/head_roles/{model}/{dataset}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/head_roles.py"
