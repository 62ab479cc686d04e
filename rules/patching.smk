# Exact activation patching and its first-order estimate (codeinterp.causal.patching, attribution).
if config["shards"]["activation_patching"] == 1:

    rule activation_patching:
        input:
            model=lambda wc: model_dir(wc.model),
            pairs="results/{model}/{dataset}/pairs.parquet",
        output:
            table="results/{model}/{dataset}/patching/activation_patching.parquet",
            timing="results/{model}/{dataset}/patching/activation_patching_timing.json",
        params:
            compute=compute_params("activation_patching"),
            settings=config["activation_patching"],
            seed=config["seed"],
            config=bootstrap_params(),
        conda:
            "../envs/codeinterp.yaml"
        log:
            "logs/activation_patching/{model}/{dataset}.log",
        threads: config["threads"]
        resources:
            mem_mb=8000,
        script:
            "../workflow/scripts/activation_patching.py"

else:

    rule activation_patching_shard:
        input:
            model=lambda wc: model_dir(wc.model),
            pairs="results/{model}/{dataset}/pairs.parquet",
        output:
            table="results/{model}/{dataset}/shards/activation_patching-{shard}.parquet",
            timing="results/{model}/{dataset}/shards/activation_patching-{shard}_timing.json",
        params:
            compute=compute_params("activation_patching"),
            settings=config["activation_patching"],
            seed=config["seed"],
            config=bootstrap_params(),
            shard=lambda wc: [int(wc.shard), config["shards"]["activation_patching"]],
        wildcard_constraints:
            shard=r"\d+",
        conda:
            "../envs/codeinterp.yaml"
        log:
            "logs/activation_patching/{model}/{dataset}-{shard}.log",
        threads: config["threads"]
        resources:
            mem_mb=8000,
        script:
            "../workflow/scripts/activation_patching.py"


    rule activation_patching:
        input:
            shards=shard_files("activation_patching", "activation_patching"),
            timings=shard_files("activation_patching", "activation_patching", "_timing.json"),
        output:
            table="results/{model}/{dataset}/patching/activation_patching.parquet",
            timing="results/{model}/{dataset}/patching/activation_patching_timing.json",
        params:
            stage="activation_patching",
            config=bootstrap_params(),
        log:
            "logs/activation_patching/{model}/{dataset}.log",
        threads: 1
        script:
            "../workflow/scripts/merge_shards.py"


rule attribution_patching:
    input:
        model=lambda wc: model_dir(wc.model),
        pairs="results/{model}/{dataset}/pairs.parquet",
        exact="results/{model}/{dataset}/patching/activation_patching.parquet",
    output:
        table="results/{model}/{dataset}/patching/attribution_patching.parquet",
        compare="results/{model}/{dataset}/patching/attribution_vs_exact.parquet",
        timing="results/{model}/{dataset}/patching/attribution_patching_timing.json",
    params:
        compute=compute_params("attribution_patching"),
        settings=config["attribution_patching"],
        patching=config["activation_patching"],
        seed=config["seed"],
        config=bootstrap_params(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/attribution_patching/{model}/{dataset}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/attribution_patching.py"
