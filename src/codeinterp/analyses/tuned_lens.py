"""The tuned lens (Belrose et al. 2023): one affine translator per layer before the model's readout.

lens_l(h) = readout(h + A_l h + b_l), with A_l, b_l zero-initialised (so training starts at the
logit lens) and the readout (final norm, unembedding, softcapping) frozen. The loss is
KL(final || lens) per token, averaged over tokens, where "final" is the readout of the last
residual state resid.{n}, i.e. the model's own output distribution.

Optimisation follows the tuned-lens package's defaults (tuned_lens/scripts/ingredients.py and
train_loop.py): SGD with Nesterov momentum, the learning rate scaled by (1 - momentum) because
PyTorch's momentum effectively multiplies it by 1 / (1 - momentum), PyTorch's (coupled) weight
decay on A and b (hence toward the identity translator), gradient-norm clipping, and a linear
decay of the learning rate to zero over the steps with no warm-up (the package's choice for SGD).
Differences, on purpose: each layer is trained on its own (the package clips the norm of all
layers' gradients together), and each step draws a seeded random subset of cached tokens
instead of streaming documents; the package's per-step `normalize_` centring is not done.

Library functions take tensors; the `tuned_lens` script reads the activation cache.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import torch
from sklearn.linear_model import Ridge

from codeinterp.access.architectures import layout
from codeinterp.errors import ConfigError
from codeinterp.uncertainty import Bootstrap, summarise_columns


class Translator(torch.nn.Module):
    """h -> h + A h + b; A = b = 0 is the identity (the logit lens)."""

    def __init__(self, d: int):
        super().__init__()
        self.linear = torch.nn.Linear(d, d)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.linear(h)


def frozen_readout(model):
    """The model's readout of a residual state (float32 logits), with every model weight frozen
    so that gradients reach only the translator."""
    model.requires_grad_(False)
    return layout(model).logits


def trained_layers(layers: list[int] | None, n: int) -> list[int]:
    """The layers to train (None: every layer below the last, whose lens is the identity)."""
    chosen = list(range(n)) if layers is None else sorted(set(layers))
    bad = [l for l in chosen if not 0 <= l < n]
    if bad:
        raise ConfigError(f"tuned_lens.layers: {bad} not below the last layer ({n}); the last layer's lens is the identity")
    return chosen


def split_problems(problem_ids: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split of the distinct problems into (train, held-out), both sorted; each side keeps
    at least one problem when there are two or more."""
    problems = sorted(set(problem_ids))
    if len(problems) < 2:
        raise ValueError(f"a train/held-out split needs two problems, got {len(problems)}")
    order = np.random.default_rng(seed).permutation(len(problems))
    n_test = min(max(1, int(round(test_fraction * len(problems)))), len(problems) - 1)
    test = sorted(problems[i] for i in order[:n_test])
    train = sorted(problems[i] for i in order[n_test:])
    return train, test


def kl_per_token(lens_logits: torch.Tensor, final_logp: torch.Tensor) -> torch.Tensor:
    """KL(final || lens) in nats for each row."""
    logp = torch.log_softmax(lens_logits.float(), -1)
    return (final_logp.exp() * (final_logp - logp)).sum(-1)


def ridge_init(x: torch.Tensor, final: torch.Tensor, alpha: float) -> Translator:
    """Closed-form warm start: ridge regression of (final - x) on x, so that x + A x + b
    approximates the final residual and the penalty pulls A toward 0 (the identity translator)."""
    fit = Ridge(alpha=alpha, fit_intercept=True).fit(x.double().numpy(), (final - x).double().numpy())
    t = Translator(x.shape[1])
    with torch.no_grad():
        t.linear.weight.copy_(torch.from_numpy(fit.coef_).float())
        t.linear.bias.copy_(torch.from_numpy(np.asarray(fit.intercept_)).float())
    return t


def _step_loss(readout, translator, x, final, chunk: int) -> float:
    """Accumulate gradients of the mean KL over the rows of x, in chunks to bound memory
    (the full-vocabulary logits dominate it)."""
    total = 0.0
    for s in range(0, len(x), chunk):
        xs, fs = x[s : s + chunk], final[s : s + chunk]
        with torch.no_grad():
            final_logp = torch.log_softmax(readout(fs), -1)
        loss = kl_per_token(readout(translator(xs)), final_logp).sum() / len(x)
        loss.backward()
        total += float(loss.detach())
    return total


