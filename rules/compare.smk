# Comparing models in weight space (codeinterp.analyses.compare_weights).
rule compare_weights:
    input:
        a=lambda wc: model_dir(wc.a),
        b=lambda wc: model_dir(wc.b),
    output:
        "results/comparisons/{a}__{b}/weights.parquet",
    params:
        settings=config["comparisons"],
    wildcard_constraints:
        a="|".join(map(re.escape, MODELS)),
        b="|".join(map(re.escape, MODELS)),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/compare_weights/{a}__{b}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/compare_weights.py"


# Comparing two models by what matters in them (codeinterp.analyses.compare_models): any pair.
rule compare_models:
    input:
        lambda wc: [model_dir(wc.a), model_dir(wc.b)] + list(compare_models_files(wc.a, wc.b).values()),
    output:
        overlap="results/comparisons/{a}__{b}/models/overlap.parquet",
        heads="results/comparisons/{a}__{b}/models/heads.parquet",
        lens="results/comparisons/{a}__{b}/models/lens.parquet",
        pass_at_k="results/comparisons/{a}__{b}/models/pass_at_k.parquet",
        circuits="results/comparisons/{a}__{b}/models/circuits.parquet",
    params:
        files=lambda wc: compare_models_files(wc.a, wc.b),
        models=lambda wc: {"a": model_dir(wc.a), "b": model_dir(wc.b)},
        settings=config["comparisons"],
        rank_by=config["ablation"]["rank_by"],
        config=bootstrap_params(),
    wildcard_constraints:
        a="|".join(map(re.escape, MODELS)),
        b="|".join(map(re.escape, MODELS)),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/compare_models/{a}__{b}.log",
    threads: 1
    resources:
        mem_mb=4000,
    script:
        "../workflow/scripts/compare_models.py"


# Heads in the top k of every benchmark, of one, of none (codeinterp.analyses.head_union).
rule head_union:
    input:
        model=lambda wc: model_dir(wc.model),
        deltas=lambda wc: expand("results/{model}/{dataset}/ablation/head_deltas.parquet", model=wc.model,
                                 dataset=ablated_benchmarks(wc.model)),
    output:
        "results/{model}/heads_union.parquet",
    params:
        datasets=lambda wc: ablated_benchmarks(wc.model),
        top_k=config["comparisons"]["top_k"],
        rank_by=config["ablation"]["rank_by"],
        config=bootstrap_params(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/head_union/{model}.log",
    threads: 1
    resources:
        mem_mb=4000,
    script:
        "../workflow/scripts/head_union.py"
