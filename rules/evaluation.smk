if config["shards"]["evaluate"] == 1:

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

else:

    rule evaluate_shard:
        input:
            problems="results/datasets/{dataset}/problems.parquet",
            generations="results/{model}/{dataset}/generations.parquet",
        output:
            verdicts="results/{model}/{dataset}/shards/verdicts-{shard}.parquet",
            timing="results/{model}/{dataset}/shards/verdicts-{shard}_timing.json",
        params:
            limits=config["evaluation"],
            shard=lambda wc: [int(wc.shard), config["shards"]["evaluate"]],
        wildcard_constraints:
            shard=r"\d+",
        conda:
            "../envs/codeinterp.yaml"
        log:
            "logs/evaluate/{model}/{dataset}-{shard}.log",
        threads: config["threads"]
        script:
            "../workflow/scripts/evaluate.py"

    rule evaluate:
        input:
            shards=shard_files("verdicts", "evaluate"),
            timings=shard_files("verdicts", "evaluate", "_timing.json"),
        output:
            verdicts="results/{model}/{dataset}/verdicts.parquet",
            pass_at_k="results/{model}/{dataset}/pass_at_k.parquet",
            timing="results/{model}/{dataset}/verdicts_timing.json",
        params:
            stage="evaluate",
            ks=config["evaluation"]["ks"],
        log:
            "logs/evaluate/{model}/{dataset}.log",
        threads: 1
        script:
            "../workflow/scripts/merge_shards.py"
