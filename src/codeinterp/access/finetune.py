"""A variant of a configured model by a short, seeded training run (rule `finetune`).

The variant is trained on canonical solutions of a benchmark split with the loss every
analysis uses (mean cross-entropy over the code tokens, the prompt only as context), so that
a base/variant pair exists offline and a user can study what fine-tuning does to heads.

- `method: full` trains every parameter (AdamW);
- `method: lora` trains low-rank adapters on every linear layer of the blocks (the `peft`
  package, `all-linear`) and merges them back, so the variant is a plain model of the same
  architecture and size: `compare_weights` can read it.

Reproducible: the batch order comes from the seed, dropout is off, and the run is float32 on
the CPU in one process. The held-out split is scored before and after, target by target, so
the report can state the change in held-out code loss with a paired bootstrap interval.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import polars as pl
import torch

from codeinterp.access.scoring import Target, code_losses, make_batch, targets_from_frame
from codeinterp.errors import ConfigError

log = logging.getLogger(__name__)

# No wall-clock column: the same config gives the same bytes; the rule writes its timing to
# finetune.json.
TRAINING_SCHEMA = {"step": pl.Int64, "loss": pl.Float64, "n_targets": pl.Int64, "learning_rate": pl.Float64}
HELDOUT_SCHEMA = {"target_id": pl.Utf8, "problem_id": pl.Utf8, "base_loss": pl.Float64, "variant_loss": pl.Float64,
                  "n_code_tokens": pl.Int64}


def training_targets(problems: pl.DataFrame, tokenizer, chat: bool, max_tokens: int) -> pl.DataFrame:
    """Canonical-solution targets of `problems` (code mode) that fit in `max_tokens`."""
    from codeinterp.benchmarks.targets import canonical_targets

    rows = [t for t in canonical_targets(problems, tokenizer, "code", chat) if len(t["input_ids"]) <= max_tokens]
    if not rows:
        raise ConfigError(f"finetune: none of {problems.height} problems has a canonical solution that fits in "
                          f"{max_tokens} tokens (raise max_tokens)")
    return pl.DataFrame([{k: r[k] for k in ("target_id", "problem_id", "input_ids", "code_start", "code_end")}
                         for r in rows])


def _lora(model, settings: dict):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - peft is a dependency
        raise ConfigError("finetune.method: lora needs the peft package (pip install peft)") from err
    cfg = LoraConfig(r=settings["lora_rank"], lora_alpha=settings["lora_alpha"], lora_dropout=0.0,
                     target_modules="all-linear", bias="none")
    return get_peft_model(model, cfg)


def _no_dropout(model) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _learning_rate(step: int, settings: dict) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to 10% of the peak."""
    peak, steps, warm = settings["learning_rate"], settings["steps"], settings["warmup_steps"]
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _batch_order(n: int, steps: int, batch_size: int, seed: int) -> list[list[int]]:
    """Indices of each step's batch: seeded passes over a permutation of the targets."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order.extend(rng.permutation(n).tolist())
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


@torch.no_grad()
def heldout_losses(model, targets: list[Target], batch_size: int, pad_id: int) -> dict[str, float]:
    out = {}
    for start in range(0, len(targets), batch_size):
        chunk = targets[start:start + batch_size]
        losses = code_losses(model, make_batch(chunk, pad_id))
        out.update(zip((t.target_id for t in chunk), losses.double().tolist()))
    return out


def train(model, targets: list[Target], settings: dict, seed: int, pad_id: int):
    """Train `model` in place (merged back for LoRA); returns (model, training table)."""
    torch.manual_seed(seed)
    _no_dropout(model)
    lora = settings["method"] == "lora"
    net = _lora(model, settings) if lora else model
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings["learning_rate"], weight_decay=settings["weight_decay"])
    model.train()
    rows = []
    for step, idx in enumerate(_batch_order(len(targets), settings["steps"], settings["batch_size"], seed)):
        lr = _learning_rate(step, settings)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = make_batch([targets[i] for i in idx], pad_id)
        # LoRA layers sit inside `model`'s own modules: the model's forward trains them.
        loss = code_losses(model, batch).mean()
        if not torch.isfinite(loss):
            raise RuntimeError(f"finetune: loss is {loss.item()} at step {step}; lower learning_rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings["max_grad_norm"])
        opt.step()
        rows.append({"step": step, "loss": float(loss.detach()), "n_targets": len(idx), "learning_rate": lr})
        log.info("finetune step %d/%d: loss %.4f", step + 1, settings["steps"], rows[-1]["loss"])
    if lora:
        model = net.merge_and_unload()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, pl.DataFrame(rows, schema=TRAINING_SCHEMA)


def finetune(model, tokenizer, train_frame: pl.DataFrame, heldout_frame: pl.DataFrame, settings: dict, seed: int):
    """Train a copy of `model` (modified in place); returns (model, training table, held-out table)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_targets, held = targets_from_frame(train_frame), targets_from_frame(heldout_frame)
    base = heldout_losses(model, held, settings["batch_size"], pad_id)
    model, training = train(model, train_targets, settings, seed, pad_id)
    variant = heldout_losses(model, held, settings["batch_size"], pad_id)
    heldout = pl.DataFrame(
        [{"target_id": t.target_id, "problem_id": pid, "base_loss": base[t.target_id],
          "variant_loss": variant[t.target_id], "n_code_tokens": t.n_scored}
         for t, pid in zip(held, heldout_frame["problem_id"].to_list())],
        schema=HELDOUT_SCHEMA,
    ).sort("target_id")
    return model, training, heldout
