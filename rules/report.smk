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
    conda:
        "../envs/codeinterp.yaml"
    log:
        "logs/report.log",
    threads: 1
    script:
        "../workflow/scripts/report.py"
