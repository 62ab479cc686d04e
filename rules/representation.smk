# Representation maps: PCA / UMAP of code tokens' residual stream at a few layers, coloured
# by code labels (codeinterp.analyses.representation).
rule representation_map:
    input:
        activations="results/{model}/{dataset}/activations",
        tokens="results/{model}/{dataset}/tokens.parquet",
    output:
        points="results/{model}/{dataset}/representation/points.parquet",
        summary="results/{model}/{dataset}/representation/summary.parquet",
        settings="results/{model}/{dataset}/representation/settings.json",
    params:
        settings=config["representation_map"],
        seed=config["seed"],
        config=bootstrap_params(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/representation_map/{model}/{dataset}.log",
    threads: 1
    resources:
        mem_mb=4000,
    script:
        "../workflow/scripts/representation_map.py"
