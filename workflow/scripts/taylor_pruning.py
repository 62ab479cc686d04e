import json
import logging
from pathlib import Path

import polars as pl

from codeinterp.access.models import load_model
from codeinterp.analyses.pruning import TARGET_SCORES_SCHEMA, history_frame, taylor_pruning, taylor_target_scores
from codeinterp.access.scoring import targets_from_frame
from codeinterp.uncertainty import Bootstrap
from codeinterp.progress import Progress
from codeinterp.workflow import ablation_fill, resume_key, run_script, with_ids, write_json, write_parquet

log = logging.getLogger("taylor_pruning")


def main(smk):
    t, kind = dict(smk.params.taylor), smk.params.rank_by
    model, tokenizer = load_model(smk.input.model, compute=smk.params.get("compute"))
    targets = targets_from_frame(pl.read_parquet(smk.input.targets))
    settings = {**t, "ablation": kind}
    key = resume_key(targets, smk.input.model, settings)
    # An interrupted run leaves its checkpoint (outside Snakemake's outputs); resume from it
    # only when it was computed from exactly these targets, model and settings.
    checkpoint = Path(smk.params.checkpoint)
    previous = json.loads(checkpoint.read_text()) if checkpoint.exists() else None
    if previous and previous.get("key") != key:
        log.warning("discarding stale checkpoint %s (targets, model or settings changed)", checkpoint)
        previous = None
    history = []
    per_target = pl.DataFrame(schema=TARGET_SCORES_SCHEMA)
    if targets:
        fill = ablation_fill(model, targets, kind, t["batch_size"])
        progress = Progress("taylor_pruning", t["iterations"] + 1, log, "iterations")
        if previous:
            progress.advance(len(previous["history"]), resumed=True)

        def on_step(h):
            write_json({"key": key, "settings": settings, "history": h}, checkpoint)
            progress.advance()

        history = taylor_pruning(
            model, targets, t["batch_size"], t["iterations"], t["prune_per_iter"],
            history=previous["history"] if previous else None, on_step=on_step,
            fill=fill, pad_id=tokenizer.pad_token_id or 0,
        )
        progress.close()
        per_target = taylor_target_scores(model, targets, t["batch_size"], fill, tokenizer.pad_token_id or 0)
    write_json({"key": key, "settings": settings, "history": history}, smk.output.history)
    write_parquet(per_target, smk.output.per_target)
    write_parquet(with_ids(history_frame(history, Bootstrap.from_config(smk.params.config)), smk), smk.output.table)
    checkpoint.unlink(missing_ok=True)


run_script(snakemake, main)  # noqa: F821