def train_translator(readout, x: torch.Tensor, final: torch.Tensor, *, steps: int, tokens_per_step: int,
                     lr: float = 1.0, momentum: float = 0.9, weight_decay: float = 1e-3, clip: float = 1.0,
                     seed: int = 0, init: Translator | None = None, chunk: int = 1024) -> tuple[Translator, list[float]]:
    """Train one layer's translator on residuals x [N, D] against the final residuals [N, D] of
    the same tokens; returns the translator and the training loss per step."""
    translator = init if init is not None else Translator(x.shape[1])
    opt = torch.optim.SGD(translator.parameters(), lr=lr * (1 - momentum), momentum=momentum, nesterov=True,
                          weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1.0 - step / steps))
    gen = torch.Generator().manual_seed(seed)
    per_step = min(tokens_per_step, len(x))
    history = []
    for _ in range(steps):
        idx = torch.randperm(len(x), generator=gen)[:per_step]
        opt.zero_grad(set_to_none=False)
        history.append(_step_loss(readout, translator, x[idx], final[idx], chunk))
        torch.nn.utils.clip_grad_norm_(translator.parameters(), clip)
        opt.step()
        sched.step()
    return translator, history


@torch.no_grad()
def lens_kl(readout, x: torch.Tensor, final: torch.Tensor, translator: Translator | None = None,
            chunk: int = 1024) -> torch.Tensor:
    """KL(final || lens) per token for the logit lens (translator None) or a tuned lens."""
    return both_kl(readout, x, final, translator, chunk)[0 if translator is None else 1]


@torch.no_grad()
def both_kl(readout, x: torch.Tensor, final: torch.Tensor, translator: Translator | None = None,
            chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token KL(final || lens) of the logit lens and of the tuned lens (None without a
    translator), sharing each chunk's output distribution: every full-vocabulary readout is a
    large share of the CPU cost."""
    logit, tuned = [], []
    for s in range(0, len(x), chunk):
        xs = x[s : s + chunk]
        final_logp = torch.log_softmax(readout(final[s : s + chunk]), -1)
        logit.append(kl_per_token(readout(xs), final_logp))
        if translator is not None:
            tuned.append(kl_per_token(readout(translator(xs)), final_logp))
    empty = torch.zeros(0)
    return (torch.cat(logit) if logit else empty,
            (torch.cat(tuned) if tuned else empty) if translator is not None else None)


def training_summary(tokens: pl.DataFrame, boot: Bootstrap) -> pl.DataFrame:
    """Per (layer, split) from per-token rows (problem_id, layer, split, logit_kl, tuned_kl): each
    problem's mean over its tokens, then the mean over problems with a bootstrap interval over
    problems; kl_change = tuned - logit (negative: the tuned lens is closer to the output)."""
    tokens = tokens.with_columns((pl.col("tuned_kl") - pl.col("logit_kl")).alias("kl_change"))
    values = ["logit_kl", "tuned_kl", "kl_change"]
    frames = []
    # The two splits have different problems, and the bootstrap wants the same units in every group.
    for (split,), part in tokens.group_by("split", maintain_order=True):
        per_problem = part.group_by("problem_id", "layer").agg(pl.col(*values).mean(), pl.len().alias("n_tokens"))
        s = summarise_columns(per_problem, "problem_id", ["layer"], values, boot)
        counts = per_problem.group_by("layer").agg(pl.col("n_tokens").sum().cast(pl.Int64))
        frames.append(s.rename({"n": "n_problems"}).join(counts, on="layer", how="left")
                      .with_columns(pl.lit(split).alias("split")))
    if not frames:
        return pl.DataFrame(schema={"layer": pl.Int64, "split": pl.Utf8, "tuned_below_logit": pl.Boolean})
    out = pl.concat(frames).with_columns((pl.col("tuned_kl") <= pl.col("logit_kl")).alias("tuned_below_logit"))
    return out.select("layer", "split", pl.exclude("layer", "split")).sort("layer", "split")


def save_translators(translators: dict[int, Translator], path, metadata: dict) -> None:
    """Write {layer: translator} as safetensors (`{layer}.weight`, `{layer}.bias`), atomically."""
    from pathlib import Path

    from safetensors.torch import save_file

    tensors = {}
    for layer, t in sorted(translators.items()):
        tensors[f"{layer}.weight"] = t.linear.weight.detach().contiguous()
        tensors[f"{layer}.bias"] = t.linear.bias.detach().contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # One metadata entry: safetensors writes a map of several in no fixed order, so the same
    # translators would not give the same bytes.
    save_file(tensors, str(tmp), metadata={"codeinterp": json.dumps(metadata, sort_keys=True)})
    tmp.replace(path)


def load_translators(path) -> tuple[dict[int, Translator], dict]:
    """The translators by layer and the file's metadata (the split and training settings)."""
    from safetensors import safe_open

    translators = {}
    with safe_open(str(path), framework="pt") as f:
        metadata = json.loads((f.metadata() or {}).get("codeinterp", "{}"))
        layers = sorted({int(k.split(".")[0]) for k in f.keys()})
        for layer in layers:
            w = f.get_tensor(f"{layer}.weight")
            t = Translator(w.shape[0])
            with torch.no_grad():
                t.linear.weight.copy_(w)
                t.linear.bias.copy_(f.get_tensor(f"{layer}.bias"))
            translators[layer] = t.requires_grad_(False)
    return translators, metadata
