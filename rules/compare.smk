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
