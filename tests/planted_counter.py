"""A hand-built bracket counter whose answer runs through one known path (issue 8, Checks).

A tiny Llama (2 layers, 4 query heads, 2 KV heads, head_dim 16, hidden 64) with the byte
tokenizer, every weight set by hand. Residual dimensions:

    BIAS   (0)  constant C in every token's embedding (keeps every RMSNorm scale near 8 / C)
    PAREN  (1)  +1 for `(`, -1 for `)`, 0 for every other token
    COUNT  (2)  written by the planted head
    CLOSER (3)  written by the planted MLP

The path (PLANTED_PATH):
- input -> head PLANTED_HEAD = (0, 2): zero query and key weights, so it attends uniformly to
  the causal prefix; its value reads PAREN and its output writes COUNT_GAIN x that into COUNT.
  At position t COUNT = COUNT_GAIN * k * (openers - closers up to t) / (t + 1), k = 8/sqrt(C^2+1)
  (the RMS-normed size of PAREN): proportional to the still-open count for a fixed length.
- head -> MLP PLANTED_MLP = 1: one SiLU unit, gate = GATE * (normed COUNT) - THRESHOLD * (normed
  BIAS), so it is about -THRESHOLD (silu ~ 0) when nothing is open and large from one open
  bracket on; its output writes into CLOSER.
- MLP -> logits: `)` reads +CLOSER_GAIN x CLOSER, `\\n` reads -CLOSER_GAIN x CLOSER plus a
  default margin from BIAS (so `\\n` wins when nothing is open).
- head -> logits (weak, DIRECT_GAIN): `)` also reads +COUNT, `\\n` -COUNT directly, so the head
  has a direct logit effect that grows with the open count (what head_roles measures); it
  carries about 1% of the pairs' logit-difference gap (EAP-IG's 3-edge circuit: 0.990).
Every other head and MLP has zero output weights. Head 3 shares the planted head's KV head, so
its z (the o_proj input) equals the planted head's: a method that reads z without the output
weights would wrongly credit it. Every norm weight
is 1; the model has no biases.

The pairs (`counter_pairs`) follow rule task_pairs' format for brackets with the byte
tokenizer: the clean prompt leaves `depth` openers unmatched (after `n_closed` closed pairs and
filler characters, FIXED_LENGTH characters in all), the ids append the answer prefix `)` x
depth, so at the last position nothing is open in the clean run (answer `\\n`, clean_token)
and one bracket is open in the corrupted run, where one filler character became `(`
(answer `)`, corrupt_token). Known answers (see `expected_patching`): the clean logit difference
is > 0 and the corrupted one < 0 on every pair; patching localises the input at the differing
position, then (from layer 1 on) the last position, the planted head, attn.0 and mlp.1 at the
last position; the circuit is PLANTED_PATH.

`open_pairs` ends the clean prompt with `depth` openers still open (answer `)`), the corrupted
prompt replacing those openers by fillers (answer `\\n`): there the planted head's direct
logit attribution is positive and rises with depth, the known answer for head_roles.
"""

from __future__ import annotations

import random

import polars as pl
import torch

from codeinterp.access import models
from codeinterp.causal.pairs import PAIR_COLUMNS

N_LAYERS, N_HEADS, N_KV, HEAD_DIM, HIDDEN, INTER = 2, 4, 2, 16, 64, 16
PLANTED_HEAD = (0, 2)
PLANTED_MLP = 1
BIAS, PAREN, COUNT, CLOSER = 0, 1, 2, 3
C = 10.0  # the BIAS value in every embedding
COUNT_GAIN = 10.0
GATE, THRESHOLD = 100.0, 10.0  # gate ~ GATE * normed COUNT - THRESHOLD (normed BIAS is about 8)
CLOSER_GAIN = 5.0  # logit of `)` per unit of normed CLOSER (minus that for `\n`)
MARGIN = 2.0  # default logit of `\n` (from BIAS)
DIRECT_GAIN = 0.25  # logit of `)` per unit of normed COUNT (minus that for `\n`)
FIXED_LENGTH = 20  # characters of every clean prompt of counter_pairs
FILLER = "abcdefghijkmnopqrstuvwxyz =.,:+"

PLANTED_PATH = {("input", "L0H2"), ("L0H2", "MLP1"), ("MLP1", "logits"), ("L0H2", "logits")}
MAIN_PATH = PLANTED_PATH - {("L0H2", "logits")}  # the strong edges; the direct one is weak


