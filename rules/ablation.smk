if config["shards"]["head_ablation"] == 1:

    rule head_ablation:
        input:
            model=lambda wc: model_dir(wc.model),
            targets="results/{model}/{dataset}/targets.parquet",
        output:
            deltas="results/{model}/{dataset}/ablation/head_deltas.parquet",
            matrix=report(
                "results/{model}/{dataset}/ablation/head_matrix.parquet",
                caption="../reports/captions/ablation.rst",
                category="Head importance",
            ),
        params:
            compute=compute_params("head_ablation"),
            kinds=config["ablation"]["kinds"],
            batch_size=config["ablation"]["batch_size"],
            heads_per_pass=config["ablation"]["heads_per_pass"],
            config=bootstrap_params(),
        conda:
            "../envs/codeinterp.yaml"
        log:
            "logs/head_ablation/{model}/{dataset}.log",
        threads: config["threads"]
        resources:
            mem_mb=8000,
        script:
            "../workflow/scripts/head_ablation.py"

else:

    rule head_ablation_shard:
        input:
            model=lambda wc: model_dir(wc.model),
            targets="results/{model}/{dataset}/targets.parquet",
        output:
            deltas="results/{model}/{dataset}/shards/head_deltas-{shard}.parquet",
        params:
            compute=compute_params("head_ablation"),
            kinds=config["ablation"]["kinds"],
            batch_size=config["ablation"]["batch_size"],
            heads_per_pass=config["ablation"]["heads_per_pass"],
            config=bootstrap_params(),
            shard=lambda wc: [int(wc.shard), config["shards"]["head_ablation"]],
        wildcard_constraints:
            shard=r"\d+",
        conda:
            "../envs/codeinterp.yaml"
        log:
            "logs/head_ablation/{model}/{dataset}-{shard}.log",
        threads: config["threads"]
        resources:
            mem_mb=8000,
        script:
            "../workflow/scripts/head_ablation.py"

    rule head_ablation:
        input:
            shards=shard_files("head_deltas", "head_ablation"),
            targets="results/{model}/{dataset}/targets.parquet",
        output:
            deltas="results/{model}/{dataset}/ablation/head_deltas.parquet",
            matrix=report(
                "results/{model}/{dataset}/ablation/head_matrix.parquet",
                caption="../reports/captions/ablation.rst",
                category="Head importance",
            ),
        params:
            stage="head_ablation",
            kinds=config["ablation"]["kinds"],
            config=bootstrap_params(),
        log:
            "logs/head_ablation/{model}/{dataset}.log",
        threads: 1
        script:
            "../workflow/scripts/merge_shards.py"


rule knockout:
    input:
        model=lambda wc: model_dir(wc.model),
        targets="results/{model}/{dataset}/targets.parquet",
        matrix="results/{model}/{dataset}/ablation/head_matrix.parquet",
    output:
        report(
            "results/{model}/{dataset}/ablation/knockout.parquet",
            caption="../reports/captions/knockout.rst",
            category="Head importance",
        ),
    params:
        compute=compute_params("knockout"),
        rank_by=config["ablation"]["rank_by"],
        batch_size=config["ablation"]["batch_size"],
        steps_per_pass=config["ablation"]["knockout_steps_per_pass"],
        every=config["ablation"]["knockout_every"],
        config=bootstrap_params(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/knockout/{model}/{dataset}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/knockout.py"
