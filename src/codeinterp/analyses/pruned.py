"""The `pruned_eval` stage: generate and evaluate again with heads removed, per pruning regime.

It reuses the `generate` and `evaluate` machinery: the transformers backend masks heads with
the same hook the analyses use; the vLLM backend gets a pruned checkpoint whose output
projection columns of the removed heads are zeroed (same dtype as the original), which is
the same model (tests check the hook against zeroed weights).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from codeinterp.benchmarks.evaluation import evaluate_generations
from codeinterp.benchmarks.generation import Settings, run_generation
from codeinterp.access.heads import mask_from_heads, zero_heads_in_weights
from codeinterp.access.models import load_model, save_canonical
from codeinterp.analyses.pruning import regime_heads
from codeinterp.benchmarks.sandbox import Limits
from codeinterp.uncertainty import Bootstrap, pass_at_k_summary
from codeinterp.errors import ConfigError

log = logging.getLogger(__name__)

SUMMARY_SCHEMA = {
    "regime": pl.Utf8,
    "n_removed": pl.Int64,
    "heads": pl.List(pl.Utf8),
    "n_problems": pl.Int64,
    "n_samples": pl.Int64,
    "n_passed": pl.Int64,
}


def regime_label(regime: dict) -> str:
    params = ",".join(f"{k}={regime[k]}" for k in sorted(regime) if k != "kind")
    return f"{regime['kind']}({params})"


def write_pruned_checkpoint(model_dir: str | Path, heads: list[tuple[int, int]], out_dir: str | Path) -> None:
    """A copy of the canonical model with the removed heads' output columns zeroed."""
    model, tokenizer = load_model(model_dir)
    zero_heads_in_weights(model, heads)
    save_canonical(model, tokenizer, out_dir, source=f"pruned:{Path(model_dir).name}")


def _generate(problems, model_dir, settings, backend, vllm_python, heads, fill=None, compute=None):
    if backend == "vllm":
        if fill is not None:
            raise ConfigError("a pruned vLLM checkpoint can only zero heads; mean ablation needs the transformers backend")
        with tempfile.TemporaryDirectory() as tmp:
            pruned_dir = Path(tmp) / "model"
            write_pruned_checkpoint(model_dir, heads, pruned_dir)
            return run_generation(problems, pruned_dir, settings, "vllm", vllm_python)
    model, _ = load_model(model_dir)
    keep = mask_from_heads(model, heads)
    return run_generation(problems, model_dir, settings, "transformers", keep=keep, fill=fill, compute=compute)


def _summary(label: str, heads: list, verdicts: pl.DataFrame, per_problem: pl.DataFrame, boot: Bootstrap) -> pl.DataFrame:
    row = {
        "regime": label,
        "n_removed": len(heads),
        "heads": [f"L{l}H{h}" for l, h in heads],
        "n_problems": len(per_problem),
        "n_samples": len(verdicts),
        "n_passed": int((verdicts["status"] == "passed").sum()),
    }
    summary = pl.DataFrame([row], schema=SUMMARY_SCHEMA)
    return summary.hstack(pass_at_k_summary(per_problem, boot)) if len(per_problem) else summary


def pruned_eval(problems: pl.DataFrame, model_dir: str | Path, settings: Settings, backend: str, vllm_python: str | None,
                limits: Limits, workers: int, ks: list[int], regimes: list[dict], delta: np.ndarray,
                history: list[dict] | None, fill=None, regenerate_baseline: bool = False,
                boot: Bootstrap | None = None, compute: dict | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Verdicts of every regime (long table) and pass@k per regime (generation with the
    `compute` settings: device, dtype, attention).

    Removed heads are zeroed, or replaced by `fill` (their mean outputs) for mean ablation.
    With `regenerate_baseline` the unpruned model is regenerated too (regime "none"), for
    when the main evaluation's samples are not this model's own (replay).
    """
    if backend == "replay":
        raise ValueError("pruned_eval needs a model backend (transformers or vllm), not replay")
    boot = boot or Bootstrap()
    plan = ([("none", [])] if regenerate_baseline else []) + [
        (regime_label(r), regime_heads(delta, r, history)) for r in regimes
    ]
    verdict_frames, summaries = [], []
    for label, heads in plan:
        log.info("regime %s: removing %d heads", label, len(heads))
        gens = _generate(problems, model_dir, settings, backend, vllm_python, heads, fill if heads else None, compute)
        verdicts, per_problem = evaluate_generations(problems, gens, limits, workers, ks)
        verdict_frames.append(verdicts.with_columns(regime=pl.lit(label)))
        summaries.append(_summary(label, heads, verdicts, per_problem, boot))
    return pl.concat(verdict_frames, how="diagonal"), pl.concat(summaries, how="diagonal")


def baseline_row(pass_at_k: pl.DataFrame, verdicts: pl.DataFrame, boot: Bootstrap | None = None) -> pl.DataFrame:
    """The unpruned model's row, from the main evaluation (nothing recomputed)."""
    return _summary("none", [], verdicts, pass_at_k, boot or Bootstrap())
