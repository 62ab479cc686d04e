"""The component graph (access.edges): the sum of every component is the model, post-norm
architectures are refused, and cutting edges equals interventions made in the model's own
forward through hooks (an independent route to the same numbers)."""

import pytest
import torch

from archs import build
from codeinterp.access.architectures import RunnerMismatch, UnsupportedArchitecture
from codeinterp.access.edges import EdgeRunner
from codeinterp.access.hooks import capture, edit_site
from codeinterp.causal.circuit import patched_metrics
from codeinterp.causal.pairs import Pair, logit_diff, make_pair_batch

LENGTHS = (9, 7, 9, 6)  # right padding inside a batch


def _pairs(seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(LENGTHS):
        a = torch.randint(3, 100, (n,), generator=g)
        b = a.clone()
        b[2:4] = torch.randint(3, 100, (2,), generator=g)
        out.append(Pair(f"r{i}", "t", "s", ")", 1, 0, a, b, int(a[1]), int(b[2]), (2, 4), (), ()))
    return out


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "gpt2"])
def test_the_graph_with_every_edge_is_the_model(arch):
    model = build(arch)
    batch = make_pair_batch(_pairs())
    runner = EdgeRunner(model, batch.mask)
    runner.check(batch.clean, batch.last)  # raises unless equal within 1e-4 relative
    _, final = runner.forward(runner.runner.embed(batch.clean))
    mine = runner.logits(final, batch.last)
    theirs = model(input_ids=batch.clean, attention_mask=batch.mask).logits[torch.arange(len(batch)), batch.last]
    torch.testing.assert_close(mine, theirs.float(), rtol=1e-4, atol=1e-5)
    assert len(runner.nodes) == 1 + runner.n * (runner.H + 1)
    assert int(runner.edge_mask().sum()) == sum(runner.upstream(t) for t in runner.targets)


def test_a_wrong_graph_is_caught():
    model = build("llama")
    batch = make_pair_batch(_pairs())
    bad = EdgeRunner(model, batch.mask)
    real = bad.forward
    # Drop the newest output from every head's input after the first layer: no longer the model.
    bad.forward = lambda emb, combine=None: real(emb, lambda t, outs, total: total - outs[-1] if len(outs) > 2 else total)
    with pytest.raises(RunnerMismatch, match="edge graph") as err:
        bad.check(batch.clean, batch.last)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arch,why", [("gemma2", "heads do not add linearly"), ("gemma3", "heads do not add linearly"),
                                      ("olmo2", "heads do not add linearly"), ("gpt_neox", "no adapter")])
def test_post_norm_and_parallel_architectures_are_refused_in_one_line(arch, why):
    model = build(arch)
    with pytest.raises(UnsupportedArchitecture, match=why) as err:
        EdgeRunner(model, torch.ones(1, 4, dtype=torch.long))
    assert "\n" not in str(err.value)


def _hooked_metric(model, batch, site, pick):
    """The model's own forward on the clean prompts with `site` (or the part `pick` selects)
    taken from the corrupted run."""
    with torch.no_grad(), capture(model, [site]) as got:
        model(input_ids=batch.corrupt, attention_mask=batch.mask)
    bad = got[site][0]

    def patch(value):
        value = value.clone()
        value[pick] = bad[pick]
        return value

    with torch.no_grad(), edit_site(model, site, patch):
        logits = model(input_ids=batch.clean, attention_mask=batch.mask).logits
    return logit_diff(logits, batch).numpy()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_cutting_every_edge_into_a_node_is_patching_its_output(arch):
    """A node all of whose inputs carry the corrupted run computes its corrupted output: the
    edge-patched run equals the model's own forward with that site patched by hooks."""
    model = build(arch)
    pairs = _pairs(1)
    batch = make_pair_batch(pairs)
    runner = EdgeRunner(model, batch.mask)
    full = runner.edge_mask()
    cases = {"L1H1": ("head.1", (Ellipsis, 1, slice(None))), "MLP0": ("mlp.0", Ellipsis),
             "L0H0": ("head.0", (Ellipsis, 0, slice(None)))}
    circuits = []
    for target in cases:
        c = full.clone()
        c[:, runner.targets.index(target)] = False
        circuits.append(c)
    values = patched_metrics(model, pairs, circuits, batch_size=len(pairs))
    clean, bad = values[-2], values[-1]
    assert abs(clean - bad).max() > 1e-2  # the patches have something to change
    for row, (site, pick) in zip(values, cases.values()):
        expected = _hooked_metric(model, batch, site, pick)
        assert abs(row - expected).max() < 1e-4 * max(1.0, abs(expected).max())
        assert abs(row - clean).max() > 1e-5  # and they do change it


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cutting_every_edge_out_of_the_input_is_the_corrupted_run(arch):
    model = build(arch)
    pairs = _pairs(2)
    runner = EdgeRunner(model, make_pair_batch(pairs).mask)
    no_input = runner.edge_mask()
    no_input[0] = False  # every node still reads every other node's current value
    only_input_to_logits = torch.zeros_like(no_input)
    only_input_to_logits[0, -1] = True  # the logits read the clean embeddings, nothing else
    cut, direct, clean, bad = patched_metrics(model, pairs, [no_input, only_input_to_logits], batch_size=3)
    assert abs(cut - bad).max() < 1e-4 * max(1.0, abs(bad).max())
    # The direct path alone: the corrupted final residual with the embedding swapped to clean.
    batch = make_pair_batch(pairs)
    with torch.no_grad(), capture(model, [f"resid.{runner.n}", "resid.0"]) as got:
        model(input_ids=batch.corrupt, attention_mask=batch.mask)
        model(input_ids=batch.clean, attention_mask=batch.mask)
    final = got[f"resid.{runner.n}"][0] - got["resid.0"][0] + got["resid.0"][1]
    logits = runner.lay.logits(final[torch.arange(len(batch)), batch.last])
    expected = (logits[torch.arange(len(batch)), batch.clean_token]
                - logits[torch.arange(len(batch)), batch.corrupt_token]).detach().numpy()
    assert abs(direct - expected).max() < 1e-4 * max(1.0, abs(expected).max())
