if config["shards"]["generate"] == 1:

    rule generate:
        input:
            model=lambda wc: model_dir(wc.model),
            problems="results/datasets/{dataset}/problems.parquet",
        output:
            table="results/{model}/{dataset}/generations.parquet",
            # Wall-clock time stays out of the table (byte-identical reruns).
            timing="results/{model}/{dataset}/generations_timing.json",
        params:
            compute=compute_params("generate"),
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

else:

    rule generate_shard:
        input:
            model=lambda wc: model_dir(wc.model),
            problems="results/datasets/{dataset}/problems.parquet",
        output:
            table="results/{model}/{dataset}/shards/generations-{shard}.parquet",
            timing="results/{model}/{dataset}/shards/generations-{shard}_timing.json",
        params:
            compute=compute_params("generate"),
            settings=lambda wc: generation_settings(wc.model),
            vllm_python=vllm_python(),
            shard=lambda wc: [int(wc.shard), config["shards"]["generate"]],
        wildcard_constraints:
            shard=r"\d+",
        conda:
            "../envs/codeinterp.yaml"
        log:
            "logs/generate/{model}/{dataset}-{shard}.log",
        threads: config["threads"]
        resources:
            mem_mb=8000,
        script:
            "../workflow/scripts/generate.py"

    rule generate:
        input:
            shards=shard_files("generations", "generate"),
            timings=shard_files("generations", "generate", "_timing.json"),
        output:
            table="results/{model}/{dataset}/generations.parquet",
            timing="results/{model}/{dataset}/generations_timing.json",
        params:
            stage="generate",
        log:
            "logs/generate/{model}/{dataset}.log",
        threads: 1
        script:
            "../workflow/scripts/merge_shards.py"
