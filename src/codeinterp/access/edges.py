"""The model as a graph of components, for edge-level circuit methods (EAP-IG, edge patching).

Upstream nodes write into the residual stream: the embeddings (`input`), every attention head
(its output through its slice of the output projection) and every MLP. Downstream nodes read
it: every head (one copy of the residual stream per head, feeding its queries, keys and values),
every MLP, and the logits. Each downstream node's input is computed here as the sum of its
upstream nodes' outputs, so an analysis can give every edge its own value (`combine`).

The forward reuses the model's own modules through `BlockRunner`: the attention module runs
once per layer on the heads' copies stacked on the batch axis, and each head's output is read
from its own copy. The output projection's bias (GPT-2) is a constant added to every input.
Architectures whose heads do not add linearly into the residual stream (a norm after the
attention or the MLP: Gemma 2/3, OLMo 2) are refused. `EdgeRunner.check` compares the sum-of-
everything forward with the model's own on the first batch of every run.
"""

from __future__ import annotations

import torch

from codeinterp.access.architectures import BlockRunner, RunnerMismatch, _refuse, head_out_proj, head_out_weights, layout
from codeinterp.access.hooks import edit_site


class EdgeRunner:
    def __init__(self, model, attention_mask: torch.Tensor):
        lay = layout(model)
        ad = lay.adapter
        if ad.post_attn_norm or ad.post_mlp_norm:
            _refuse(model, "a norm after the attention or MLP output: heads do not add linearly into the residual "
                           "stream, so edges between components are not defined")
        self.model, self.lay = model, lay
        self.n, self.H = len(lay.blocks), lay.n_heads
        self.runner = BlockRunner(model, attention_mask)
        self.B = attention_mask.shape[0]
        self.W = [head_out_weights(model, l) for l in range(self.n)]  # [H, d, D]
        self.bias = [getattr(head_out_proj(model, l), "bias", None) for l in range(self.n)]
        # Node order: input, then per layer its heads and its MLP; upstream of a node is a prefix.
        self.nodes = ["input"]
        for l in range(self.n):
            self.nodes += [f"L{l}H{h}" for h in range(self.H)] + [f"MLP{l}"]
        self.targets = [f"L{l}H{h}" for l in range(self.n) for h in range(self.H)] + \
            [f"MLP{l}" for l in range(self.n)] + ["logits"]

    def upstream(self, target: str) -> int:
        """How many nodes (a prefix of `nodes`) write into `target`'s input."""
        if target == "logits":
            return len(self.nodes)
        if target.startswith("MLP"):
            l = int(target[3:])
            return 1 + l * (self.H + 1) + self.H
        l = int(target[1:].split("H")[0])
        return 1 + l * (self.H + 1)

    def edge_mask(self) -> torch.Tensor:
        """[U, V] True where node u writes into target v's input: every edge of the graph."""
        allowed = torch.zeros(len(self.nodes), len(self.targets), dtype=torch.bool)
        for j, t in enumerate(self.targets):
            allowed[: self.upstream(t), j] = True
        return allowed

    def target_nodes(self) -> list[int | None]:
        """For each target, its index among the nodes (None for the logits)."""
        index = {n: i for i, n in enumerate(self.nodes)}
        return [index.get(t) for t in self.targets]

    def _constant(self, layer: int, like: torch.Tensor):
        """Sum of the output-projection biases of the layers before `layer` (0 if none)."""
        total = 0
        for l in range(layer):
            if self.bias[l] is not None:
                total = total + self.bias[l].to(like.dtype)
        return total

    def forward(self, emb: torch.Tensor, combine=None):
        """Run the graph from embeddings `emb` [B, T, D]. `combine(target, outs, total)` returns the
        input of `target` from the upstream outputs so far and their running sum (default: the
        sum). Returns
        (outputs of every node [U] x [B, T, D], final residual [B, T, D])."""
        combine = combine or (lambda target, outs, total: total)
        outs = [emb]
        total = emb  # running sum of the outputs so far: what an unpatched input is
        for l in range(self.n):
            const = self._constant(l, emb)
            xs = torch.cat([combine(f"L{l}H{h}", outs, total) + const for h in range(self.H)])  # [H*B, T, D]
            got = {}

            def grab(z, got=got):
                got["z"] = z
                return z

            with edit_site(self.model, f"head.{l}", grab):
                self.runner.attn_out(l, xs)
            z = got["z"]  # [H*B, T, H, d]
            for h in range(self.H):
                outs.append(z[h * self.B:(h + 1) * self.B, :, h] @ self.W[l][h])
                total = total + outs[-1]
            mid = combine(f"MLP{l}", outs, total) + const + (self.bias[l].to(emb.dtype) if self.bias[l] is not None else 0)
            outs.append(self.runner.mlp_half(l, mid) - mid)
            total = total + outs[-1]
        final = combine("logits", outs, total) + self._constant(self.n, emb)
        return outs, final

    def logits(self, final: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return self.lay.logits(final[torch.arange(final.shape[0]), last])

    @torch.no_grad()
    def check(self, input_ids: torch.Tensor, last: torch.Tensor, final: torch.Tensor | None = None,
              rtol: float = 1e-4) -> None:
        """Stop unless the graph with every edge (its final residual `final`, computed here when
        not given) gives the model's own logits at `last`."""
        if final is None:
            _, final = self.forward(self.runner.embed(input_ids))
        mine = self.logits(final, last)
        out = self.model(input_ids=input_ids, attention_mask=self.runner.attention_mask).logits
        theirs = out[torch.arange(out.shape[0]), last].float()
        err = float((mine - theirs).abs().max())
        if not err <= rtol * max(1.0, float(theirs.abs().max())):
            raise RunnerMismatch(f"edge graph of {self.lay.model_type}: the sum of all components differs from the "
                                 f"model's logits by {err:.2e}; refusing to score or patch edges")
