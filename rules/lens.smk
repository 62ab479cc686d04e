rule layer_lens:
    input:
        model=lambda wc: model_dir(wc.model),
        targets="results/{model}/{dataset}/targets.parquet",
    output:
        tokens="results/{model}/{dataset}/lens_tokens.parquet",
        layers=report(
            "results/{model}/{dataset}/lens_layers.parquet",
            caption="../reports/captions/lens.rst",
            category="Layer lens",
        ),
    params:
        batch_size=config["lens"]["batch_size"],
        config=bootstrap_params(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/layer_lens/{model}/{dataset}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/layer_lens.py"
