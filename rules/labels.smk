# The token table: one row per token of every target with code-aware labels
# (codeinterp.analyses.token_labels); other stages join on (target_id, position).
rule token_labels:
    input:
        model=lambda wc: model_dir(wc.model),
        targets="results/{model}/{dataset}/targets.parquet",
    output:
        tokens="results/{model}/{dataset}/tokens.parquet",
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/token_labels/{model}/{dataset}.log",
    threads: 1
    resources:
        mem_mb=4000,
    script:
        "../workflow/scripts/token_labels.py"
