"""The activation cache holds the model's own values: read back against independent hooks on
named modules and HF's hidden states, selection, atomicity, reproducibility, bad settings."""

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from archs import build, random_targets
from codeinterp.access.scoring import Target, make_batch
from codeinterp.analyses import activations
from codeinterp.analyses.activations import ActivationCache, content_hash, write_cache
from codeinterp.errors import ConfigError

ALL_KINDS = ["resid", "attn", "mlp", "head"]
# Independent of codeinterp.access: the modules whose outputs (or output projection inputs)
# each site must equal, written out per architecture.
MODULES = {
    "llama": {"attn": "model.layers.{l}.self_attn", "mlp": "model.layers.{l}.mlp", "head": "model.layers.{l}.self_attn.o_proj"},
    "gemma2": {"attn": "model.layers.{l}.post_attention_layernorm", "mlp": "model.layers.{l}.post_feedforward_layernorm",
               "head": "model.layers.{l}.self_attn.o_proj"},
    "gpt2": {"attn": "transformer.h.{l}.attn", "mlp": "transformer.h.{l}.mlp", "head": "transformer.h.{l}.attn.c_proj"},
}
HEADS, HEAD_DIM = 4, 16


@pytest.fixture(scope="module")
def models():
    return {arch: build(arch) for arch in MODULES}


def _first(x):
    return x[0] if isinstance(x, tuple) else x


@torch.no_grad()
def reference(model, arch, group: list[Target]) -> dict[str, torch.Tensor]:
    """Every site on a batch of `group` (as [B, T, ...]): resid from HF's hidden states (the
    last through the final norm, checked below), the rest from hooks placed here."""
    n = model.config.num_hidden_layers
    got, handles = {}, []
    for l in range(n):
        for kind in ("attn", "mlp"):
            mod = model.get_submodule(MODULES[arch][kind].format(l=l))
            handles.append(mod.register_forward_hook(lambda m, a, o, k=f"{kind}.{l}": got.__setitem__(k, _first(o))))
        proj = model.get_submodule(MODULES[arch]["head"].format(l=l))
        handles.append(proj.register_forward_pre_hook(
            lambda m, a, k=f"head.{l}": got.__setitem__(k, a[0].reshape(*a[0].shape[:-1], HEADS, HEAD_DIM))))
    batch = make_batch(group)
    try:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    for l in range(n):
        got[f"resid.{l}"] = out.hidden_states[l]
    # The last block's output, from the residual sum of the independent hooks; HF's last
    # hidden state is that after the final norm.
    got[f"resid.{n}"] = got[f"resid.{n - 1}"] + got[f"attn.{n - 1}"] + got[f"mlp.{n - 1}"]
    final_norm = model.get_submodule("transformer.ln_f" if arch == "gpt2" else "model.norm")
    torch.testing.assert_close(final_norm(got[f"resid.{n}"]), out.hidden_states[n])
    return got


def expected_rows(group, values, positions):
    out = {}
    for name, v in values.items():
        parts = []
        for i, t in enumerate(group):
            a, b = activations.cached_span(t, positions)
            parts.append(v[i, a:b])
        out[name] = torch.cat(parts)
    return out


@pytest.mark.parametrize("arch", list(MODULES))
@pytest.mark.parametrize("dtype,positions", [("float32", "all"), ("float16", "code"), ("bfloat16", "code")])
def test_round_trip_equals_fresh_forward(models, arch, dtype, positions, tmp_path):
    model = models[arch]
    targets = random_targets(5, seed=3)
    index = write_cache(model, targets, tmp_path / "c", sites=ALL_KINDS, positions=positions, dtype=dtype,
                        shard_tokens=11, batch_size=2)
    cache = ActivationCache(tmp_path / "c")
    assert cache.sites == index["sites"] and len(cache.sites) == 4 * 3 + 1
    assert len(index["rows_per_shard"]) > 2  # shards split inside targets
    store = activations.DTYPES[dtype]
    # The same batches as the cache: equal bit for bit after the one rounding to `dtype`.
    expect = {}
    for start in range(0, len(targets), 2):
        group = targets[start : start + 2]
        for name, v in expected_rows(group, reference(model, arch, group), positions).items():
            expect.setdefault(name, []).append(v)
    for name in cache.sites:
        want = torch.cat(expect[name]).to(store).float()
        got = cache.read(name)
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert torch.equal(got, want), name
    # Each target alone, unpadded: the padding of the batches does not reach the values.
    tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}[dtype]
    for t in targets[:3]:
        alone = expected_rows([t], reference(model, arch, [t]), positions)
        rows = cache.select(target_ids=[t.target_id])
        for name in ("resid.3", "head.1", "mlp.0"):
            torch.testing.assert_close(cache.read(name, rows), alone[name], rtol=tol, atol=tol)


