"""Static checks of the deployment files (the container and SLURM runs themselves are
scripts/container-test.sh and scripts/slurm-test.sh, run by .ci/run, never by pytest)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yte

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"


def profile(gpus: str | None = None) -> dict:
    saved = os.environ.pop("CODEINTERP_SLURM_GPUS", None)
    try:
        if gpus is not None:
            os.environ["CODEINTERP_SLURM_GPUS"] = gpus
        with PROFILE.open() as stream:
            return yte.process_yaml(stream, require_use_yte=True)
    finally:
        os.environ.pop("CODEINTERP_SLURM_GPUS", None)
        if saved is not None:
            os.environ["CODEINTERP_SLURM_GPUS"] = saved


@pytest.fixture(scope="module")
def rules() -> set[str]:
    # Every rule the Snakefile includes (`snakemake --list-rules` says the same but imports
    # the whole workflow: tens of seconds on a busy machine).
    snakefile = (REPO / "Snakefile").read_text()
    included = re.findall(r'^include:\s*"([^"]+)"', snakefile, re.M)
    names = set(re.findall(r"^\s*rule (\w+):", snakefile, re.M))
    for path in included:
        names |= set(re.findall(r"^\s*rule (\w+):", (REPO / path).read_text(), re.M))
    assert {"generate", "report", "circuit"} <= names
    return names - {"all"}


def test_profile_names_threads_memory_and_runtime_for_every_rule(rules):
    p = profile()
    assert p["executor"] == "slurm"
    assert set(p["set-threads"]) == rules
    assert set(p["set-resources"]) == rules
    for rule, res in p["set-resources"].items():
        assert {"mem_mb", "runtime"} <= set(res), rule
        assert isinstance(res["mem_mb"], int) and isinstance(res["runtime"], int), rule
    assert all(isinstance(n, int) and n >= 1 for n in p["set-threads"].values())
    assert {"mem_mb", "runtime"} <= set(p["default-resources"])


def test_gpus_are_off_by_default_and_one_variable_turns_them_on():
    off, on = profile(), profile("1")
    assert not any("gpu" in res or "slurm_extra" in res for res in off["set-resources"].values())
    gpu_rules = {rule for rule, res in on["set-resources"].items() if res.get("gpu") == 1}
    assert {"generate", "head_ablation", "activation_patching", "cache_activations"} <= gpu_rules
    assert not {"prepare_dataset", "evaluate", "report"} & gpu_rules
    for rule in gpu_rules:  # only the gpu entry is added
        assert {k: v for k, v in on["set-resources"][rule].items() if k != "gpu"} == off["set-resources"][rule]


def test_snakemake_reads_the_profile_into_per_rule_resources():
    # The profile goes through Snakemake's own parser: a typo in a key would fail here.
    from snakemake.profiles import ProfileConfigFileParser

    with PROFILE.open() as stream:
        parsed = ProfileConfigFileParser().parse(stream)
    assert "generate:mem_mb=40000" in parsed["set-resources"]
    assert "report=1" in parsed["set-threads"]


def test_container_and_ci_files_agree():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim$", dockerfile, re.M)
    assert "FROM ${BASE}" in dockerfile
    assert "graphviz" in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "results", "resources"} <= set(ignored)
    # The commands, not the comments: host tests, then the container, then SLURM against its run.
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if not line.lstrip().startswith("#")]
    order = [next(i for i, line in enumerate(ci) if f"bash scripts/{s}" in line)
             for s in ("test.sh", "container-test.sh", "slurm-test.sh")]
    assert order == sorted(order)
    for script in ("container-test.sh", "slurm-test.sh"):
        text = (REPO / "scripts" / script).read_text()
        assert "tests/configs/tiny.yaml" in text  # the tiny config itself, not a copy
        assert subprocess.run(["bash", "-n", str(REPO / "scripts" / script)]).returncode == 0
    assert "trap " in (REPO / "scripts" / "slurm-test.sh").read_text()

