rule head_subset_search:
    input:
        model=lambda wc: model_dir(wc.model),
        targets="results/{model}/{dataset}/targets.parquet",
        matrix="results/{model}/{dataset}/ablation/head_matrix.parquet",
        history="results/{model}/{dataset}/pruning/taylor_history.json",
    output:
        search="results/{model}/{dataset}/subset_search/cma_history.json",
        compare=report(
            "results/{model}/{dataset}/subset_search/compare.parquet",
            caption="../reports/captions/subset_search.rst",
            category="Head importance",
        ),
    params:
        compute=compute_params("head_subset_search"),
        search=config["subset_search"],
        rank_by=config["ablation"]["rank_by"],
        seed=config["seed"],
        config=bootstrap_params(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/head_subset_search/{model}/{dataset}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/head_subset_search.py"
