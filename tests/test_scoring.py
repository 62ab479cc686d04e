import pytest
import torch

import handbuilt
from codeinterp.access import heads
from codeinterp.access.scoring import Target, batches, code_losses, make_batch


def make_targets(tok):
    return handbuilt.snippet_targets(tok, 3)


def reference_loss(model, t: Target) -> float:
    ids = torch.tensor([t.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    ce = torch.nn.functional.cross_entropy(logits[t.code_start - 1 : t.code_end - 1], ids[0, t.code_start : t.code_end])
    return ce.item()


def test_code_losses_equal_full_forward_per_target(tiny):
    model, tok = tiny
    targets = make_targets(tok)
    with torch.no_grad():
        got = code_losses(model, make_batch(targets, tok.pad_token_id))
    for t, value in zip(targets, got):
        assert value.item() == pytest.approx(reference_loss(model, t), abs=1e-5)


def test_batches_cover_every_target_once(tiny):
    _, tok = tiny
    targets = make_targets(tok)
    seen = [tid for b in batches(targets, 2) for tid in b.target_ids]
    assert sorted(seen) == sorted(t.target_id for t in targets)


def test_head_mask_changes_loss(tiny):
    model, tok = tiny
    b = make_batch(make_targets(tok))
    with torch.no_grad():
        base = code_losses(model, b)
        knocked = code_losses(model, b, torch.zeros(*heads.full_mask(model).shape))
    assert not torch.allclose(base, knocked)


def test_target_span_must_fit():
    with pytest.raises(ValueError, match="code span"):
        Target("bad", (1, 2, 3), 0, 2)
