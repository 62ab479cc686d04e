rule prepare_dataset:
    output:
        "results/datasets/{dataset}/problems.parquet",
    params:
        spec=lambda wc: dataset_spec(wc.dataset),
        data_dir=str(DATA_DIR),
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/prepare_dataset/{dataset}.log",
    threads: 1
    script:
        "../workflow/scripts/prepare_dataset.py"
