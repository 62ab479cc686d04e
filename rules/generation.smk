rule generate:
    input:
        model=lambda wc: model_dir(wc.model),
        problems="results/datasets/{dataset}/problems.parquet",
    output:
        table="results/{model}/{dataset}/generations.parquet",
        # Wall-clock time stays out of the table (byte-identical reruns).
        timing="results/{model}/{dataset}/generations_timing.json",
    params:
        settings=lambda wc: generation_settings(wc.model),
        vllm_python=vllm_python(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/generate/{model}/{dataset}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/generate.py"
