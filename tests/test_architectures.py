"""Every adapter against the model's own forward, on tiny random models built to expose a
wrong block structure (random norm weights and biases, GQA, sliding windows shorter than
the sequences, Gemma 2 softcapping): see tests/archs.py."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import archs
from codeinterp.analyses import ablation, lens
from codeinterp.access import architectures, heads, models, sites
from codeinterp.access.scoring import code_losses, make_batch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def built():
    return {arch: archs.build(arch) for arch in archs.ARCHS}


@pytest.fixture(params=archs.ARCHS)
def arch_model(request, built):
    return request.param, built[request.param]


TARGETS = archs.random_targets(3)


def model_losses(model, batch, keep=None, fill=None):
    """Independent reference: the model's full forward (full-vocabulary logits everywhere),
    head interventions through hooks, cross-entropy at the scored positions."""
    with torch.no_grad(), heads.head_intervention(model, keep if keep is not None else heads.full_mask(model), fill):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    ce = F.cross_entropy(logits[batch.rows, batch.positions], batch.labels, reduction="none")
    return torch.stack([ce[batch.owner == i].mean() for i in range(len(batch.target_ids))])


def test_every_adapter_has_a_test_model(built):
    assert {m.config.model_type for m in built.values()} == set(architectures.ADAPTERS)


def test_runner_forward_equals_model_logits(arch_model):
    arch, model = arch_model
    b = make_batch(TARGETS, 0)
    with torch.no_grad():
        want = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[b.rows, b.positions]
        runner = architectures.BlockRunner(model, b.attention_mask)
        lay = sites.layout(model)
        emb = runner.embed(b.input_ids)
        got = lay.logits(runner.run(emb)[b.rows, b.positions])
        assert (got - want).abs().max() < 1e-4, arch
        # The last block at the scored positions only: the re-derived attention.
        assert runner.can_restrict_last_block()
        before_last = runner.run(emb, 0, runner.n_layers - 1)
        part = lay.logits(runner.last_block_at(before_last, b.rows, b.positions))
        assert (part - want).abs().max() < 1e-4, arch
        assert (code_losses(model, b) - model_losses(model, b)).abs().max() < 1e-5, arch
    if arch == "gemma2":  # the softcap binds: without it the readout would differ
        assert (lay.unembed(lay.final_norm(runner.run(emb)[b.rows, b.positions])) - want).abs().max() > 0.1


def test_lens_last_layer_is_the_models_output(built):
    """The logit lens reads through the readout, softcap included (Gemma 2)."""
    model = built["gemma2"]
    t = TARGETS[1]
    tokens = lens.layer_lens(model, [t], batch_size=1)
    ids = torch.tensor([t.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, t.code_start - 1 : t.code_end - 1].float(), -1)
    want = -logp.gather(-1, ids[0, t.code_start : t.code_end, None])[:, 0]
    got = tokens.filter(tokens["layer"] == model.config.num_hidden_layers).sort("position")["cross_entropy"]
    assert np.abs(got.to_numpy() - want.numpy()).max() < 1e-4


@pytest.mark.parametrize("kind", ["zero", "mean"])
def test_fast_sweep_equals_hook_based(arch_model, kind):
    arch, model = arch_model
    naive = ablation.naive_head_ablation(model, TARGETS, kind, batch_size=2)
    fast = ablation.head_ablation(model, TARGETS, kind, batch_size=2, heads_per_pass=3)
    assert fast.select("layer", "head", "target_id").equals(naive.select("layer", "head", "target_id"))
    for col in ("base_loss", "ablated_loss", "delta"):
        assert (fast[col] - naive[col]).abs().max() < 1e-4, (arch, col)
    assert naive["delta"].abs().max() > 0.05  # heads matter, so the comparison is not vacuous


def test_knockout_equals_hook_based(arch_model):
    arch, model = arch_model
    L, H = heads.full_mask(model).shape
    ranking = [(L - 1, 1), (0, 3), (1, 0), (L - 1, 2), (0, 0)]
    df = ablation.knockout(model, TARGETS, ranking, batch_size=2, steps_per_pass=3, every=2)
    b = make_batch(TARGETS, 0)
    for k, loss in zip(df["k"], df["loss"]):
        ref = model_losses(model, b, heads.mask_from_heads(model, ranking[:k])).mean().item()
        assert loss == pytest.approx(ref, abs=1e-4), (arch, k)


def test_mean_head_outputs_equal_hooked_forward(arch_model):
    arch, model = arch_model
    lay = sites.layout(model)
    got = ablation.mean_head_outputs(model, TARGETS, batch_size=2)
    seen = []
    handles = [sites.head_out_proj(model, l).register_forward_pre_hook(lambda m, a: seen.append(a[0][0]))
               for l in range(len(lay.blocks))]
    try:
        sums = 0
        for t in TARGETS:
            seen.clear()
            with torch.no_grad():
                model(input_ids=torch.tensor([t.input_ids]))
            sums = sums + torch.stack([z.double().sum(0) for z in seen])
    finally:
        for h in handles:
            h.remove()
    ref = (sums / sum(len(t.input_ids) for t in TARGETS)).float().view_as(got)
    assert (got - ref).abs().max() < 1e-5, arch


FAST_PATHS = {
    "head_ablation": lambda model: ablation.head_ablation(model, TARGETS, "zero", batch_size=2),
    "knockout": lambda model: ablation.knockout(model, TARGETS, [(0, 0)], batch_size=2),
    "mean_head_outputs": lambda model: ablation.mean_head_outputs(model, TARGETS, batch_size=2),
}
# One structural mistake each. The q/k-norm ones live only in the re-derived last block,
# which mean_head_outputs does not run.
BREAKS = [
    ("gemma2", {"post_attn_norm": None}, tuple(FAST_PATHS)),
    ("gemma2", {"softcap": False}, tuple(FAST_PATHS)),
    ("gemma3", {"post_mlp_norm": None}, tuple(FAST_PATHS)),
    ("llama", {"pre_mlp_norm": None}, tuple(FAST_PATHS)),
    ("olmo2", {"post_attn_norm": None}, tuple(FAST_PATHS)),
    ("olmo2", {"qk_norm": None}, ("head_ablation", "knockout")),
    ("qwen3", {"qk_norm": None}, ("head_ablation", "knockout")),
]


@pytest.mark.parametrize("arch,change,what", [(a, c, w) for a, c, ws in BREAKS for w in ws])
def test_broken_runner_stops_with_one_line(built, monkeypatch, arch, change, what):
    model = built[arch]
    name = model.config.model_type
    monkeypatch.setitem(architectures.ADAPTERS, name, dataclasses.replace(architectures.ADAPTERS[name], **change))
    with pytest.raises(architectures.RunnerMismatch) as err:
        FAST_PATHS[what](model)
    msg = str(err.value)
    assert "\n" not in msg and what in msg and name in msg and "runner" in msg and "model" in msg


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3"])
def test_sliding_window_matters_in_the_test_models(built, monkeypatch, arch):
    """The window is shorter than the targets, so a runner that used full attention on the
    sliding layers would be caught by the tests above."""
    model = built[arch]
    b = make_batch(TARGETS, 0)
    with torch.no_grad():
        want = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[b.rows, b.positions]
        monkeypatch.setattr(model.config, "sliding_window", 10_000)  # the runner's masks read it
        runner = architectures.BlockRunner(model, b.attention_mask)
        got = sites.layout(model).logits(runner.run(runner.embed(b.input_ids))[b.rows, b.positions])
    assert (got - want).abs().max() > 1e-2


def test_unsupported_architecture_is_refused_in_one_line():
    model = archs.build("gpt_neox")
    b = make_batch(TARGETS[:1], 0)
    for call in (
        lambda: sites.layout(model),
        lambda: ablation.head_ablation(model, TARGETS, "zero", batch_size=2),
        lambda: ablation.knockout(model, TARGETS, [(0, 0)], batch_size=2),
        lambda: ablation.mean_head_outputs(model, TARGETS, batch_size=2),
        lambda: code_losses(model, b),
        lambda: lens.layer_lens(model, TARGETS, batch_size=2),
    ):
        with pytest.raises(architectures.UnsupportedArchitecture) as err:
            call()
        assert "\n" not in str(err.value) and "gpt_neox" in str(err.value)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma2", "gemma3"])
def test_saved_directory_round_trip(built, tmp_path, arch):
    """The acceptance path: a saved HF directory loaded by `models.load_model` (eager, float32)."""
    models.save_canonical(built[arch], models.byte_tokenizer(), tmp_path / arch, "hf")
    model, _ = models.load_model(tmp_path / arch)
    fast = ablation.head_ablation(model, TARGETS, "zero", batch_size=2)
    naive = ablation.naive_head_ablation(model, TARGETS, "zero", batch_size=2)
    assert (fast["delta"] - naive["delta"]).abs().max() < 1e-4
