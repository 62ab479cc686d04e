# A variant of a configured model by a short seeded training run (codeinterp.access.finetune):
# `source: finetune` models are made here instead of by prepare_model.
rule finetune:
    input:
        base=lambda wc: model_dir(model_spec(wc.model)["base"]),
    output:
        model=directory("resources/models/{model}"),
        training="results/{model}/finetune/training.parquet",
        heldout="results/{model}/finetune/heldout.parquet",
        record="results/{model}/finetune/finetune.json",
    params:
        spec=lambda wc: model_spec(wc.model),
        seed=config["seed"],
        data_dir=str(DATA_DIR),
    wildcard_constraints:
        model=FINETUNED_PATTERN,
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/finetune/{model}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/finetune.py"
