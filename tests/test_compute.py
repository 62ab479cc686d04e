"""Device and compute dtype (codeinterp.access.compute): bfloat16 agrees with float32 within
stated tolerances, statistics stay float32, SDPA equals eager, and `device: cuda` without a
device is one line."""

import pytest
import torch

from archs import build, random_targets
from codeinterp.access.compute import check_rtol, resolve, resolve_device
from codeinterp.access.models import load_model, save_canonical
from codeinterp.analyses.ablation import head_ablation
from codeinterp.analyses.lens import layer_lens
from codeinterp.analyses.pruning import taylor_scores
from codeinterp.errors import ConfigError

# What bfloat16 weights and activations may move a float32 statistic by, on these tiny models
# (losses near 6 nats; bfloat16 keeps 8 bits of mantissa, a relative step of 2^-8 = 0.0039).
# Measured: cross-entropy max 0.021 / mean 0.0052, head delta max 0.0060 (deltas up to 0.31),
# Taylor score max 0.0017 (scores up to 0.17).
LOSS_ATOL = 0.05
DELTA_ATOL = 0.015
TAYLOR_ATOL = 0.005


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    model = build("llama")
    vocab = {f"t{i}": i for i in range(model.config.vocab_size)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                  pad_token="t0", bos_token="t1", eos_token="t2")
    out = tmp_path_factory.mktemp("m") / "llama"
    save_canonical(model, tok, out, source="tiny-random")
    return out


def _load(model_dir, dtype="float32", attention="eager"):
    return load_model(model_dir, compute={"device": "cpu", "dtype": dtype, "attention": attention})[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_device_is_one_line():
    with pytest.raises(ConfigError) as err:
        resolve_device("cuda")
    assert "compute.device" in str(err.value) and "\n" not in str(err.value)
    assert resolve_device("auto") == "cpu"


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="compute.dtype"):
        resolve({"dtype": "float8"})
    with pytest.raises(ConfigError, match="compute.attention"):
        resolve({"attention": "flash"})


def test_the_model_takes_the_compute_dtype_and_kernel(model_dir):
    m = _load(model_dir, "bfloat16", "sdpa")
    assert next(m.parameters()).dtype == torch.bfloat16
    assert m.config._attn_implementation == "sdpa"
    assert check_rtol(m) > check_rtol(_load(model_dir))


def test_sdpa_equals_eager_in_float32(model_dir):
    targets = random_targets(4, seed=1)
    eager = head_ablation(_load(model_dir), targets, "zero", batch_size=2)
    sdpa = head_ablation(_load(model_dir, attention="sdpa"), targets, "zero", batch_size=2)
    assert (eager["delta"] - sdpa["delta"]).abs().max() < 1e-5


def test_bfloat16_lens_agrees_with_float32_and_is_computed_in_float32(model_dir):
    targets = random_targets(4, seed=2)
    ref = layer_lens(_load(model_dir), targets, batch_size=2)
    low = layer_lens(_load(model_dir, "bfloat16", "sdpa"), targets, batch_size=2)
    assert ref.schema == low.schema  # statistics columns stay float32
    for column in ("cross_entropy", "entropy", "kl_to_final"):
        assert (ref[column] - low[column]).abs().max() < LOSS_ATOL, column
    assert (ref["cross_entropy"] - low["cross_entropy"]).abs().mean() < LOSS_ATOL / 5


def test_bfloat16_head_sweep_and_taylor_agree_with_float32(model_dir):
    targets = random_targets(4, seed=3)
    ref, low = _load(model_dir), _load(model_dir, "bfloat16", "sdpa")
    a = head_ablation(ref, targets, "zero", batch_size=2)
    b = head_ablation(low, targets, "zero", batch_size=2)  # its self-check runs at bfloat16's tolerance
    assert (a["base_loss"] - b["base_loss"]).abs().max() < LOSS_ATOL
    assert (a["delta"] - b["delta"]).abs().max() < DELTA_ATOL
    s32, s16 = taylor_scores(ref, targets, 2), taylor_scores(low, targets, 2)
    assert s16.dtype == torch.float32  # mask gradients accumulate in float32
    assert (s32 - s16).abs().max() < TAYLOR_ATOL