def _id(tok, ch: str) -> int:
    ids = tok(ch, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{ch!r} is not one token"
    return ids[0]


@torch.no_grad()
def build_counter_model():
    """(model, tokenizer): the byte tokenizer and the hand-built counter described above."""
    spec = {"architecture": "llama", "n_layers": N_LAYERS, "n_heads": N_HEADS, "n_kv_heads": N_KV,
            "head_dim": HEAD_DIM, "hidden_size": HIDDEN, "intermediate_size": INTER, "seed": 0}
    model, tok = models.build_tiny_random(spec)
    for p in model.parameters():
        p.zero_()
    inner = model.model
    open_id, close_id, newline = _id(tok, "("), _id(tok, ")"), _id(tok, "\n")
    emb = inner.embed_tokens.weight
    emb[:, BIAS] = C
    emb[open_id, PAREN] = 1.0
    emb[close_id, PAREN] = -1.0
    for blk in inner.layers:
        blk.input_layernorm.weight.fill_(1.0)
        blk.post_attention_layernorm.weight.fill_(1.0)
    inner.norm.weight.fill_(1.0)
    layer, head = PLANTED_HEAD
    attn = inner.layers[layer].self_attn
    kv = head // (N_HEADS // N_KV)
    attn.v_proj.weight[kv * HEAD_DIM, PAREN] = 1.0
    attn.o_proj.weight[COUNT, head * HEAD_DIM] = COUNT_GAIN
    mlp = inner.layers[PLANTED_MLP].mlp
    bias_normed = 8.0  # normed BIAS when the other dimensions are small next to C
    mlp.gate_proj.weight[0, COUNT] = GATE
    mlp.gate_proj.weight[0, BIAS] = -THRESHOLD / bias_normed
    mlp.up_proj.weight[0, BIAS] = 1.0 / bias_normed
    mlp.down_proj.weight[CLOSER, 0] = 0.1
    head_w = model.lm_head.weight
    head_w[close_id, CLOSER] = CLOSER_GAIN
    head_w[newline, CLOSER] = -CLOSER_GAIN
    head_w[close_id, COUNT] = DIRECT_GAIN
    head_w[newline, COUNT] = -DIRECT_GAIN
    head_w[newline, BIAS] = MARGIN / bias_normed
    model.eval()
    return model, tok


def _balanced(rng: random.Random, pairs: int) -> str:
    """A random well-nested string of `pairs` bracket pairs."""
    out, open_, left = [], 0, pairs
    while left or open_:
        if left and (not open_ or rng.random() < 0.5):
            out.append("(")
            left -= 1
            open_ += 1
        else:
            out.append(")")
            open_ -= 1
    return "".join(out)


def _prompt(rng: random.Random, depth: int, n_closed: int, length: int) -> tuple[str, list[int], list[int]]:
    """A `length`-character line: `n_closed` closed pairs spread around `depth` unmatched
    openers, fillers between. Returns (text, unmatched opener positions, closed-pair positions)."""
    split = sorted(rng.randint(0, n_closed) for _ in range(depth))
    counts = [b - a for a, b in zip([0] + split, split + [n_closed])]
    segments = [_balanced(rng, c) for c in counts]
    skeleton = "(".join(segments)  # brackets only: 2 n_closed + depth characters
    slots = sorted(rng.sample(range(length), len(skeleton)))
    chars = [rng.choice(FILLER) for _ in range(length)]
    for s, ch in zip(slots, skeleton):
        chars[s] = ch
    text = "".join(chars)
    stack, opened, closed = [], [], []
    for i, ch in enumerate(text):
        if ch == "(":
            stack.append(i)
        elif ch == ")":
            closed += [stack.pop(), i]
    opened = stack
    return text, opened, sorted(closed)


def _row(tok, pair_id, depth, n_closed, clean, corrupt, clean_answer, corrupt_answer, prefix, good, bad, span,
         opened, closed) -> dict:
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    clean_ids, corrupt_ids = ids(clean + prefix), ids(corrupt + prefix)
    assert len(clean_ids) == len(corrupt_ids) == len(clean) + len(prefix)  # one token per character
    return {"pair_id": pair_id, "task": "brackets", "source": "planted", "kind": ")", "depth": depth,
            "n_closed": n_closed, "clean_prompt": clean, "corrupt_prompt": corrupt, "clean_answer": clean_answer,
            "corrupt_answer": corrupt_answer, "answer_prefix": prefix, "clean_ids": clean_ids,
            "corrupt_ids": corrupt_ids, "clean_token": _id(tok, good), "corrupt_token": _id(tok, bad),
            "clean_token_text": good, "corrupt_token_text": bad, "span_start": span[0], "span_end": span[1],
            "open_positions": opened, "closed_positions": closed, "kept": True, "drop_reason": ""}


def _frame(rows: list[dict]) -> pl.DataFrame:
    schema = {"clean_ids": pl.List(pl.Int64), "corrupt_ids": pl.List(pl.Int64),
              "open_positions": pl.List(pl.Int64), "closed_positions": pl.List(pl.Int64)}
    return pl.DataFrame(rows, schema_overrides=schema).select(PAIR_COLUMNS)


def counter_pairs(tok, n: int = 24, seed: int = 0, max_depth: int = 4, max_closed: int = 3) -> pl.DataFrame:
    """Pairs in the pairs-table format (PAIR_COLUMNS): depth 1..max_depth and n_closed
    0..max_closed cycle; the corrupted prompt turns one filler character into `(`."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        depth, n_closed = 1 + i % max_depth, (i // max_depth) % (max_closed + 1)
        clean, opened, closed = _prompt(rng, depth, n_closed, FIXED_LENGTH)
        at = rng.choice([j for j, ch in enumerate(clean) if ch not in "()"])
        corrupt = clean[:at] + "(" + clean[at + 1:]
        prefix = ")" * depth
        rows.append(_row(tok, f"brackets/planted/{i:04d}", depth, n_closed, clean, corrupt, prefix + "\n",
                         prefix + ")\n", prefix, "\n", ")", (at, at + 1), opened, closed))
    return _frame(rows)


def open_pairs(tok, n: int = 24, seed: int = 0, max_depth: int = 4, max_closed: int = 3) -> pl.DataFrame:
    """Pairs whose clean prompt ends with `depth` openers still open (answer `)`); the corrupted
    prompt replaces those openers by fillers (answer `\\n`). No answer prefix."""
    rng = random.Random(seed + 1)
    rows = []
    for i in range(n):
        depth, n_closed = 1 + i % max_depth, (i // max_depth) % (max_closed + 1)
        clean, opened, closed = _prompt(rng, depth, n_closed, FIXED_LENGTH)
        chars = list(clean)
        for j in opened:
            chars[j] = rng.choice(FILLER)
        corrupt = "".join(chars)
        rows.append(_row(tok, f"brackets/planted-open/{i:04d}", depth, n_closed, clean, corrupt,
                         ")" * depth + "\n", "\n", "", ")", "\n", (opened[0], opened[-1] + 1), opened, closed))
    return _frame(rows)


def write_pairs(table: pl.DataFrame, path) -> str:
    """Write a pairs table where `read_pairs` expects one; returns the path."""
    table.write_parquet(path)
    return str(path)


def expected_patching(pair_row: dict, n_layers: int = N_LAYERS) -> dict:
    """The known denoising answers of one counter_pairs row, normalised (clean = 1, corrupted
    = 0): {(site, layer, position): value} for the residual stream, attention and MLP outputs at
    every position, and {("head", layer, head): value} for every head (all positions).

    Only the input at the differing position carries the corruption; the planted head moves it
    to every later position, and only the last position is read. So resid.0 restores everything
    at the differing position; resid.1 and resid.2, attn.0 and mlp.1 restore everything at the
    last position (mlp.1 restores all but the head's weak direct part, see DIRECT_GAIN; the test
    gives that one a tolerance); every other (site, position) and every other head: 0."""
    T = len(pair_row["clean_ids"])
    at, last = pair_row["span_start"], T - 1
    out = {}
    for pos in range(T):
        out[("resid", 0, pos)] = 1.0 if pos == at else 0.0
        for layer in range(1, n_layers + 1):
            out[("resid", layer, pos)] = 1.0 if pos == last else 0.0
        out[("attn", 0, pos)] = 1.0 if pos == last else 0.0
        out[("attn", 1, pos)] = 0.0
        out[("mlp", 0, pos)] = 0.0
        out[("mlp", 1, pos)] = 1.0 if pos == last else 0.0
    for layer in range(n_layers):
        for h in range(N_HEADS):
            out[("head", layer, h)] = 1.0 if (layer, h) == PLANTED_HEAD else 0.0
    return out
