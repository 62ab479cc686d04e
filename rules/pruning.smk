rule taylor_pruning:
    input:
        model=lambda wc: model_dir(wc.model),
        targets="results/{model}/{dataset}/targets.parquet",
    output:
        history="results/{model}/{dataset}/pruning/taylor_history.json",
        per_target="results/{model}/{dataset}/pruning/taylor_targets.parquet",
        table=report(
            "results/{model}/{dataset}/pruning/taylor_history.parquet",
            caption="../reports/captions/taylor.rst",
            category="Head importance",
        ),
    params:
        compute=compute_params("taylor_pruning"),
        taylor=config["taylor"],
        rank_by=config["ablation"]["rank_by"],
        config=bootstrap_params(),
        checkpoint="results/{model}/{dataset}/pruning/taylor_history.partial.json",
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/taylor_pruning/{model}/{dataset}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/taylor_pruning.py"


rule taylor_vs_exact:
    input:
        deltas="results/{model}/{dataset}/ablation/head_deltas.parquet",
        history="results/{model}/{dataset}/pruning/taylor_history.json",
    output:
        summary=report(
            "results/{model}/{dataset}/pruning/taylor_vs_exact.parquet",
            caption="../reports/captions/taylor_vs_exact.rst",
            category="Head importance",
        ),
        heads="results/{model}/{dataset}/pruning/taylor_vs_exact_heads.parquet",
    params:
        rank_by=config["ablation"]["rank_by"],
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/taylor_vs_exact/{model}/{dataset}.log",
    threads: 1
    script:
        "../workflow/scripts/taylor_vs_exact.py"


rule pruned_eval:
    input:
        model=lambda wc: model_dir(wc.model),
        problems="results/datasets/{dataset}/problems.parquet",
        targets="results/{model}/{dataset}/targets.parquet",
        matrix="results/{model}/{dataset}/ablation/head_matrix.parquet",
        history="results/{model}/{dataset}/pruning/taylor_history.json",
        verdicts="results/{model}/{dataset}/verdicts.parquet",
        pass_at_k="results/{model}/{dataset}/pass_at_k.parquet",
    output:
        verdicts="results/{model}/{dataset}/pruning/pruned_verdicts.parquet",
        summary=report(
            "results/{model}/{dataset}/pruning/pruned_eval.parquet",
            caption="../reports/captions/pruned_eval.rst",
            category="Head importance",
        ),
    params:
        compute=compute_params("generate"),
        regimes=config["pruned_eval"]["regimes"],
        rank_by=config["ablation"]["rank_by"],
        settings=lambda wc: generation_settings(wc.model),
        vllm_python=vllm_python(),
        limits=config["evaluation"],
        batch_size=config["ablation"]["batch_size"],
        config=bootstrap_params(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/pruned_eval/{model}/{dataset}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/pruned_eval.py"
