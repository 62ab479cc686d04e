"""Config validation for the workflow: one readable line per problem, the full story in a log.

The schema (workflow/schemas/config.schema.yaml) checks types and keys; `check_semantics`
checks what a schema cannot say (settings that contradict each other). Both raise
`ConfigError` with one line that names the key, so a user sees what to fix instead of a
60-line schema dump; the long form goes to the log file.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from codeinterp.errors import ConfigError

__all__ = ["check_schema", "check_semantics", "validate_config"]


def _key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def _one_line(error) -> str:
    """A jsonschema ValidationError as `key.path: problem`."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in error.schema.get("properties", {}))
        if extra and error.schema.get("additionalProperties") is False:
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            return f"{_key_path(path + [extra[0]])}: unknown key{hint}"
    if error.validator == "required":
        return f"{_key_path(path)}: {error.message}"
    if error.validator == "enum":
        return f"{_key_path(path)}: {error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    return f"{_key_path(path)}: {error.message}"


def check_schema(config: dict, schema: dict) -> list[str]:
    """Every schema violation as one line each, the most relevant first (empty when valid)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    validator = Draft202012Validator(schema)
    errors = list(validator.iter_errors(config))
    if not errors:
        return []
    first = best_match(errors)
    rest = [e for e in errors if e is not first]
    return [_one_line(first)] + [_one_line(e) for e in rest]


def _tiny_problems(name: str, spec: dict) -> list[str]:
    from codeinterp.access.models import check_tiny_spec

    try:
        check_tiny_spec(spec.get("tiny", {}), f"models.{name}.tiny")
    except ConfigError as err:
        return [str(err)]
    return []


def check_semantics(config: dict) -> list[str]:
    """Contradictions between settings (config with defaults filled in), one line each."""
    problems = []
    gen, ev, abl = config["generation"], config["evaluation"], config["ablation"]
    if gen["n"] > 1 and gen["temperature"] == 0:
        problems.append(
            f"generation.n: {gen['n']} samples per problem at temperature 0 are all the same greedy answer; "
            "set generation.temperature > 0 or n: 1"
        )
    too_big = [k for k in ev["ks"] if k > gen["n"]]
    if too_big:
        problems.append(
            f"evaluation.ks: k = {too_big[0]} is larger than generation.n = {gen['n']} "
            "(pass@k needs at least k samples per problem)"
        )
    if abl["enabled"] and abl["rank_by"] not in abl["kinds"]:
        problems.append(f"ablation.rank_by: {abl['rank_by']!r} is not among ablation.kinds {abl['kinds']}")
    if (abl["rank_by"] == "mean" and config["pruned_eval"]["enabled"] and gen["backend"] == "vllm"):
        problems.append(
            "ablation.rank_by: mean ablation cannot be baked into a pruned vLLM checkpoint (o_proj has no bias "
            "to hold the mean); use generation.backend: transformers or rank_by: zero"
        )
    if gen["backend"] == "replay" and gen.get("samples") and not Path(gen["samples"]).is_file():
        # Checked here, before any job: found missing by generate, it would follow model and dataset preparation.
        problems.append(f"generation.samples: no such file: {gen['samples']}")
    problems += _cache_readers(config)
    for name, spec in sorted(config["models"].items()):
        if spec.get("source") == "tiny-random":
            problems += _tiny_problems(name, spec)
    problems += _analyses_problems(config)
    problems += _finetune_problems(config)
    problems += _comparison_problems(config)
    return problems


def _finetune_defaults(config: dict) -> None:
    # Only finetune models get the training settings' defaults: filled into every model, they
    # would change every other model's spec (and rerun its prepare_model).
    models = config.get("models")
    if isinstance(models, dict):
        for spec in models.values():
            if isinstance(spec, dict) and spec.get("source") == "finetune":
                spec.setdefault("finetune", {})


def _finetune_problems(config: dict) -> list[str]:
    problems, models = [], config["models"]
    for name, spec in sorted(models.items()):
        unknown = [d for d in spec.get("datasets") or [] if d not in config["datasets"]]
        if unknown:
            problems.append(f"models.{name}.datasets: {unknown[0]!r} is not a configured dataset "
                            f"({', '.join(sorted(config['datasets']))})")
        if spec["source"] != "finetune":
            if "base" in spec or "finetune" in spec:
                problems.append(f"models.{name}: base and finetune are settings of source: finetune models")
            continue
        base = spec.get("base")
        if base is None:
            problems.append(f"models.{name}.base: required for source: finetune (the configured model it trains)")
        elif base not in models:
            problems.append(f"models.{name}.base: {base!r} is not a configured model ({', '.join(sorted(models))})")
        elif models[base]["source"] == "finetune":
            problems.append(f"models.{name}.base: {base!r} is itself a finetune model; train from its base instead")
        ft = spec["finetune"]
        if ft["split"] is not None and ft["split"] == ft["heldout_split"]:
            problems.append(f"models.{name}.finetune.heldout_split: {ft['split']!r} is also the training split")
    return problems


def _comparison_problems(config: dict) -> list[str]:
    problems, models = [], config["models"]
    for key in ("weights", "models"):
        for i, pair in enumerate(config["comparisons"][key]):
            unknown = [m for m in pair if m not in models]
            if unknown:
                problems.append(f"comparisons.{key}[{i}]: {unknown[0]!r} is not a configured model "
                                f"({', '.join(sorted(models))})")
            elif pair[0] == pair[1]:
                problems.append(f"comparisons.{key}[{i}]: a model compared with itself ({pair[0]})")
    return problems


# What each analysis reads from another (rules/common.smk nests their outputs the same way).
ANALYSIS_NEEDS = {"tuned_lens": ("activations",), "probes": ("activations",), "representation_map": ("activations",),
                  "pruned_eval": ("ablation", "taylor"), "subset_search": ("ablation", "taylor"),
                  "attribution_patching": ("activation_patching",)}


def _analyses_problems(config: dict) -> list[str]:
    """A model's or dataset's `analyses:` list must hold what its analyses read."""
    problems = []
    for section in ("models", "datasets"):
        for name, spec in sorted(config[section].items()):
            chosen = spec.get("analyses")
            for stage in chosen or []:
                missing = [n for n in ANALYSIS_NEEDS.get(stage, ()) if n not in chosen]
                if missing:
                    problems.append(f"{section}.{name}.analyses: {stage} reads the output of {missing[0]}; "
                                    f"add {missing[0]} to the list")
    return problems


def _cache_readers(config: dict) -> list[str]:
    """Stages that read cached residuals need the cache to hold them."""
    cache = config["activations"]
    has_resid = cache["enabled"] and "resid" in cache["sites"]
    return [
        f"{stage}.enabled: {stage} reads cached residuals; set activations.enabled: true with resid in "
        f"activations.sites, or {stage}.enabled: false"
        for stage in ("tuned_lens", "probes", "representation_map")
        if config[stage]["enabled"] and not has_resid
    ]


def validate_config(config: dict, schema_path: str | Path, log_path: str | Path | None = None) -> None:
    """Schema, then semantics; raises ConfigError with the first problem as one line.

    Defaults are not filled in here (Snakemake's `validate` does that after this passed).
    Every problem found is written to `log_path`, so nothing is lost by showing one.
    """
    schema = yaml.safe_load(Path(schema_path).read_text())
    _finetune_defaults(config)
    problems = check_schema(config, schema)
    if not problems:
        from snakemake.utils import validate

        validate(config, str(schema_path))  # fills in defaults
        problems = check_semantics(config)
    if not problems:
        return
    if log_path is not None:
        log = Path(log_path)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("config problems:\n" + "".join(f"- {p}\n" for p in problems))
    more = f" (and {len(problems) - 1} more, see {log_path})" if len(problems) > 1 and log_path else ""
    raise ConfigError(f"config: {problems[0]}{more}")
