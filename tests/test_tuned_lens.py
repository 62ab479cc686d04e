import polars as pl
import pytest
import torch

from codeinterp.access import hooks, models
from codeinterp.analyses import tuned_lens as tl


def peaked_readout(d=16, vocab=50, seed=0):
    """A known readout (RMS norm, then a large random unembedding) with peaked distributions,
    so that a wrong residual gives a large KL."""
    w = torch.randn(d, vocab, generator=torch.Generator().manual_seed(seed)) * 3.0

    def readout(h):
        return (h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()) @ w

    return readout


def planted(n=600, d=16, seed=1):
    """Final states y and layer states x = y M + c with a known invertible M: y = (x - c) M^-1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, d, generator=g)
    m = torch.eye(d) + 0.6 * torch.randn(d, d, generator=g) / d**0.5
    c = 0.5 * torch.randn(d, generator=g)
    return y @ m + c, y


@pytest.fixture(scope="module")
def tiny_resid():
    """Residuals of a tiny random Llama on 12 'problems' (one text each), per token."""
    model, tok = models.build_tiny_random({"architecture": "llama", "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                           "hidden_size": 64, "seed": 0})
    names = [f"resid.{l}" for l in range(3)]
    per_problem = []
    for i in range(12):
        ids = torch.tensor([tok(f"def f{i}(x):\n    return x * {i} + {i * i}\n")["input_ids"]])
        with torch.no_grad(), hooks.capture(model, names) as got:
            logits = model(input_ids=ids).logits[0]
        per_problem.append(({n: got[n][0][0] for n in names}, logits))
    return model, per_problem


def test_identity_translator_and_last_layer_is_the_model_output(tiny_resid):
    model, per_problem = tiny_resid
    readout = tl.frozen_readout(model)
    resid, logits = per_problem[0]
    assert torch.allclose(readout(resid["resid.2"]), logits.float(), atol=1e-5)
    final = resid["resid.2"]
    t = tl.Translator(final.shape[1])
    assert torch.equal(t(final), final)
    assert tl.lens_kl(readout, final, final, t).abs().max() < 1e-6
    assert tl.lens_kl(readout, final, final).abs().max() < 1e-6


def test_tuned_lens_beats_logit_lens_on_heldout_problems(tiny_resid):
    model, per_problem = tiny_resid
    readout = tl.frozen_readout(model)
    train, test = tl.split_problems([str(i) for i in range(12)], 0.5, seed=0)

    def stack(ids, site):
        return torch.cat([per_problem[int(i)][0][site] for i in ids])

    for layer in (0, 1):
        x_train, y_train = stack(train, f"resid.{layer}"), stack(train, "resid.2")
        x_test, y_test = stack(test, f"resid.{layer}"), stack(test, "resid.2")
        t, history = tl.train_translator(readout, x_train, y_train, steps=80, tokens_per_step=256, seed=0)
        logit, tuned = tl.lens_kl(readout, x_test, y_test).mean(), tl.lens_kl(readout, x_test, y_test, t).mean()
        assert history[-1] < history[0]
        assert tuned < 0.6 * logit, (layer, float(tuned), float(logit))


def test_planted_linear_map_is_recovered():
    readout = peaked_readout()
    x, y = planted()
    logit = tl.lens_kl(readout, x[400:], y[400:]).mean()
    assert logit > 0.3  # the planted map really moves the distribution
    warm = tl.ridge_init(x[:400], y[:400], alpha=1e-3)
    assert tl.lens_kl(readout, x[400:], y[400:], warm).mean() < 1e-3
    trained, _ = tl.train_translator(readout, x[:400], y[:400], steps=300, tokens_per_step=400, seed=0,
                                     weight_decay=0.0)
    assert tl.lens_kl(readout, x[400:], y[400:], trained).mean() < 0.1 * logit


def test_weight_decay_pulls_toward_identity():
    readout = peaked_readout()
    x, y = planted()
    free, _ = tl.train_translator(readout, x, y, steps=100, tokens_per_step=300, seed=0, weight_decay=0.0)
    decayed, _ = tl.train_translator(readout, x, y, steps=100, tokens_per_step=300, seed=0, weight_decay=5.0)

    def size(t):
        return float(t.linear.weight.detach().norm() + t.linear.bias.detach().norm())

    assert size(free) > 0.5
    assert size(decayed) < 0.05 * size(free)


def test_same_seed_same_translator():
    readout = peaked_readout()
    x, y = planted()
    runs = [tl.train_translator(readout, x, y, steps=20, tokens_per_step=64, seed=s)[0] for s in (3, 3, 4)]
    assert torch.equal(runs[0].linear.weight, runs[1].linear.weight)
    assert torch.equal(runs[0].linear.bias, runs[1].linear.bias)
    assert not torch.equal(runs[0].linear.weight, runs[2].linear.weight)


def test_split_by_problem_is_seeded_and_disjoint():
    ids = [f"p{i}" for i in range(10)] * 3
    train, test = tl.split_problems(ids, 0.3, seed=7)
    assert len(test) == 3 and len(train) == 7 and not set(train) & set(test)
    assert (train, test) == tl.split_problems(list(reversed(ids)), 0.3, seed=7)
    assert tl.split_problems(ids, 0.3, seed=8) != (train, test)
    with pytest.raises(ValueError):
        tl.split_problems(["only"], 0.5, seed=0)


def test_translators_round_trip(tmp_path):
    x, y = planted(n=50)
    t = tl.ridge_init(x, y, alpha=1.0)
    meta = {"heldout_problems": ["a", "b"], "seed": 3, "config": {"steps": 2, "lr": 1.0}}
    tl.save_translators({3: t, 1: tl.Translator(16)}, tmp_path / "t.safetensors", meta)
    back, got = tl.load_translators(tmp_path / "t.safetensors")
    assert got == meta and sorted(back) == [1, 3]
    assert torch.equal(back[3](x), t(x)) and torch.equal(back[1](x), x)
    # Same translators and metadata, same bytes (safetensors would order several metadata keys freely).
    for i in range(5):
        tl.save_translators({3: t, 1: tl.Translator(16)}, tmp_path / f"u{i}.safetensors", meta)
        assert (tmp_path / f"u{i}.safetensors").read_bytes() == (tmp_path / "t.safetensors").read_bytes()


def test_trained_layers():
    from codeinterp.errors import ConfigError

    assert tl.trained_layers(None, 3) == [0, 1, 2]
    assert tl.trained_layers([2, 0, 2], 3) == [0, 2]
    with pytest.raises(ConfigError, match="tuned_lens.layers"):
        tl.trained_layers([3], 3)


def test_both_lenses_share_the_output_distribution():
    readout = peaked_readout()
    x, y = planted(n=100)
    t = tl.ridge_init(x, y, alpha=1.0)
    logit, tuned = tl.both_kl(readout, x, y, t, chunk=7)
    assert torch.allclose(logit, tl.lens_kl(readout, x, y), atol=1e-5)
    assert torch.allclose(tuned, tl.lens_kl(readout, x, y, t), atol=1e-5)
    assert tl.both_kl(readout, x, y)[1] is None


@pytest.mark.slow
def test_rules_give_byte_identical_outputs(tmp_path):
    """tuned_lens and layer_lens on the tiny config, then both rerun: the same bytes."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    base = "results/tiny-llama/mbpp"
    outs = [f"{base}/lens/tuned_lens.safetensors", f"{base}/lens/tuned_training.parquet", f"{base}/lens_layers.parquet",
            f"{base}/lens_tokens.parquet"]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-d", str(tmp_path),
           "--configfile", str(repo / "tests/configs/tiny.yaml"), "--cores", "1"]

    def run(*args):
        proc = subprocess.run([*cmd, *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]

    run(outs[2])
    first = {o: (tmp_path / o).read_bytes() for o in outs}
    stamps = {o: (tmp_path / o).stat().st_mtime_ns for o in outs}
    run("--forcerun", "tuned_lens", "layer_lens", "--until", "layer_lens", "--", outs[2])
    assert all((tmp_path / o).stat().st_mtime_ns != stamps[o] for o in outs)  # really written again
    assert {o: (tmp_path / o).read_bytes() for o in outs} == first
    training = pl.read_parquet(tmp_path / outs[1])
    assert training.filter(pl.col("split") == "heldout")["tuned_below_logit"].all()
    layers = pl.read_parquet(tmp_path / outs[2])
    assert set(zip(layers["lens"], layers["split"])) == {("logit", "all"), ("logit", "heldout"), ("tuned", "heldout")}
