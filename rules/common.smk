import os
import re
from pathlib import Path

import yaml

from codeinterp.benchmarks.datasets import check_selection
from codeinterp.config import validate_config
from codeinterp.errors import ConfigError

REPO = Path(workflow.basedir)
DATA_DIR = REPO / "data"


# A --configfile replaces the defaults instead of being merged into them: merging would
# add the default model and datasets to every user config.
if not config:
    with open(REPO / "config.yaml") as fh:
        config.update(yaml.safe_load(fh))
# One line naming the key on the terminal; every problem found in logs/config.log.
try:
    validate_config(config, REPO / "workflow" / "schemas" / "config.schema.yaml", "logs/config.log")
except ConfigError as _err:
    raise SystemExit(f"codeinterp error: {_err}") from None


def _key_sorted(obj):
    if isinstance(obj, dict):
        return {k: _key_sorted(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [_key_sorted(v) for v in obj]
    return obj


# Params are compared between runs to decide what reruns: the same settings written in
# another key order must not count as a change.
_canonical = _key_sorted(dict(config))
config.clear()
config.update(_canonical)

MODELS = sorted(config["models"])
# Made by rule finetune from a configured base model; every other model by prepare_model.
FINETUNED = [m for m in MODELS if config["models"][m]["source"] == "finetune"]
PREPARED = [m for m in MODELS if m not in FINETUNED]
# A pattern that matches no name when the list is empty.
FINETUNED_PATTERN = "|".join(map(re.escape, FINETUNED)) or "(?!)"
PREPARED_PATTERN = "|".join(map(re.escape, PREPARED)) or "(?!)"
DATASETS = sorted(config["datasets"])


def benchmark_of(dataset):
    return config["datasets"][dataset].get("benchmark", dataset)


BENCHMARKS = ("humaneval", "mbpp", "mbpp-sanitized", "livecodebench")
# Generated counterfactual tasks: clean/corrupted prompt pairs read by the causal analyses
# instead of generations, verdicts and targets.
TASKS = ("brackets", "variable_binding")

for _name in DATASETS:
    if benchmark_of(_name) not in BENCHMARKS + TASKS:
        raise SystemExit(
            f"codeinterp error: config: datasets.{_name}: unknown benchmark {benchmark_of(_name)!r} "
            f"(set `benchmark:` to one of {', '.join(BENCHMARKS + TASKS)})"
        )


def is_task(dataset):
    return benchmark_of(dataset) in TASKS


# Unknown problem ids or splits: one line now, rather than from prepare_dataset after other
# datasets' jobs have written output.
try:
    for _name in DATASETS:
        if benchmark_of(_name) in BENCHMARKS:
            check_selection(_name, config["datasets"][_name], DATA_DIR)
except ConfigError as _err:
    raise SystemExit(f"codeinterp error: {_err}") from None


BENCHMARK_DATASETS = [d for d in DATASETS if not is_task(d)]
TASK_DATASETS = [d for d in DATASETS if is_task(d)]


def datasets_of(model):
    """The datasets a model is analysed on: its `datasets:` list, else every configured one."""
    chosen = config["models"][model].get("datasets")
    return [d for d in DATASETS if chosen is None or d in chosen]


def benchmarks_of(model):
    return [d for d in datasets_of(model) if not is_task(d)]


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    dataset="|".join(map(re.escape, DATASETS)),


def runs(stage, model, dataset):
    """Whether analysis `stage` runs for this model on this dataset: on in the config, and in the
    model's and the dataset's `analyses:` lists when they have one."""
    if not config[stage]["enabled"]:
        return False
    for spec in (config["models"][model], config["datasets"][dataset]):
        chosen = spec.get("analyses")
        if chosen is not None and stage not in chosen:
            return False
    return True


def ablated_benchmarks(model):
    """The model's benchmark datasets with single-head ablation (what head_union reads)."""
    return [d for d in benchmarks_of(model) if runs("ablation", model, d)]


# Keys that choose what runs rather than what the model or dataset is: a change to them must
# not rerun prepare_model or prepare_dataset (and everything after).
SELECTION_KEYS = ("datasets", "analyses")


def model_spec(model):
    return {k: v for k, v in config["models"][model].items() if k not in SELECTION_KEYS}


def dataset_spec(dataset):
    spec = {k: v for k, v in config["datasets"][dataset].items() if k not in SELECTION_KEYS}
    spec["benchmark"] = benchmark_of(dataset)
    spec["seed"] = config["seed"]
    return spec


def generation_settings(model):
    return {**config["generation"], "chat": model_spec(model).get("chat"), "seed": config["seed"]}


def prompt_settings(model):
    """What shapes the analysis contexts: a change here reruns targets, not generation-only settings."""
    return {"mode": config["generation"]["mode"], "chat": model_spec(model).get("chat")}


def bootstrap_params():
    """What confidence intervals depend on (a config-shaped dict for Bootstrap.from_config)."""
    return {"bootstrap": config["bootstrap"], "seed": config["seed"]}


def vllm_python():
    """The vLLM interpreter, only when it is used (a moved clone must not rerun generation)."""
    if config["generation"]["backend"] != "vllm":
        return ""
    return config["generation"]["vllm_python"] or str(REPO / ".venv-vllm" / "bin" / "python")


def uses_generations():
    return config["targets"]["source"] in ("correct", "both", "generated")


# Stages whose hooks read attention probabilities: eager attention there, SDPA elsewhere.
PATTERN_STAGES = ("head_roles", "activation_patching", "attribution_patching", "circuit")


def compute_params(stage):
    """Device, compute dtype and attention kernel of one stage (codeinterp.access.compute)."""
    c = config["compute"]
    attention = c["attention"]
    if attention == "auto":
        attention = "eager" if stage in PATTERN_STAGES else "sdpa"
    return {"device": c["device"], "dtype": c["dtypes"].get(stage, c["dtype"]), "attention": attention,
            "batch_tokens": c["batch_tokens"]}


def shard_files(name, stage, suffix=".parquet"):
    """The shard outputs that the merge reads (results/{model}/{dataset}/shards/{name}-{i}{suffix})."""
    n = config["shards"][stage]
    return [f"results/{{model}}/{{dataset}}/shards/{name}-{i}{suffix}" for i in range(n)]


def model_dir(model):
    return f"resources/models/{model}"


def analysis_outputs(model, dataset):
    """Report inputs of one model and dataset, keyed by kind; which ones depends on the switches."""
    base = f"results/{model}/{dataset}"
    if is_task(dataset):
        return task_outputs(model, dataset)
    on = lambda stage: runs(stage, model, dataset)
    outs = {"verdicts": f"{base}/verdicts.parquet", "pass_at_k": f"{base}/pass_at_k.parquet"}
    if on("lens"):
        outs["lens_layers"] = f"{base}/lens_layers.parquet"
    outs.update(cache_outputs(model, dataset))
    if on("failure_probe"):
        outs["failure_probe"] = f"{base}/failure/failure_probe.parquet"
    if on("ablation"):
        outs["head_matrix"] = f"{base}/ablation/head_matrix.parquet"
        if config["ablation"]["knockout"]:
            outs["knockout"] = f"{base}/ablation/knockout.parquet"
    if on("taylor"):
        outs["taylor_history"] = f"{base}/pruning/taylor_history.parquet"
        if on("ablation"):
            outs["taylor_vs_exact"] = f"{base}/pruning/taylor_vs_exact.parquet"
            outs["taylor_vs_exact_heads"] = f"{base}/pruning/taylor_vs_exact_heads.parquet"
            if on("pruned_eval"):
                outs["pruned_eval"] = f"{base}/pruning/pruned_eval.parquet"
            if on("subset_search"):
                outs["subset_compare"] = f"{base}/subset_search/compare.parquet"
    return outs


def cache_outputs(model, dataset):
    """The activation cache, the token table, and the stages that read them."""
    if not runs("activations", model, dataset):
        return {}
    base = f"results/{model}/{dataset}"
    outs = {"tokens": f"{base}/tokens.parquet", "activations": f"{base}/activations"}
    if runs("tuned_lens", model, dataset):
        outs["tuned_training"] = f"{base}/lens/tuned_training.parquet"
    if runs("probes", model, dataset):
        outs["probes"] = f"{base}/probes/probes.parquet"
        outs["probe_projection"] = f"{base}/probes/projection.parquet"
    if runs("representation_map", model, dataset):
        outs["representation_map"] = f"{base}/representation/points.parquet"
    return outs


def tuned_lens_of(model, dataset):
    """The tuned lens's translators of this model on this benchmark dataset, when trained."""
    if runs("tuned_lens", model, dataset) and runs("activations", model, dataset):
        return [f"results/{model}/{dataset}/lens/tuned_lens.safetensors"]
    return []


def task_outputs(model, dataset):
    """The causal analyses of one generated task (codeinterp.causal)."""
    base = f"results/{model}/{dataset}"
    on = lambda stage: runs(stage, model, dataset)
    outs = {"pairs": f"{base}/pairs.parquet"}
    if on("task_accuracy"):
        outs["task_accuracy"] = f"{base}/causal/task_accuracy.parquet"
    if on("task_lens"):
        outs["task_lens"] = f"{base}/causal/task_lens.parquet"
    if on("sublayer_ablation"):
        outs["sublayer_ablation"] = f"{base}/causal/sublayer_ablation.parquet"
    if on("head_roles") and benchmark_of(dataset) == "brackets":
        outs["head_roles"] = f"{base}/causal/head_roles.parquet"
    if on("activation_patching"):
        outs["activation_patching"] = f"{base}/patching/activation_patching.parquet"
        if on("attribution_patching"):
            outs["attribution_patching"] = f"{base}/patching/attribution_patching.parquet"
            outs["attribution_vs_exact"] = f"{base}/patching/attribution_vs_exact.parquet"
    if on("circuit"):
        outs["circuit_curve"] = f"{base}/circuit/faithfulness.parquet"
        outs["circuit_edges"] = f"{base}/circuit/edges.parquet"
        outs["circuit_svg"] = f"{base}/circuit/circuit.svg"
    return outs


def tuned_lens_for_tasks(wc):
    """The tuned lens of the same model trained on its first benchmark dataset that has one, if any."""
    for d in benchmarks_of(wc.model):
        if tuned_lens_of(wc.model, d):
            return tuned_lens_of(wc.model, d)
    return []


def comparison_outputs():
    """Report key "{a} vs {b}|all|compare_weights" -> the pair's table."""
    return {f"{a} vs {b}|all|compare_weights": f"results/comparisons/{a}__{b}/weights.parquet"
            for a, b in config["comparisons"]["weights"]}


def finetune_outputs():
    """Report key "{model}|finetune|finetune_<kind>" -> the variant's training tables."""
    return {f"{m}|finetune|finetune_{kind}": f"results/{m}/finetune/{name}"
            for m in FINETUNED
            for kind, name in (("heldout", "heldout.parquet"), ("training", "training.parquet"),
                               ("record", "finetune.json"))}


def compare_models_files(a, b):
    """"kind|side|dataset" -> table that compare_models reads, for the analyses that are on."""
    files = {}
    shared = [d for d in datasets_of(a) if d in datasets_of(b)]
    both = lambda stage, d: runs(stage, a, d) and runs(stage, b, d)
    for side, m in (("a", a), ("b", b)):
        for d in [d for d in shared if not is_task(d)]:
            base = f"results/{m}/{d}"
            files[f"pass_at_k|{side}|{d}"] = f"{base}/pass_at_k.parquet"
            if both("lens", d):
                files[f"lens|{side}|{d}"] = f"{base}/lens_layers.parquet"
            if both("ablation", d):
                files[f"deltas|{side}|{d}"] = f"{base}/ablation/head_deltas.parquet"
            if both("taylor", d):
                files[f"taylor|{side}|{d}"] = f"{base}/pruning/taylor_targets.parquet"
        for d in [d for d in shared if is_task(d) and both("circuit", d)]:
            files[f"circuit|{side}|{d}"] = f"results/{m}/{d}/circuit/edges.parquet"
    return files


def compare_models_outputs():
    """Report key "{a} vs {b}|all|compare_<kind>" -> the pair's tables."""
    outs = {}
    for a, b in config["comparisons"]["models"]:
        base = f"results/comparisons/{a}__{b}/models"
        outs[f"{a} vs {b}|all|compare_models"] = f"{base}/overlap.parquet"
        for kind in ("heads", "lens", "pass_at_k", "circuits"):
            outs[f"{a} vs {b}|all|compare_{kind}"] = f"{base}/{kind}.parquet"
    return outs


def head_union_outputs():
    """Report key "{model}|all|head_union" -> the model's table (ablation on, two benchmarks or more)."""
    if not config["comparisons"]["head_union"]:
        return {}
    return {f"{m}|all|head_union": f"results/{m}/heads_union.parquet" for m in MODELS
            if len(ablated_benchmarks(m)) > 1}


def final_outputs():
    outs = ["reports/report.html"]
    outs.extend(finetune_outputs().values())
    for m in MODELS:
        for d in datasets_of(m):
            outs.extend(analysis_outputs(m, d).values())
    outs.extend(comparison_outputs().values())
    outs.extend(compare_models_outputs().values())
    outs.extend(head_union_outputs().values())
    return outs


def targets_inputs(wc):
    inputs = {"model": model_dir(wc.model), "problems": f"results/datasets/{wc.dataset}/problems.parquet"}
    if uses_generations():
        inputs["generations"] = f"results/{wc.model}/{wc.dataset}/generations.parquet"
        inputs["verdicts"] = f"results/{wc.model}/{wc.dataset}/verdicts.parquet"
    return inputs


def report_inputs(wc):
    inputs = {"models": [model_dir(m) for m in MODELS]}
    for m in MODELS:
        for d in datasets_of(m):
            outs = analysis_outputs(m, d)
            for kind, path in outs.items():
                inputs[f"{m}|{d}|{kind}"] = path
            if not is_task(d) and set(outs) - {"verdicts", "pass_at_k"}:
                inputs[f"{m}|{d}|targets"] = f"results/{m}/{d}/targets.parquet"
    inputs.update(comparison_outputs())
    inputs.update(finetune_outputs())
    inputs.update(compare_models_outputs())
    inputs.update(head_union_outputs())
    return inputs
