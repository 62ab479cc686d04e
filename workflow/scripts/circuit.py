from pathlib import Path

from codeinterp.causal.circuit import discover
from codeinterp.causal.draw import circuit_svg
from codeinterp.causal.run import Stage
from codeinterp.workflow import run_script, with_ids, write_parquet


def main(smk):
    s = smk.params.settings
    stage = Stage(smk, "circuit", s["max_pairs"])
    curve, edges = discover(stage.model, stage.pairs, steps=int(s["ig_steps"]), target=float(s["faithfulness"]),
                            sizes=int(s["sizes"]), batch_size=int(s["batch_size"]), boot=stage.boot, pad_id=stage.pad)
    chosen = curve.filter("chosen").row(0, named=True)
    title = (f"{smk.wildcards.model} / {smk.wildcards.dataset}: {chosen['edges']} edges, "
             f"faithfulness {chosen['faithfulness']:.3g} (n = {chosen['n']} pairs)")
    svg = Path(smk.output.svg)
    tmp = svg.with_name(svg.name + ".tmp")
    tmp.write_text(circuit_svg(edges, title))
    write_parquet(with_ids(edges, smk), smk.output.edges)
    tmp.replace(svg)
    stage.finish(curve)


run_script(snakemake, main)  # noqa: F821
