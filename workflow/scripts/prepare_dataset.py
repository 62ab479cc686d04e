from codeinterp.benchmarks.counterfactual import TASKS, generate
from codeinterp.benchmarks.datasets import load_problems, select_problems, write_problems
from codeinterp.workflow import run_script, write_parquet


def main(smk):
    spec = smk.params.spec
    if spec["benchmark"] in TASKS:  # generated clean/corrupted pairs, not benchmark problems
        write_parquet(generate(spec, smk.params.data_dir, smk.wildcards.dataset), smk.output[0])
        return
    problems = load_problems(spec["benchmark"], smk.params.data_dir)
    chosen = select_problems(
        problems, limit=spec.get("limit"), ids=spec.get("ids"), sample=spec.get("sample"),
        seed=spec["seed"], split=spec.get("split"),
    )
    write_problems(chosen, smk.output[0])


run_script(snakemake, main)  # noqa: F821
