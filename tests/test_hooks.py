"""Activation sites read by hooks add up to the model's own forward, for every adapter."""

import pytest
import torch

from archs import ARCHS, build
from codeinterp.access import hooks
from codeinterp.access.architectures import RunnerMismatch, layout


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


@pytest.mark.parametrize("arch", ARCHS)
def test_sites_decompose_the_forward(arch):
    model = build(arch)
    ids, mask = _inputs()
    hooks.check_decomposition(model, ids, mask)
    lay = layout(model)
    with hooks.capture(model, ["head.1", "resid.0"]) as got:
        model(input_ids=ids, attention_mask=mask)
    assert got["head.1"][0].shape == (2, 9, lay.n_heads, lay.head_dim)
    # resid.0 is what the first block reads: HF's hidden_states[0]
    ref = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[0]
    torch.testing.assert_close(got["resid.0"][0], ref)


def test_wrong_site_is_caught(monkeypatch):
    # Reading Gemma 2's attention module instead of its post-attention norm breaks the sum.
    model = build("gemma2")
    ids, mask = _inputs()
    monkeypatch.setattr(hooks, "_contribution_module",
                        lambda m, l, half: getattr(layout(m).blocks[l], "self_attn" if half == "attn" else "mlp"))
    with pytest.raises(RunnerMismatch, match="gemma2"):
        hooks.check_decomposition(model, ids, mask)


@pytest.mark.parametrize("layer", [0, 1, 3])
def test_edit_residual(layer):
    model = build("llama")
    ids, mask = _inputs()
    base = model(input_ids=ids, attention_mask=mask).logits
    with hooks.edit_residual(model, layer, lambda h: h):
        same = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(same, base)
    # Writing a captured clean state back reproduces it; writing zeros after the last block
    # leaves only the norm's output of zeros, i.e. the same logits at every position.
    n = len(layout(model).blocks)
    with hooks.edit_residual(model, n, torch.zeros_like):
        flat = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(flat[0, 0], flat[0, -1])
    with hooks.capture(model, [f"resid.{layer}"]) as got:
        model(input_ids=ids, attention_mask=mask)
    shift = torch.randn(got[f"resid.{layer}"][0].shape[-1])
    with hooks.edit_residual(model, layer, lambda h: h + shift), hooks.capture(model, [f"resid.{layer}"]) as seen:
        model(input_ids=ids, attention_mask=mask)
    if layer > 0:  # the capture hook runs after the edit on the same output
        torch.testing.assert_close(seen[f"resid.{layer}"][0], got[f"resid.{layer}"][0] + shift)


def test_site_names_and_bad_names():
    model = build("llama")
    n = len(layout(model).blocks)
    assert hooks.site_names(model, ("resid",)) == [f"resid.{l}" for l in range(n + 1)]
    assert len(hooks.site_names(model, ("attn", "mlp", "head"))) == 3 * n
    with pytest.raises(ValueError, match="kind.layer"):
        hooks.parse_site("residual.3")
    with pytest.raises(ValueError, match="blocks"):
        with hooks.capture(model, [f"attn.{n}"]):
            pass


@pytest.mark.parametrize("kind", ["resid", "attn", "mlp", "head"])
def test_edit_site_identity_and_write(kind):
    """Writing a site's own value back changes nothing; writing a shifted value is what a
    later capture of the same site reads, and it changes the output."""
    model = build("llama")
    ids = torch.tensor([[3, 7, 11, 5, 9]])
    name = f"{kind}.1"
    plain = model(input_ids=ids).logits
    with hooks.edit_site(model, name, lambda v: v):
        same = model(input_ids=ids).logits
    torch.testing.assert_close(same, plain)
    with hooks.edit_site(model, name, lambda v: v + 1.0), hooks.capture(model, [name]) as got:
        moved = model(input_ids=ids).logits
    with hooks.capture(model, [name]) as base:
        model(input_ids=ids)
    torch.testing.assert_close(got[name][0], base[name][0] + 1.0)
    assert not torch.allclose(moved, plain)
