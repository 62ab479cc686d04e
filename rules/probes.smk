# Linear probes for code properties per residual layer, with the control task, a randomly
# initialised model and the projection test (codeinterp.analyses.probes, probe_controls).
rule probes:
    input:
        model=lambda wc: model_dir(wc.model),
        targets="results/{model}/{dataset}/targets.parquet",
        tokens="results/{model}/{dataset}/tokens.parquet",
        activations="results/{model}/{dataset}/activations",
    output:
        probes="results/{model}/{dataset}/probes/probes.parquet",
        projection="results/{model}/{dataset}/probes/projection.parquet",
    params:
        compute=compute_params("probes"),
        probes=config["probes"],
        seed=config["seed"],
        batch_size=config["activations"]["batch_size"],
        config=bootstrap_params(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/probes/{model}/{dataset}.log",
    # One thread: the probe fits are single-threaded (threadpool_limits), and the forwards on a
    # shared 2-core machine ran 3-7x slower with two torch threads than with one (measured).
    threads: 1
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/probes.py"
