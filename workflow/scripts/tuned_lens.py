"""Train the tuned lens on the cached residuals of a training split of problems and measure its
KL to the model's output, and the logit lens's, on both splits. Timings go to the log and a
separate JSON (never into the result table)."""

import logging
import time

import polars as pl
import torch

from codeinterp.analyses.activations import ActivationCache
from codeinterp.analyses.tuned_lens import (
    both_kl, frozen_readout, ridge_init, trained_layers, save_translators, split_problems, train_translator, training_summary,
)
from codeinterp.access.architectures import layout
from codeinterp.access.models import load_model
from codeinterp.errors import ConfigError
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import run_script, write_json, write_parquet

log = logging.getLogger("codeinterp.tuned_lens")
EMPTY_TOKENS = {"problem_id": pl.Utf8, "layer": pl.Int64, "split": pl.Utf8, "logit_kl": pl.Float64, "tuned_kl": pl.Float64}


def read(cache, site: str, rows: pl.DataFrame) -> torch.Tensor:
    return cache.read(site, rows["row"].to_numpy())


def splits(cache, table: pl.DataFrame, cfg: dict, seed: int) -> dict[str, pl.DataFrame]:
    """Cache rows of each split (problems split by a seeded draw), with their problem_id."""
    rows = cache.rows.join(table.select("target_id", "problem_id"), on="target_id", how="inner").sort("row")
    problems = sorted(rows["problem_id"].unique().to_list())
    if len(problems) < 2:
        return {}
    train, test = split_problems(problems, cfg["test_fraction"], seed)
    return {"train": rows.filter(pl.col("problem_id").is_in(train)), "heldout": rows.filter(pl.col("problem_id").is_in(test))}


def main(smk):
    cfg, seed = smk.params.tuned, int(smk.params.seed)
    model, _ = load_model(smk.input.model, compute=smk.params.get("compute"))
    readout = frozen_readout(model)
    n = len(layout(model).blocks)
    cache = ActivationCache(smk.input.activations)
    missing = [f"resid.{l}" for l in range(n + 1) if f"resid.{l}" not in cache.sites]
    if missing:
        raise ConfigError(f"tuned_lens needs activations.sites to include resid (cache lacks {', '.join(missing[:3])})")
    parts = splits(cache, pl.read_parquet(smk.input.targets), cfg, seed)
    if not parts:
        # A dataset without two problems' targets (e.g. LiveCodeBench under canonical targets) has
        # nothing to split: empty outputs, and the report shows no tuned lens for it.
        log.warning("tuned_lens: fewer than two problems in the activation cache; no translator is trained")
        write_parquet(training_summary(pl.DataFrame(schema=EMPTY_TOKENS), None), smk.output.training)
        save_translators({}, smk.output.translators, {"heldout_problems": [], "train_problems": [], "seed": seed,
                                                      "config": cfg, "n_layers": n, "note": "fewer than two problems"})
        write_json({"layers": {}, "note": "fewer than two problems"}, smk.output.timing)
        return
    final = {s: read(cache, f"resid.{n}", rows) for s, rows in parts.items()}
    translators, per_token, timing = {}, [], {}
    for layer in trained_layers(cfg["layers"], n):
        x = {s: read(cache, f"resid.{layer}", rows) for s, rows in parts.items()}
        start = time.perf_counter()
        init = ridge_init(x["train"], final["train"], cfg["ridge_alpha"]) if cfg["warm_start"] == "ridge" else None
        translator, history = train_translator(
            readout, x["train"], final["train"], steps=cfg["steps"], tokens_per_step=cfg["tokens_per_step"],
            lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"], clip=cfg["clip"],
            seed=seed + layer, init=init)
        seconds = time.perf_counter() - start
        translators[layer] = translator
        for s, rows in parts.items():
            logit_kl, tuned_kl = both_kl(readout, x[s], final[s], translator)
            per_token.append(rows.select("problem_id").with_columns(
                layer=pl.lit(layer, pl.Int64), split=pl.lit(s),
                logit_kl=pl.Series(logit_kl.double().numpy()), tuned_kl=pl.Series(tuned_kl.double().numpy())))
        evaluated = time.perf_counter() - start - seconds
        step_tokens = min(cfg["tokens_per_step"], len(x["train"]))
        timing[str(layer)] = {"train_seconds": round(seconds, 3), "eval_seconds": round(evaluated, 3),
                              "train_tokens": len(x["train"]), "heldout_tokens": len(x["heldout"]),
                              "tokens_per_step": step_tokens, "steps": cfg["steps"],
                              "first_loss": history[0], "last_loss": history[-1]}
        log.info("layer %d: %d steps x %d tokens (of %d train tokens) in %.1f s; train KL %.4g -> %.4g; "
                 "evaluation on %d + %d tokens in %.1f s", layer, cfg["steps"], step_tokens, len(x["train"]), seconds,
                 history[0], history[-1], len(x["train"]), len(x["heldout"]), evaluated)
    tokens = pl.concat(per_token)
    write_parquet(training_summary(tokens, Bootstrap.from_config(smk.params.config)), smk.output.training)
    save_translators(translators, smk.output.translators, {
        "heldout_problems": sorted(parts["heldout"]["problem_id"].unique().to_list()),
        "train_problems": sorted(parts["train"]["problem_id"].unique().to_list()),
        "seed": seed, "config": cfg, "n_layers": n})
    write_json({"layers": timing, "threads": torch.get_num_threads()}, smk.output.timing)


run_script(snakemake, main)  # noqa: F821
