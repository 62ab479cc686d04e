"""The `layer_lens` stage: logit-lens statistics per layer on the code tokens.

The lens (a map from a residual state to logits) is kept apart from the statistics computed
on its output, as tuned-lens does. Layer l means the residual stream after l blocks
(l = 0 is the embeddings, l = n_layers is the model's own output, whose hidden state
transformers has already passed through the final norm).
"""

from __future__ import annotations

import polars as pl
import torch

from codeinterp.access.scoring import Batch, Target, batches
from codeinterp.access.sites import logit_lens

TOKEN_SCHEMA = {
    "target_id": pl.Utf8,
    "layer": pl.Int64,
    "position": pl.Int64,
    "token_id": pl.Int64,
    "entropy": pl.Float64,
    "cross_entropy": pl.Float64,
    "top1_correct": pl.Boolean,
    "kl_to_final": pl.Float64,
}


def statistics(logits: torch.Tensor, labels: torch.Tensor, final_logp: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Entropy (nats), cross-entropy of the true token, top-1 hit and KL(final || lens)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    ce = -logp.gather(-1, labels[:, None])[:, 0]
    out = {"entropy": entropy, "cross_entropy": ce, "top1_correct": logits.argmax(-1) == labels}
    if final_logp is not None:
        out["kl_to_final"] = (final_logp.exp() * (final_logp - logp)).sum(-1)
    return out


@torch.inference_mode()
def lens_batch(model, batch: Batch) -> pl.DataFrame:
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    hidden = out.hidden_states
    last = len(hidden) - 1
    final_logp = torch.log_softmax(logit_lens(model, hidden[last][batch.rows, batch.positions], is_last=True), -1)
    frames = []
    for layer in range(last + 1):
        logits = logit_lens(model, hidden[layer][batch.rows, batch.positions], is_last=layer == last)
        stats = statistics(logits, batch.labels, final_logp)
        frames.append(
            pl.DataFrame(
                {
                    "target_id": [batch.target_ids[i] for i in batch.owner.tolist()],
                    "layer": [layer] * len(batch.labels),
                    "position": (batch.positions + 1).tolist(),
                    "token_id": batch.labels.tolist(),
                    **{k: v.tolist() for k, v in stats.items()},
                },
                schema=TOKEN_SCHEMA,
            )
        )
    return pl.concat(frames)


def layer_lens(model, targets: list[Target], batch_size: int, pad_id: int = 0) -> pl.DataFrame:
    """Per-token lens statistics for every layer, sorted for byte-identical output."""
    frames = [lens_batch(model, b) for b in batches(targets, batch_size, pad_id)]
    if not frames:
        return pl.DataFrame(schema=TOKEN_SCHEMA)
    return pl.concat(frames).sort("target_id", "layer", "position")


def layer_summary(tokens: pl.DataFrame) -> pl.DataFrame:
    """Per layer: means over targets of each target's mean over its code tokens."""
    per_target = tokens.sort("target_id", "layer", "position").group_by("target_id", "layer", maintain_order=True).agg(
        pl.col("entropy").mean(), pl.col("cross_entropy").mean(),
        pl.col("top1_correct").cast(pl.Float64).mean().alias("top1_accuracy"), pl.col("kl_to_final").mean(),
    )
    return (
        per_target.group_by("layer", maintain_order=True)
        .agg(
            pl.col("entropy").mean(), pl.col("cross_entropy").mean(), pl.col("top1_accuracy").mean(),
            pl.col("kl_to_final").mean(), pl.len().alias("n_targets"),
        )
        .sort("layer")
    )
