import copy

import pytest
import torch

from codeinterp.access import heads, sites


def logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_full_mask_changes_nothing(tiny, batch):
    model, _ = tiny
    base = logits(model, *batch)
    with heads.head_intervention(model, heads.full_mask(model)):
        assert torch.equal(logits(model, *batch), base)


def test_mask_hook_equals_zeroed_weights(tiny, batch):
    model, _ = tiny
    removed = [(0, 1), (2, 3), (1, 0)]
    with heads.head_intervention(model, heads.mask_from_heads(model, removed)):
        hooked = logits(model, *batch)
    pruned = copy.deepcopy(model)
    heads.zero_heads_in_weights(pruned, removed)
    assert torch.allclose(hooked, logits(pruned, *batch), atol=1e-5)
    assert not torch.allclose(hooked, logits(model, *batch), atol=1e-3)


def test_batch_axis_masks_equal_separate_runs(tiny, batch):
    model, _ = tiny
    ids, mask = batch
    one = ids[:1].expand(3, -1)
    one_mask = mask[:1].expand(3, -1)
    masks = torch.stack([heads.mask_from_heads(model, r) for r in ([], [(0, 0)], [(1, 2), (2, 1)])])
    with heads.head_intervention(model, masks):
        together = logits(model, one, one_mask)
    for i in range(3):
        with heads.head_intervention(model, masks[i]):
            alone = logits(model, ids[:1], mask[:1])
        assert torch.allclose(together[i], alone[0], atol=1e-5)


def test_mean_fill_replaces_head_output(tiny, batch):
    model, _ = tiny
    lay = sites.layout(model)
    fill = torch.randn(len(lay.blocks), lay.n_heads, lay.head_dim)
    seen = {}
    proj = sites.head_out_proj(model, 1)
    with heads.head_intervention(model, heads.mask_from_heads(model, [(1, 2)]), fill):
        # Registered after the intervention's hook, so it sees the intervened input.
        handle = proj.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].clone()))
        try:
            logits(model, *batch)
        finally:
            handle.remove()
    got = seen["x"].view(*seen["x"].shape[:-1], lay.n_heads, lay.head_dim)
    assert torch.allclose(got[..., 2, :], fill[1, 2].expand_as(got[..., 2, :]))


def test_bad_mask_shape_is_refused(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="head mask shape"):
        with heads.head_intervention(model, torch.ones(2, 2)):
            pass
