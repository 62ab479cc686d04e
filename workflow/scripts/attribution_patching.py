import polars as pl

from codeinterp.causal.attribution import compare, estimate
from codeinterp.causal.run import Stage
from codeinterp.workflow import run_script, with_ids, write_parquet


def main(smk):
    s, p = smk.params.settings, smk.params.patching
    stage = Stage(smk, "attribution_patching", s["max_pairs"])
    approx = estimate(stage.model, stage.pairs, kinds=list(p["sites"]), directions=list(p["directions"]),
                      corruptions=list(p["corruptions"]), noise_scale=float(p["noise_scale"]),
                      noise_samples=int(p["noise_samples"]), seed=int(smk.params.seed), batch_size=int(s["batch_size"]),
                      pad_id=stage.pad, qk_fix=bool(s.get("qk_fix", True)))
    exact = pl.read_parquet(smk.input.exact).filter(pl.col("level") == "pair")
    write_parquet(with_ids(compare(exact, approx, int(s["top_k"]), stage.boot), smk), smk.output.compare)
    stage.finish(approx.with_columns(pl.lit("pair").alias("level")))


run_script(snakemake, main)  # noqa: F821
