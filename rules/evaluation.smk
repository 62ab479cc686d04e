rule evaluate:
    input:
        problems="results/datasets/{dataset}/problems.parquet",
        generations="results/{model}/{dataset}/generations.parquet",
    output:
        verdicts="results/{model}/{dataset}/verdicts.parquet",
        pass_at_k="results/{model}/{dataset}/pass_at_k.parquet",
        timing="results/{model}/{dataset}/verdicts_timing.json",
    params:
        limits=config["evaluation"],
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/evaluate/{model}/{dataset}.log",
    threads: config["threads"]
    script:
        "../workflow/scripts/evaluate.py"
