def targets_inputs(wc):
    inputs = {"model": model_dir(wc.model), "problems": f"results/datasets/{wc.dataset}/problems.parquet"}
    if uses_generations():
        inputs["generations"] = f"results/{wc.model}/{wc.dataset}/generations.parquet"
        inputs["verdicts"] = f"results/{wc.model}/{wc.dataset}/verdicts.parquet"
    return inputs


rule select_targets:
    input:
        unpack(targets_inputs),
    output:
        "results/{model}/{dataset}/targets.parquet",
    params:
        targets=config["targets"],
        prompt=lambda wc: prompt_settings(wc.model),
    log:
        "logs/select_targets/{model}/{dataset}.log",
    threads: 1
    script:
        "../workflow/scripts/select_targets.py"
