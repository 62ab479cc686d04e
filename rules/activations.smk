# The activation cache: sites of the model's own forward on the analysis targets, as sharded
# safetensors plus index.json (see codeinterp.analyses.activations). The probes, the tuned
# lens and the representation maps read it with ActivationCache.
rule cache_activations:
    input:
        model=lambda wc: model_dir(wc.model),
        targets="results/{model}/{dataset}/targets.parquet",
    output:
        directory("results/{model}/{dataset}/activations"),
    params:
        compute=compute_params("cache_activations"),
        settings=config["activations"],
        seed=config["seed"],
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/cache_activations/{model}/{dataset}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/cache_activations.py"
