"""Config errors are one line naming the key, from the library and from snakemake itself."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from codeinterp.config import validate_config
from codeinterp.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def tiny(**overrides) -> dict:
    cfg = {"models": {"t": {"source": "tiny-random"}}, "datasets": {"mbpp": {"limit": 2}}}
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            cfg.setdefault(section, {})[name] = value
        else:
            cfg[section] = value
    return cfg


def problem(cfg: dict, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, SCHEMA, tmp_path / "config.log")
    message = str(err.value)
    assert "\n" not in message
    return message


def test_valid_config_fills_defaults():
    cfg = tiny()
    validate_config(cfg, SCHEMA)
    assert cfg["generation"]["n"] == 1 and cfg["bootstrap"]["resamples"] == 1000


@pytest.mark.parametrize("cfg, expected", [
    (tiny(datasets={"mbpp": {"limitt": 2}}), "config: datasets.mbpp.limitt: unknown key (allowed: analyses, benchmark, ids, limit, max_depth, pairs, sample, sources, split)"),
    (tiny(colour="red"), "config: colour: unknown key"),
    (tiny(generation__n="two"), "config: generation.n: 'two' is not of type 'integer'"),
    (tiny(generation__backend="gpu"), "config: generation.backend: 'gpu' is not one of transformers, vllm, replay"),
    (tiny(generation__n=4), "config: generation.n: 4 samples per problem at temperature 0"),
    (tiny(generation__n=2, generation__temperature=0.8, evaluation={"ks": [1, 5]}), "config: evaluation.ks: k = 5 is larger than generation.n = 2"),
    (tiny(ablation={"kinds": ["zero"], "rank_by": "mean"}), "config: ablation.rank_by: 'mean' is not among ablation.kinds"),
    (tiny(generation__backend="vllm", ablation={"rank_by": "mean"}), "config: ablation.rank_by: mean ablation cannot be baked"),
    (tiny(models={"t": {"source": "tiny-random", "tiny": {"n_heads": 6, "n_kv_heads": 4}}}), "models.t.tiny"),
    (tiny(activations={"enabled": False}), "config: tuned_lens.enabled: tuned_lens reads cached residuals"),
    (tiny(activations={"sites": ["mlp"]}, tuned_lens={"enabled": False}), "config: probes.enabled: probes reads cached residuals"),
    (tiny(generation__backend="replay", generation__samples="/nonexistent/s.jsonl"), "config: generation.samples: no such file: /nonexistent/s.jsonl"),
    (tiny(datasets={"mbpp": {"analyses": ["lens", "probes"]}}), "config: datasets.mbpp.analyses: probes reads the output of activations; add activations to the list"),
    (tiny(models={"t": {"source": "tiny-random", "analyses": ["taylor", "pruned_eval"]}}), "config: models.t.analyses: pruned_eval reads the output of ablation"),
    (tiny(models={"t": {"source": "tiny-random", "analyses": ["lenz"]}}), "config: models.t.analyses.0: 'lenz' is not one of lens, activations"),
])
def test_one_line_naming_the_key(cfg, expected, tmp_path):
    message = problem(cfg, tmp_path)
    assert message.startswith(expected) or expected in message, message


def test_every_problem_goes_to_the_log(tmp_path):
    cfg = tiny(datasets={"mbpp": {"limitt": 2}}, colour="red")
    message = problem(cfg, tmp_path)
    log = (tmp_path / "config.log").read_text()
    assert "and 1 more" in message
    assert "datasets.mbpp.limitt" in log and "colour" in log


def test_snakemake_prints_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tiny(datasets={"mbpp": {"limitt": 2}})))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path / "w"),
                           "-n", "--cores", "1", "--configfile", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "working directory" not in ln]
    assert lines == ["codeinterp error: config: datasets.mbpp.limitt: unknown key (allowed: analyses, benchmark, ids, limit, max_depth, pairs, sample, sources, split)"]
