# Failure prediction: pass versus fail of every generated sample from the residual stream at
# the last prompt token and the last generated token (codeinterp.analyses.failure).
rule failure_probe:
    input:
        model=lambda wc: model_dir(wc.model),
        generations="results/{model}/{dataset}/generations.parquet",
        verdicts="results/{model}/{dataset}/verdicts.parquet",
    output:
        table="results/{model}/{dataset}/failure/failure_probe.parquet",
        timing="results/{model}/{dataset}/failure/failure_timing.json",
    params:
        compute=compute_params("failure_probe"),
        settings=config["failure_probe"],
        seed=config["seed"],
        config=bootstrap_params(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/failure_probe/{model}/{dataset}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/failure_probe.py"
