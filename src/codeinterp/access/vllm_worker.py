"""Generate with vLLM from token ids: a standalone script run INSIDE the vLLM venv.

    python vllm_worker.py request.json out.jsonl

It imports only the standard library and vllm (the vLLM venv has no codeinterp), so
`codeinterp.access.vllm_backend` runs it as a file with the vLLM venv's interpreter.

Request (JSON object):
    model_dir         canonical model directory (safetensors + tokenizer)
    prompt_token_ids  list of prompts, each a list of token ids
    n                 samples per prompt
    temperature       0 means greedy
    top_p             nucleus mass (ignored when greedy)
    max_new_tokens    generation budget per sample
    seed              sampling seed
    stop              stop strings (may be empty) for every prompt, or one such list per prompt
    dtype             engine dtype, default "float32"

Output: one JSON line per (prompt, sample), prompts in request order, samples 0..n-1:
    {"prompt_index", "sample_index", "token_ids", "text", "finish_reason"}
finish_reason is "stop" (EOS or a stop string) or "length".

On error: exit status 1 (2 for usage) and one line `vllm_worker: <message>` on stderr.
"""

from __future__ import annotations

import os  # already loaded by the interpreter's startup, so never shadowed
import sys

# Run as a file, this script's own folder (the codeinterp package) comes first on
# sys.path, and its modules could shadow stdlib or vLLM imports: drop it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import json  # noqa: E402
import time  # noqa: E402

REQUIRED = {
    "model_dir": str,
    "prompt_token_ids": list,
    "n": int,
    "temperature": (int, float),
    "top_p": (int, float),
    "max_new_tokens": int,
    "seed": int,
    "stop": list,
}


def fail(message: str, status: int = 1) -> None:
    print(f"vllm_worker: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    sys.exit(status)


def log(message: str) -> None:
    print(f"vllm_worker: {message}", file=sys.stderr, flush=True)


def read_request(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            req = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read request {path}: {e}")
    if not isinstance(req, dict):
        fail(f"request {path} is not a JSON object")
    for key, typ in REQUIRED.items():
        if key not in req:
            fail(f"request {path} lacks field {key!r}")
        if not isinstance(req[key], typ) or isinstance(req[key], bool):
            fail(f"request field {key!r} has the wrong type: {type(req[key]).__name__}")
    prompts = req["prompt_token_ids"]
    if not prompts:
        fail("request field 'prompt_token_ids' is empty")
    for i, p in enumerate(prompts):
        if not isinstance(p, list) or not p or not all(isinstance(t, int) for t in p):
            fail(f"prompt_token_ids[{i}] is not a non-empty list of ints")
    if req["n"] < 1:
        fail(f"request field 'n' must be >= 1, got {req['n']}")
    if req["max_new_tokens"] < 1:
        fail(f"request field 'max_new_tokens' must be >= 1, got {req['max_new_tokens']}")
    if req["temperature"] < 0:
        fail(f"request field 'temperature' must be >= 0, got {req['temperature']}")
    if not 0 < req["top_p"] <= 1:
        fail(f"request field 'top_p' must be in (0, 1], got {req['top_p']}")
    stop = req["stop"]
    per_prompt = bool(stop) and all(isinstance(s, list) for s in stop)
    lists = stop if per_prompt else [stop]
    if per_prompt and len(stop) != len(prompts):
        fail(f"request field 'stop' has {len(stop)} lists for {len(prompts)} prompts")
    if not all(isinstance(s, str) and s for lst in lists for s in lst):
        fail("request field 'stop' must be a list of non-empty strings, or one such list per prompt")
    if not os.path.isdir(req["model_dir"]):
        fail(f"model directory not found: {req['model_dir']}")
    return req


def finish_reason(reason) -> str:
    # vLLM reports "stop" for EOS and stop strings, "length" for the budget; an
    # aborted request is not a finished sample.
    if reason in ("stop", "length"):
        return reason
    raise RuntimeError(f"generation ended with finish_reason {reason!r}")


def run(req: dict, out_path: str) -> None:
    from vllm import LLM, SamplingParams

    greedy = float(req["temperature"]) == 0.0
    n = int(req["n"])
    t0 = time.monotonic()
    llm = LLM(
        model=req["model_dir"],
        tokenizer=req["model_dir"],
        dtype=req.get("dtype", "float32"),
        seed=int(req["seed"]),
        enforce_eager=True,
        gpu_memory_utilization=float(req.get("gpu_memory_utilization", 0.5)),
        max_model_len=req.get("max_model_len"),
        trust_remote_code=False,
    )
    log(f"engine started in {time.monotonic() - t0:.1f} s")

    stop = req["stop"]
    if stop and all(isinstance(s, list) for s in stop):
        params = [_sampling_params(SamplingParams, req, greedy, n, s) for s in stop]
    else:
        params = _sampling_params(SamplingParams, req, greedy, n, stop)

    prompts = [{"prompt_token_ids": list(p)} for p in req["prompt_token_ids"]]
    t1 = time.monotonic()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    log(f"generated {len(prompts)} prompt(s) x {n} sample(s) in {time.monotonic() - t1:.1f} s")
    if len(outputs) != len(prompts):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")

    tmp = out_path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        for i, out in enumerate(outputs):
            if list(out.prompt_token_ids) != list(req["prompt_token_ids"][i]):
                raise RuntimeError(f"vLLM output {i} does not belong to prompt {i}")
            samples = sorted(out.outputs, key=lambda c: c.index)
            if len(samples) != n:
                raise RuntimeError(f"prompt {i}: vLLM returned {len(samples)} samples, wanted {n}")
            for j, c in enumerate(samples):
                row = {
                    "prompt_index": i,
                    "sample_index": j,
                    "token_ids": [int(t) for t in c.token_ids],
                    "text": c.text,
                    "finish_reason": finish_reason(c.finish_reason),
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out_path)


def _sampling_params(SamplingParams, req: dict, greedy: bool, n: int, stop: list[str]):
    kwargs = dict(
        n=n,
        temperature=0.0 if greedy else float(req["temperature"]),
        top_p=1.0 if greedy else float(req["top_p"]),
        max_tokens=int(req["max_new_tokens"]),
        seed=int(req["seed"]),
        stop=list(stop) or None,
        ignore_eos=False,
        skip_special_tokens=True,
    )
    return SamplingParams(**kwargs)


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        fail("usage: python vllm_worker.py request.json out.jsonl", status=2)
    req = read_request(argv[1])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    try:
        run(req, argv[2])
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - turned into one line for the caller
        fail(f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    main(sys.argv)
