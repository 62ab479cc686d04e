# Generated tasks at the level of one model's tokenizer: equal-length clean/corrupted ids and
# the answer tokens the causal analyses compare (codeinterp.benchmarks.task_pairs).
rule task_pairs:
    input:
        model=lambda wc: model_dir(wc.model),
        candidates="results/datasets/{dataset}/problems.parquet",
    output:
        "results/{model}/{dataset}/pairs.parquet",
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/task_pairs/{model}/{dataset}.log",
    threads: 1
    script:
        "../workflow/scripts/task_pairs.py"
