import dataclasses

import polars as pl
import torch

from codeinterp.access.models import load_model, read_facts
from codeinterp.access.scoring import targets_from_frame
from codeinterp.analyses.activations import write_cache
from codeinterp.analyses.cache_parts import write_part
from codeinterp.errors import ConfigError
from codeinterp.workflow import resume_key, run_script


def main(smk):
    settings = smk.params.settings
    if not settings["enabled"]:
        raise ConfigError("activations.enabled is false, but a stage asked for the activation cache")
    # The forward is deterministic in eval mode; seeded anyway so nothing random can vary.
    torch.manual_seed(smk.params.seed)
    model, tokenizer = load_model(smk.input.model, compute=smk.params.get("compute"))
    targets = targets_from_frame(pl.read_parquet(smk.input.targets))
    common = dict(sites=list(settings["sites"]), positions=settings["positions"], dtype=settings["dtype"],
                  shard_tokens=settings["shard_tokens"], batch_size=settings["batch_size"],
                  pad_id=tokenizer.pad_token_id or 0)
    shard = smk.params.get("shard")
    if shard:  # one part of a sharded cache; the merge writes the index
        write_part(model, targets, smk.output[0], tuple(shard), **common)
        return
    write_cache(
        model, targets, smk.output[0], **common, meta=dataclasses.asdict(read_facts(smk.input.model)),
        # A killed run's finished shards are kept and resumed when nothing they depend on changed.
        resume=resume_key(targets, smk.input.model, dict(settings)),
    )


run_script(snakemake, main)  # noqa: F821
