rule layer_lens:
    input:
        model=lambda wc: model_dir(wc.model),
        targets="results/{model}/{dataset}/targets.parquet",
        # The tuned lens's translators (and its held-out problems), when it is trained.
        tuned=lambda wc: tuned_lens_of(wc.model, wc.dataset),
    output:
        tokens="results/{model}/{dataset}/lens_tokens.parquet",
        layers=report(
            "results/{model}/{dataset}/lens_layers.parquet",
            caption="../reports/captions/lens.rst",
            category="Layer lens",
        ),
    params:
        compute=compute_params("layer_lens"),
        batch_size=config["lens"]["batch_size"],
        config=bootstrap_params(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/layer_lens/{model}/{dataset}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/layer_lens.py"


rule tuned_lens:
    input:
        model=lambda wc: model_dir(wc.model),
        targets="results/{model}/{dataset}/targets.parquet",
        activations="results/{model}/{dataset}/activations",
    output:
        translators="results/{model}/{dataset}/lens/tuned_lens.safetensors",
        training="results/{model}/{dataset}/lens/tuned_training.parquet",
        timing="results/{model}/{dataset}/lens/tuned_timing.json",
    params:
        compute=compute_params("tuned_lens"),
        tuned=config["tuned_lens"],
        seed=config["seed"],
        config=bootstrap_params(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/tuned_lens/{model}/{dataset}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/tuned_lens.py"
