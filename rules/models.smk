rule prepare_model:
    output:
        directory("resources/models/{model}"),
    params:
        spec=lambda wc: model_spec(wc.model),
    wildcard_constraints:
        model=PREPARED_PATTERN,
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/prepare_model/{model}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/prepare_model.py"
