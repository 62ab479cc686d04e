rule select_targets:
    input:
        unpack(targets_inputs),
    output:
        "results/{model}/{dataset}/targets.parquet",
    params:
        targets=config["targets"],
        prompt=lambda wc: prompt_settings(wc.model),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/select_targets/{model}/{dataset}.log",
    threads: 1
    script:
        "../workflow/scripts/select_targets.py"
