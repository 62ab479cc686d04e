from codeinterp.causal.patching import summarise, sweep
from codeinterp.causal.run import Stage
from codeinterp.workflow import run_script


def main(smk):
    s = smk.params.settings
    stage = Stage(smk, "activation_patching", s["max_pairs"])
    per_pair = sweep(stage.model, stage.pairs, kinds=list(s["sites"]), directions=list(s["directions"]),
                     corruptions=list(s["corruptions"]), window=int(s["window"]), noise_scale=float(s["noise_scale"]),
                     noise_samples=int(s["noise_samples"]), seed=int(smk.params.seed), batch_size=int(s["batch_size"]),
                     tokenizer=stage.tokenizer, pad_id=stage.pad)
    stage.finish(summarise(per_pair, stage.boot))


run_script(snakemake, main)  # noqa: F821
