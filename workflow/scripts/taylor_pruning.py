import json
from pathlib import Path

import polars as pl

from codeinterp.models import load_model
from codeinterp.pruning import history_frame, taylor_pruning
from codeinterp.scoring import targets_from_frame
from codeinterp.workflow import run_script, with_ids, write_json, write_parquet


def main(smk):
    t = smk.params.taylor
    model, tokenizer = load_model(smk.input.model)
    targets = targets_from_frame(pl.read_parquet(smk.input.targets))
    # An interrupted run leaves its checkpoint (outside Snakemake's outputs); resume from it.
    checkpoint = Path(smk.params.checkpoint)
    previous = json.loads(checkpoint.read_text()) if checkpoint.exists() else None
    if previous and previous.get("settings") != dict(t):
        previous = None
    history = []
    if targets:
        history = taylor_pruning(
            model, targets, t["batch_size"], t["iterations"], t["prune_per_iter"],
            history=previous["history"] if previous else None,
            on_step=lambda h: write_json({"settings": dict(t), "history": h}, checkpoint),
            pad_id=tokenizer.pad_token_id or 0,
        )
    write_json({"settings": dict(t), "history": history}, smk.output.history)
    write_parquet(with_ids(history_frame(history), smk), smk.output.table)
    checkpoint.unlink(missing_ok=True)


run_script(snakemake, main)  # noqa: F821
