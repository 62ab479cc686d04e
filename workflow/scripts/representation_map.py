import logging
import time
from importlib.metadata import version

import polars as pl

from codeinterp.analyses.activations import ActivationCache
from codeinterp.analyses.representation import (UMAP_SETTINGS, check_settings, code_tokens, maps, resid_layers,
                                                stratified_sample)
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import run_script, with_ids, write_json, write_parquet

log = logging.getLogger("codeinterp.representation_map")


def main(smk):
    t0 = time.perf_counter()
    settings, seed = smk.params.settings, int(smk.params.seed)
    cache = ActivationCache(smk.input.activations)
    layers = check_settings(settings["layers"], settings["methods"], resid_layers(cache.sites))
    frame = code_tokens(pl.read_parquet(smk.input.tokens), cache.rows)
    points = stratified_sample(frame, "lexical", int(settings["max_points"]), seed)
    rows = cache.select(tokens=points)
    log.info("%d of %d cached code tokens sampled; layers %s; methods %s", len(points), len(frame), layers,
             settings["methods"])
    table, summary = maps(points, lambda l: cache.read(f"resid.{l}", rows).numpy(), layers,
                          list(settings["methods"]), seed, Bootstrap.from_config(smk.params.config))
    write_parquet(with_ids(table, smk), smk.output.points)
    write_parquet(with_ids(summary, smk), smk.output.summary)
    about = {"seed": seed, "layers": layers, "methods": list(settings["methods"]),
             "max_points": int(settings["max_points"]), "stratified_by": "lexical",
             "n_candidate_tokens": len(frame), "n_points": len(points), "pca": {"svd_solver": "full", "scaled": False},
             "blas_threads": 1}
    if "umap" in settings["methods"]:
        about["umap"] = {**UMAP_SETTINGS, "random_state": seed, "version": version("umap-learn")}
    write_json(about, smk.output.settings)
    log.info("representation maps in %.1f s", time.perf_counter() - t0)


run_script(snakemake, main)  # noqa: F821
