def report_inputs(wc):
    inputs = {"models": [model_dir(m) for m in MODELS]}
    for m in MODELS:
        for d in DATASETS:
            for kind, path in analysis_outputs(m, d).items():
                inputs[f"{m}|{d}|{kind}"] = path
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
