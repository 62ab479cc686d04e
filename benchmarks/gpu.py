"""The analyses on a CUDA device against float32 on the CPU, on SmolLM2-135M and a tiny model.

Run from the repository root on a machine with CUDA (torch with CUDA: docs/deployment.md,
envs/cuda.txt; vLLM for GPUs: envs/vllm.txt):

    python benchmarks/gpu.py [--model-dir DIR] [--n-targets N] [--dtypes bfloat16,float32] [--vllm-python PY]

For each model and compute dtype it times the logit lens, the exact head sweep (zero
ablation), the Taylor scores and greedy generation (transformers, and vLLM when a vLLM
interpreter is given), and prints one line per stage:

    gpu <model> <stage> dtype=<..> cpu_s=<..> run_s=<..> speedup=<..> max_abs_diff=<..>

`max_abs_diff` is the largest difference against the float32 CPU result of the same stage
(lens: cross-entropy per token; sweep: per-target deltas; Taylor: scores; generation: the
fraction of samples whose tokens differ). Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch


def _targets(tok, n: int):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from head_ablation_speed import humaneval_targets

    return humaneval_targets(tok, n, 150)


def _tiny_dir(root: Path) -> Path:
    from codeinterp.access.models import build_tiny_random, save_canonical

    out = root / "tiny-llama"
    model, tok = build_tiny_random({"architecture": "llama", "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                    "hidden_size": 64, "seed": 0})
    save_canonical(model, tok, out, "tiny-random")
    return out


def _stages(model, targets, problems, settings):
    """stage -> (seconds, result) for one loaded model."""
    from codeinterp.analyses.ablation import head_ablation
    from codeinterp.analyses.lens import layer_lens
    from codeinterp.analyses.pruning import taylor_scores
    from codeinterp.benchmarks.generation import generate_transformers, prompt_table

    out = {}
    for name, run in (
        ("lens", lambda: layer_lens(model, targets, 2).filter(lens="logit")["cross_entropy"].to_torch()),
        ("head_sweep", lambda: head_ablation(model, targets, "zero", 2)["delta"].to_torch()),
        ("taylor", lambda: taylor_scores(model, targets, 2).nan_to_num()),
        ("generate", lambda: generate_transformers(model, settings["tokenizer"],
                                                   prompt_table(problems, settings["tokenizer"], settings["s"], None),
                                                   settings["s"])["completion_ids"].to_list()),
    ):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = run()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        out[name] = (time.perf_counter() - t0, result)
    return out


def _difference(a, b) -> float:
    if isinstance(a, list):  # generated token ids: the fraction of samples that differ
        return sum(x != y for x, y in zip(a, b)) / max(1, len(a))
    return float((a.float().cpu() - b.float().cpu()).abs().max())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default="resources/models/smollm2-135m", type=Path)
    ap.add_argument("--n-targets", type=int, default=4)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--vllm-python", default=None, help="interpreter of a vLLM venv (scripts/install-vllm.sh)")
    ap.add_argument("--device", default="cuda", help="cpu: try the script itself on the CPU (dtypes against float32)")
    ap.add_argument("--tiny-only", action="store_true", help="the tiny model only")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu: no CUDA device (torch {torch.__version__}, "
              f"{'CUDA ' + torch.version.cuda if torch.version.cuda else 'a CPU-only build'}); nothing to measure")
        return 0

    from codeinterp.access.models import load_model
    from codeinterp.benchmarks.datasets import load_problems
    from codeinterp.benchmarks.generation import Settings

    problems = load_problems("humaneval", Path("data")).head(4)
    with tempfile.TemporaryDirectory() as tmp:
        for model_dir in (_tiny_dir(Path(tmp)),) + (() if args.tiny_only else (args.model_dir,)):
            ref_model, tok = load_model(model_dir)
            targets = _targets(tok, args.n_targets)
            settings = {"tokenizer": tok, "s": Settings(max_new_tokens=64, batch_size=4)}
            ref = _stages(ref_model, targets, problems, settings)
            for dtype in args.dtypes.split(","):
                model, _ = load_model(model_dir, compute={"device": args.device, "dtype": dtype, "attention": "sdpa"})
                got = _stages(model, targets, problems, settings)
                for stage, (seconds, result) in got.items():
                    cpu_s = ref[stage][0]
                    print(f"gpu {model_dir.name} {stage} dtype={dtype} cpu_s={cpu_s:.2f} run_s={seconds:.2f} "
                          f"speedup={cpu_s / seconds:.1f} max_abs_diff={_difference(result, ref[stage][1]):.3g}",
                          flush=True)
                del model
                torch.cuda.empty_cache()
            if args.vllm_python:
                from codeinterp.benchmarks.generation import generate_vllm, prompt_table

                t0 = time.perf_counter()
                table = generate_vllm(str(model_dir), tok, prompt_table(problems, tok, settings["s"], None),
                                      settings["s"], args.vllm_python)
                diff = _difference(table["completion_ids"].to_list(), ref["generate"][1])
                print(f"gpu {model_dir.name} generate_vllm dtype=auto cpu_s={ref['generate'][0]:.2f} "
                      f"run_s={time.perf_counter() - t0:.2f} max_abs_diff={diff:.3g}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
