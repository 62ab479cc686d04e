from codeinterp.causal.patching import summarise, sweep
from codeinterp.causal.run import Stage
from codeinterp.sharding import item_range
from codeinterp.workflow import run_script


def main(smk):
    s = smk.params.settings
    stage = Stage(smk, "activation_patching", s["max_pairs"])
    pairs = stage.pairs
    shard = smk.params.get("shard")
    if shard:  # a contiguous run of the batches of pairs one job would make (codeinterp.sharding)
        part = item_range(len(pairs), int(s["batch_size"]), shard[1], shard[0])
        pairs = pairs[part.start:part.stop]
    per_pair = sweep(stage.model, pairs, kinds=list(s["sites"]), directions=list(s["directions"]),
                     corruptions=list(s["corruptions"]), window=int(s["window"]), noise_scale=float(s["noise_scale"]),
                     noise_samples=int(s["noise_samples"]), seed=int(smk.params.seed), batch_size=int(s["batch_size"]),
                     tokenizer=stage.tokenizer, pad_id=stage.pad)
    # A shard writes its pairs' rows; the merge summarises all of them.
    stage.finish(per_pair if shard else summarise(per_pair, stage.boot))


run_script(snakemake, main)  # noqa: F821
