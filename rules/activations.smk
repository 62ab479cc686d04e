# The activation cache: sites of the model's own forward on the analysis targets, as sharded
# safetensors plus index.json (see codeinterp.analyses.activations). The probes, the tuned
# lens and the representation maps read it with ActivationCache.
if config["shards"]["cache_activations"] == 1:

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

else:

    # Part j writes a contiguous run of the cache's files (codeinterp.analyses.cache_parts).
    rule cache_activations_shard:
        input:
            model=lambda wc: model_dir(wc.model),
            targets="results/{model}/{dataset}/targets.parquet",
        output:
            directory("results/{model}/{dataset}/shards/activations-{shard}"),
        params:
            compute=compute_params("cache_activations"),
            settings=config["activations"],
            seed=config["seed"],
            shard=lambda wc: [int(wc.shard), config["shards"]["cache_activations"]],
        wildcard_constraints:
            shard=r"\d+",
        conda:
            "../envs/codeinterp.yaml"
        log:
            "logs/cache_activations/{model}/{dataset}-{shard}.log",
        threads: config["threads"]
        resources:
            mem_mb=8000,
        script:
            "../workflow/scripts/cache_activations.py"

    rule cache_activations:
        input:
            model=lambda wc: model_dir(wc.model),
            targets="results/{model}/{dataset}/targets.parquet",
            shards=shard_files("activations", "cache_activations", ""),
        output:
            directory("results/{model}/{dataset}/activations"),
        params:
            stage="cache_activations",
        log:
            "logs/cache_activations/{model}/{dataset}.log",
        threads: 1
        script:
            "../workflow/scripts/merge_shards.py"
