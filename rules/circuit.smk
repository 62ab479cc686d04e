# Circuit discovery by EAP-IG, verified by exact edge patching (codeinterp.causal.circuit).
rule circuit:
    input:
        model=lambda wc: model_dir(wc.model),
        pairs="results/{model}/{dataset}/pairs.parquet",
    output:
        table="results/{model}/{dataset}/circuit/faithfulness.parquet",
        edges="results/{model}/{dataset}/circuit/edges.parquet",
        svg="results/{model}/{dataset}/circuit/circuit.svg",
        timing="results/{model}/{dataset}/circuit/circuit_timing.json",
    params:
        compute=compute_params("circuit"),
        settings=config["circuit"],
        config=bootstrap_params(),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/circuit/{model}/{dataset}.log",
    threads: config["threads"]
    resources:
        mem_mb=8000,
    script:
        "../workflow/scripts/circuit.py"
