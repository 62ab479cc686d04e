"""Peak memory and write throughput of the activation cache.

Run from the repository root:

    python benchmarks/activation_cache.py [--model DIR] [--n-targets N] [--sites resid head] [--threads T]

Memory: the cache is written for N and for 10N random targets, each in a fresh subprocess
(peak RSS only grows within a process), and the child reports its `ru_maxrss` after writing
and its RSS before (model loaded, targets built). Streaming keeps one shard in memory, so the
peak should hardly grow with the number of targets: the ratio printed should stay below 1.2.

Each pair runs under two allocator settings. With glibc's defaults the peak varies by
hundreds of MB between identical runs (its mmap threshold adapts, so how much freed forward
memory the heap keeps depends on the run), so the median of `--repeats` runs is printed.
With MALLOC_MMAP_THRESHOLD_=131072 large blocks always go back to the system when freed:
the peak is then the live memory, the same in every run, and that ratio is the clean one.

Throughput: in one process, the values of the N targets are captured into memory once; then
the shard writer of `codeinterp.analyses.activations` writes them (safetensors shards, the
rows split exactly as `write_cache` splits them) and `torch.save` writes the same tensors as
one file, each `--repeats` times (median time). The end-to-end rate of `write_cache`
(forward passes included) is printed too.

The default model is a tiny random Llama (12 layers, width 256, 8 heads) with the byte-level
tokenizer; targets are random tokens of 160..480 tokens whose code span is the second half.
The last line is

    activation_cache rss_ratio=<peak 10N / peak N> shard_mb_s=<..> torch_save_mb_s=<..> end_to_end_mb_s=<..>
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

FIXED = {"MALLOC_MMAP_THRESHOLD_": "131072"}
TINY = {"architecture": "llama", "n_layers": 12, "hidden_size": 256, "n_heads": 8, "n_kv_heads": 4,
        "intermediate_size": 688, "seed": 0}


def load(model_dir: str | None):
    from codeinterp.access import models

    if model_dir:
        model, tok = models.load_model(model_dir)
        return model, tok.pad_token_id or 0, len(tok)
    model, tok = models.build_tiny_random(TINY)
    return model, tok.pad_token_id or 0, len(tok)


def random_targets(n: int, vocab: int, seed: int = 0):
    from codeinterp.access.scoring import Target

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(160, 481, (1,), generator=g))
        ids = torch.randint(3, min(vocab, 256), (length,), generator=g).tolist()
        out.append(Target(f"t{i:05d}", tuple(ids), length // 2, length))
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def child(args) -> None:
    """Write one cache; print a JSON line with RSS before, peak RSS (MB) and the index size."""
    from codeinterp.analyses.activations import write_cache

    torch.set_num_threads(args.threads)
    model, pad_id, vocab = load(args.model)
    targets = random_targets(args.n_targets, vocab)
    before = rss_mb()
    with tempfile.TemporaryDirectory(dir=args.workdir) as d:
        t0 = time.perf_counter()
        index = write_cache(model, targets, Path(d) / "cache", sites=args.sites, positions="code", dtype=args.dtype,
                            shard_tokens=args.shard_tokens, batch_size=args.batch_size, pad_id=pad_id)
        seconds = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (Path(d) / "cache").iterdir())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"before_mb": before, "peak_mb": peak, "rows": index["n_rows"], "shards": len(index["shards"]),
                      "bytes": size, "seconds": seconds}))


def run_child(args, n: int, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", "--n-targets", str(n), "--threads", str(args.threads),
           "--dtype", args.dtype, "--shard-tokens", str(args.shard_tokens), "--batch-size", str(args.batch_size),
           "--workdir", args.workdir, "--sites", *args.sites]
    if args.model:
        cmd += ["--model", args.model]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@torch.no_grad()
def throughput(args) -> tuple[float, float, float]:
    """MB/s of the shard writer and of torch.save on the same captured tensors, and of
    write_cache end to end (forwards included)."""
    from codeinterp.access import hooks
    from codeinterp.analyses import activations

    torch.set_num_threads(args.threads)
    model, pad_id, vocab = load(args.model)
    targets = random_targets(args.n_targets, vocab)
    names = hooks.site_names(model, args.sites)
    dtype = activations.DTYPES[args.dtype]
    values = {n: [] for n in names}
    for start in range(0, len(targets), args.batch_size):
        got = activations._batch_values(model, names, targets[start : start + args.batch_size], "code", dtype, pad_id)
        for n in names:
            values[n].append(got[n])
    whole = {n: torch.cat(v) for n, v in values.items()}
    with tempfile.TemporaryDirectory(dir=args.workdir) as d:
        d = Path(d)
        (d / "shards").mkdir()
        shard_times, save_times = [], []
        for rep in range(args.repeats):
            (d / f"shards{rep}").mkdir()
            t0 = time.perf_counter()
            writer = activations._ShardWriter(d / f"shards{rep}", names, args.shard_tokens)
            for i in range(len(values[names[0]])):
                writer.add({n: values[n][i] for n in names})
            writer.finish()
            shard_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            torch.save(whole, d / f"plain{rep}.pt")
            save_times.append(time.perf_counter() - t0)
        shard_s, save_s = statistics.median(shard_times), statistics.median(save_times)
        mb, save_size = writer.bytes / 1e6, (d / "plain0.pt").stat().st_size
        t0 = time.perf_counter()
        activations.write_cache(model, targets, d / "cache", sites=args.sites, positions="code", dtype=args.dtype,
                                shard_tokens=args.shard_tokens, batch_size=args.batch_size, pad_id=pad_id)
        full_s = time.perf_counter() - t0
    print(f"throughput on {args.n_targets} targets: {mb:.1f} MB (torch.save file {save_size / 1e6:.1f} MB); "
          f"median of {args.repeats}: shard writer {shard_s:.3f} s, torch.save {save_s:.3f} s; "
          f"write_cache with forwards {full_s:.2f} s", flush=True)
    return mb / shard_s, mb / save_s, mb / full_s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a prepared model directory (default: a tiny random Llama)")
    ap.add_argument("--n-targets", type=int, default=10)
    ap.add_argument("--sites", nargs="+", default=["resid", "head"])
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--shard-tokens", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="runs per size under glibc defaults; writes per throughput")
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    ratios = {}
    for label, env, repeats in (("fixed threshold", FIXED, 1), ("glibc defaults", {}, args.repeats)):
        runs = {n: [run_child(args, n, env) for _ in range(repeats)] for n in (args.n_targets, 10 * args.n_targets)}
        peaks = {n: statistics.median(r["peak_mb"] for r in rs) for n, rs in runs.items()}
        for n, rs in runs.items():
            r = rs[0]
            peaks_text = ", ".join(f"{x['peak_mb']:.0f}" for x in rs)
            print(f"[{label}] {n} targets: {r['rows']} rows, {r['shards']} shards, {r['bytes'] / 1e6:.1f} MB on disk in "
                  f"{r['seconds']:.1f} s; RSS before writing {r['before_mb']:.0f} MB, peak "
                  f"{peaks_text} MB", flush=True)
        small, large = peaks[args.n_targets], peaks[10 * args.n_targets]
        before = runs[args.n_targets][0]["before_mb"]
        ratios[label] = large / small
        print(f"[{label}] peak RSS 10N / N = {large / small:.3f} (above the pre-write RSS: "
              f"{(large - before) / max(small - before, 1e-9):.2f}x)", flush=True)
    shard_rate, save_rate, full_rate = throughput(args)
    print(f"activation_cache rss_ratio={ratios['fixed threshold']:.3f} rss_ratio_default={ratios['glibc defaults']:.3f} "
          f"shard_mb_s={shard_rate:.0f} torch_save_mb_s={save_rate:.0f} end_to_end_mb_s={full_rate:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
