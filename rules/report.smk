def report_inputs(wc):
    inputs = {"models": [model_dir(m) for m in MODELS]}
    for m in MODELS:
        for d in DATASETS:
            base = f"results/{m}/{d}"
            inputs[f"{m}|{d}|verdicts"] = f"{base}/verdicts.parquet"
            inputs[f"{m}|{d}|pass_at_k"] = f"{base}/pass_at_k.parquet"
            if config["lens"]["enabled"]:
                inputs[f"{m}|{d}|lens_layers"] = f"{base}/lens_layers.parquet"
    return inputs


rule report:
    input:
        unpack(report_inputs),
    output:
        report(
            "reports/report.html",
            caption="../reports/captions/report.rst",
            category="Report",
        ),
    params:
        config=config,
    log:
        "logs/report.log",
    threads: 1
    script:
        "../workflow/scripts/report.py"