def test_rows_and_selection(models, tmp_path):
    targets = random_targets(4, seed=1)
    write_cache(models["llama"], targets, tmp_path / "c", sites=["resid", "head"], positions="code", dtype="float32",
                shard_tokens=9, batch_size=3)
    cache = ActivationCache(tmp_path / "c")
    # rows: target order, positions [code_start - 1, code_end) ascending, shards of 9 rows
    want = [(t.target_id, p) for t in targets for p in range(t.code_start - 1, t.code_end)]
    assert list(zip(cache.rows["target_id"], cache.rows["position"])) == want
    assert cache.rows["row"].to_list() == list(range(len(want)))
    assert cache.rows["shard"].to_list() == [r // 9 for r in range(len(want))]
    everything = cache.read("resid.2")

    r1 = cache.select(target_ids=["r1"])
    assert [want[i] for i in r1] == [w for w in want if w[0] == "r1"]
    at = cache.select(positions=[12, 15])
    assert [want[i] for i in at] == [w for w in want if w[1] in (12, 15)]
    both = cache.select(target_ids=["r2", "r3"], positions=[15])
    assert [want[i] for i in both] == [w for w in want if w[0] in ("r2", "r3") and w[1] == 15]

    # A token frame comes back in its own order, so values line up with its columns.
    tokens = pl.DataFrame({"target_id": ["r3", "r0", "r3", "r1"], "position": [20, 6, 14, 11], "label": list("abcd")})
    rows = cache.select(tokens=tokens)
    assert [want[i] for i in rows] == list(zip(tokens["target_id"], tokens["position"]))
    assert torch.equal(cache.read("resid.2", rows), everything[torch.from_numpy(rows)])
    assert cache.read("head.0", rows).shape == (4, HEADS, HEAD_DIM)
    with pytest.raises(ConfigError, match="1 of 2 tokens are not in the activation cache"):
        cache.select(tokens=pl.DataFrame({"target_id": ["r0", "r0"], "position": [0, 6]}))
    with pytest.raises(ConfigError, match="'attn.0' is not in the activation cache"):
        cache.read("attn.0")


def test_read_opens_only_needed_shards(models, tmp_path, monkeypatch):
    targets = random_targets(4, seed=1)
    write_cache(models["llama"], targets, tmp_path / "c", sites=["resid"], positions="all", dtype="float16",
                shard_tokens=10, batch_size=4)
    cache = ActivationCache(tmp_path / "c")
    opened, tensors, real = [], [], activations.safe_open

    class Spy:  # records which shards are opened and which tensors are sliced
        def __init__(self, path, **kw):
            opened.append(Path(path).name)
            self.handle = real(path, **kw)

        def __enter__(self):
            self.f = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def get_slice(self, name):
            tensors.append(name)
            return self.f.get_slice(name)

    monkeypatch.setattr(activations, "safe_open", Spy)
    rows = np.array([25, 3, 27])  # shards 2 and 0 of 9
    got = cache.read("resid.1", rows)
    assert sorted(opened) == ["shard-00000.safetensors", "shard-00002.safetensors"]
    assert tensors == ["resid.1", "resid.1"]
    monkeypatch.undo()
    torch.testing.assert_close(got, cache.read("resid.1")[torch.from_numpy(rows)])


def test_reruns_are_byte_identical_and_hash_tracks_targets(models, tmp_path):
    targets = random_targets(4, seed=2)
    kw = dict(sites=["resid", "mlp"], positions="code", dtype="bfloat16", shard_tokens=8, batch_size=2,
              meta={"architecture": "llama"})
    a = write_cache(models["llama"], targets, tmp_path / "a", **kw)
    b = write_cache(models["llama"], targets, tmp_path / "b", **kw)
    files = sorted(os.listdir(tmp_path / "a"))
    assert files == sorted(os.listdir(tmp_path / "b")) and "index.json" in files and len(files) > 3
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert a["hash"] == b["hash"] == ActivationCache(tmp_path / "a").index["hash"]
    modes = {(tmp_path / "a" / f).stat().st_mode for f in files}
    assert len(modes) == 1  # shards readable like the index, not private
    assert a["model"] == {"architecture": "llama"}

    settings = a["settings"]
    t0 = targets[0]
    shorter = [Target(t0.target_id, t0.input_ids, t0.code_start, t0.code_end - 1), *targets[1:]]
    other_token = [Target(t0.target_id, (5, *t0.input_ids[1:]), t0.code_start, t0.code_end), *targets[1:]]
    assert content_hash(targets, settings, kw["meta"]) == a["hash"]
    hashes = {a["hash"], content_hash(shorter, settings, kw["meta"]), content_hash(other_token, settings, kw["meta"]),
              content_hash(targets[1:], settings, kw["meta"]), content_hash(targets, {**settings, "dtype": "float16"}, kw["meta"])}
    assert len(hashes) == 5


def test_failure_mid_write_leaves_nothing(models, tmp_path, monkeypatch):
    targets = random_targets(4, seed=1)
    kw = dict(sites=["resid"], positions="all", dtype="float32", shard_tokens=10, batch_size=1)
    real, calls = activations.save_file, []

    def fail_third(tensors, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real(tensors, path)

    monkeypatch.setattr(activations, "save_file", fail_third)
    with pytest.raises(OSError, match="disk full"):
        write_cache(models["llama"], targets, tmp_path / "c", **kw)
    assert len(calls) == 3 and os.listdir(tmp_path) == []

    # Over an existing cache: the old one stays whole until the new one is complete.
    monkeypatch.setattr(activations, "save_file", real)
    old = write_cache(models["llama"], targets, tmp_path / "c", **kw)
    calls.clear()
    monkeypatch.setattr(activations, "save_file", fail_third)
    with pytest.raises(OSError):
        write_cache(models["llama"], targets[:3], tmp_path / "c", **kw)
    assert os.listdir(tmp_path) == ["c"] and ActivationCache(tmp_path / "c").index == old
    monkeypatch.setattr(activations, "save_file", real)
    new = write_cache(models["llama"], targets[:3], tmp_path / "c", **kw)
    assert os.listdir(tmp_path) == ["c"] and ActivationCache(tmp_path / "c").index == new != old


def test_wrong_hooks_refused_before_output(models, tmp_path, monkeypatch):
    from codeinterp.access import hooks
    from codeinterp.access.architectures import RunnerMismatch, layout

    # Reading Gemma 2's attention module instead of its post-attention norm is caught.
    monkeypatch.setattr(hooks, "_contribution_module",
                        lambda m, l, half: getattr(layout(m).blocks[l], "self_attn" if half == "attn" else "mlp"))
    with pytest.raises(RunnerMismatch, match="gemma2"):
        write_cache(models["gemma2"], random_targets(2), tmp_path / "c", sites=["attn"], positions="code",
                    dtype="float32", shard_tokens=4, batch_size=2)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("change,match", [
    ({"sites": ["resid", "residual"]}, r"^activations\.sites: unknown site kind 'residual'"),
    ({"sites": []}, r"^activations\.sites"),
    ({"dtype": "float64"}, r"^activations\.dtype: 'float64'"),
    ({"positions": "code+1"}, r"^activations\.positions"),
    ({"shard_tokens": 0}, r"^activations\.shard_tokens"),
])
def test_bad_settings_one_line(models, tmp_path, change, match):
    kw = {"sites": ["resid"], "positions": "code", "dtype": "float16", "shard_tokens": 8, "batch_size": 2, **change}
    with pytest.raises(ConfigError, match=match) as err:
        write_cache(models["llama"], random_targets(2), tmp_path / "c", **kw)
    assert "\n" not in str(err.value)
    assert os.listdir(tmp_path) == []


def test_duplicate_targets_and_empty_cache(models, tmp_path):
    t = random_targets(2)
    with pytest.raises(ConfigError, match="'r0' occurs more than once"):
        write_cache(models["gpt2"], [t[0], t[1], t[0]], tmp_path / "d", sites=["resid"], positions="code",
                    dtype="float16", shard_tokens=8, batch_size=2)
    index = write_cache(models["gpt2"], [], tmp_path / "e", sites=["resid", "head"], positions="code",
                        dtype="float16", shard_tokens=8, batch_size=2)
    cache = ActivationCache(tmp_path / "e")
    assert index["n_rows"] == 0 and cache.rows.height == 0 and index["shards"] == []
    assert cache.read("resid.3").shape == (0, 64) and cache.read("head.2").shape == (0, HEADS, HEAD_DIM)
    with pytest.raises(ConfigError, match="not a finished activation cache"):
        ActivationCache(tmp_path / "d")
