"""EAP-IG circuits: the full graph is faithful and the empty circuit is the corrupted run,
exactly; circuits are connected; on hand-built models whose answer runs through a known path
(tests/planted_counter.py: input -> counting head -> MLP -> logits; tests/handbuilt.py: one
copying head), EAP-IG ranks exactly that path first and its circuit is that path."""

import numpy as np
import polars as pl
import torch

from archs import build
from codeinterp.access.edges import EdgeRunner
from codeinterp.causal.circuit import discover, eap_ig_scores, faithfulness, patched_metrics, select, sizes_for
from codeinterp.causal.draw import circuit_svg
from codeinterp.causal.pairs import Pair, make_pair_batch, read_pairs
from codeinterp.report.build import Context
from codeinterp.report.circuit import section
from codeinterp.uncertainty import Bootstrap
from handbuilt import build_one_head_model
from planted_counter import MAIN_PATH, PLANTED_PATH, build_counter_model, counter_pairs, write_pairs

BOOT = Bootstrap(200, 0.95, 0)


def _edges(mask: torch.Tensor, runner: EdgeRunner) -> set:
    return {(runner.nodes[u], runner.targets[v]) for u, v in torch.nonzero(mask).tolist()}


def _random_pairs(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for i in range(n):
        a = torch.randint(3, 100, (8 - i % 2,), generator=g)
        b = a.clone()
        b[4] = (a[4] + 7) % 100
        pairs.append(Pair(f"r{i}", "t", "s", ")", 1, 0, a, b, int(a[2]), int(b[4]), (4, 5), (), ()))
    return pairs


def test_full_graph_gives_one_and_the_empty_circuit_zero_exactly():
    model = build("qwen2")
    pairs = _random_pairs()
    runner = EdgeRunner(model, make_pair_batch(pairs).mask)
    full = runner.edge_mask()
    values = patched_metrics(model, pairs, [full, torch.zeros_like(full)], batch_size=4)
    np.testing.assert_array_equal(values[0], values[2])  # the same additions as the clean forward
    np.testing.assert_array_equal(values[1], values[3])  # and as the corrupted one
    point, low, high = faithfulness(values, BOOT)
    assert point.tolist() == [1.0, 0.0]
    assert low[0] == high[0] == 1.0 and low[1] == high[1] == 0.0  # every resample too


def test_circuits_keep_only_edges_on_a_path_from_input_to_logits():
    model = build("llama")
    runner = EdgeRunner(model, torch.ones(1, 4, dtype=torch.long))
    t, n = runner.targets.index, runner.nodes.index
    scores = torch.zeros(len(runner.nodes), len(runner.targets))
    scores[n("input"), t("L0H1")] = 5.0  # input -> L0H1 -> MLP1 -> logits: a path
    scores[n("L0H1"), t("MLP1")] = 4.0
    scores[n("MLP1"), t("logits")] = 3.0
    scores[n("L1H0"), t("logits")] = -9.0  # strongest, but nothing feeds L1H0 in the circuit
    scores[n("input"), t("MLP0")] = 8.0  # fed, but MLP0 reaches nothing
    kept = _edges(select(scores, runner, 5), runner)
    assert kept == {("input", "L0H1"), ("L0H1", "MLP1"), ("MLP1", "logits")}
    assert _edges(select(scores, runner, 2), runner) == set()  # the top two are dangling
    assert select(scores, runner, 0).sum() == 0


def test_the_planted_counting_path_is_the_circuit(tmp_path):
    model, tok = build_counter_model()
    pairs = read_pairs(write_pairs(counter_pairs(tok, n=12), tmp_path / "pairs.parquet"))
    scores, runner = eap_ig_scores(model, pairs, steps=5, batch_size=6)
    allowed = runner.edge_mask()
    flat = scores[allowed].abs()
    order = torch.argsort(flat, descending=True)
    ui, vi = torch.nonzero(allowed, as_tuple=True)
    ranked = [(runner.nodes[ui[i]], runner.targets[vi[i]]) for i in order.tolist()]
    assert set(ranked[:3]) == MAIN_PATH and set(ranked[:4]) == PLANTED_PATH
    assert float(flat[order[4]]) < 1e-6 * float(flat[order[0]])  # every other edge carries nothing
    planted = select(scores, runner, 4)
    assert _edges(planted, runner) == PLANTED_PATH
    main = select(scores, runner, 3)
    values = patched_metrics(model, pairs, [planted, main], batch_size=6)
    point, _, _ = faithfulness(values, BOOT)
    assert abs(point[0] - 1) < 1e-4  # the whole path: everything
    assert 0.8 < point[1] < 1  # without the weak direct read: most of it
    curve, edges = discover(model, pairs, steps=5, target=0.999, sizes=12, batch_size=6, boot=BOOT)
    chosen = curve.filter(pl.col("chosen")).row(0, named=True)
    assert chosen["heads"] == 1  # L0H2
    assert chosen["edges"] == 4 and chosen["reaches_target"] and abs(chosen["faithfulness"] - 1) < 1e-4
    assert set(edges.filter(pl.col("in_circuit")).select("upstream", "downstream").rows()) == PLANTED_PATH
    assert edges["rank"].to_list() == list(range(len(edges))) and (edges["n"] == len(pairs)).all()
    assert len(edges) == int(allowed.sum()) and 4 in sizes_for(len(edges), 12)
    svg = circuit_svg(edges, "planted: 4 edges")
    assert svg.startswith("<svg") and all(node in svg for node in ("L0H2", "MLP1", "logits", "input"))
    assert "L1H0" not in svg  # only the circuit is drawn
    # The report section: its finding sentence from the data, the curve, the drawing, the top edges.
    paths = {k: tmp_path / f"{k}.parquet" for k in ("curve", "edges")}
    curve.write_parquet(paths["curve"])
    edges.write_parquet(paths["edges"])
    (tmp_path / "c.svg").write_text(svg)
    ctx = Context({}, {})
    key = ("planted", "brackets")
    ctx.all_inputs = {"circuit_edges": {key: str(paths["edges"])}}
    ctx.side_inputs = {"circuit_svg": {key: str(tmp_path / "c.svg")}}
    page = section({key: str(paths["curve"])}, ctx)
    assert "A circuit of 4 of 54 edges has faithfulness 1 (95% CI 1 to 1) on n = 12 pairs; it reaches" in page
    assert page.count("<svg") == 1 and "MLP1" in page and len(ctx.charts.specs) == 1


def test_a_second_run_gives_identical_tables(tmp_path):
    model, tok = build_counter_model()
    pairs = read_pairs(write_pairs(counter_pairs(tok, n=6, seed=3), tmp_path / "pairs.parquet"))
    runs = [discover(model, pairs, steps=1, target=0.8, sizes=3, batch_size=3, boot=BOOT) for _ in range(2)]
    assert runs[0][0].equals(runs[1][0]) and runs[0][1].equals(runs[1][1])


def _char_pairs(tok, texts):
    """Pairs differing at one position; the answer tokens are the two characters there (the
    hand-built model predicts characters seen before)."""
    out = []
    for i, (clean, corrupt) in enumerate(texts):
        a, b = tok(clean, add_special_tokens=False)["input_ids"], tok(corrupt, add_special_tokens=False)["input_ids"]
        at = next(k for k in range(len(a)) if a[k] != b[k])
        out.append(Pair(f"p{i}", "t", "s", ")", 1, 0, torch.tensor(a), torch.tensor(b), a[at], b[at], (at, at + 1), (), ()))
    return out


TEXTS = [("aaaa bbbb", "aaaa bxbb"), ("abcabc ab", "abcxbc ab"), ("(( )) ((", "(( )x (("), ("xyxy yxyx", "xyxy yqyx"),
         ("0101 1010", "0101 1z10"), ("def f(): f", "def g(): f")]


def test_the_copying_head_and_its_two_edges_are_the_circuit():
    model, tok, (layer, head) = build_one_head_model("gpt2")
    pairs = _char_pairs(tok, TEXTS)
    curve, edges = discover(model, pairs, steps=3, target=0.9, sizes=6, batch_size=6, boot=BOOT)
    kept = set(edges.filter(pl.col("in_circuit")).select("upstream", "downstream").rows())
    assert kept == {("input", f"L{layer}H{head}"), (f"L{layer}H{head}", "logits")}
    chosen = curve.filter(pl.col("chosen")).row(0, named=True)
    assert chosen["edges"] == 2 and abs(chosen["faithfulness"] - 1) < 1e-4


def test_a_large_circuit_draws_only_its_strongest_edges_and_says_so():
    """A circuit of thousands of edges (a whole model's graph) is drawn as its strongest
    MAX_DRAWN edges (dot did not finish a 44,371-edge one in 13 minutes); the title names both
    counts."""
    from codeinterp.causal.draw import MAX_DRAWN

    rng = np.random.default_rng(0)
    up = [f"L{l}H{h}" for l in range(12) for h in range(9)] + [f"MLP{l}" for l in range(12)]
    rows = [(u, f"L{l}H{h}") for u in ["input"] + up for l in range(12) for h in range(9)
            if (u == "input" or int(u.lstrip("MLPH").split("H")[0]) < l)]
    rows = rows[:3000]
    scores = rng.normal(size=len(rows))
    scores[7] = 50.0  # the strongest edge must be drawn
    edges = pl.DataFrame({"upstream": [r[0] for r in rows], "downstream": [r[1] for r in rows],
                          "score": scores, "in_circuit": [True] * len(rows)})
    svg = circuit_svg(edges, "whole graph")
    assert svg.count('class="edge"') == MAX_DRAWN
    assert f"the {MAX_DRAWN:,} strongest of its 3,000 edges drawn" in svg
    assert "50" in svg and f"{rows[7][0]}&#45;&gt;{rows[7][1]}" in svg


def test_a_circuit_without_heads_moves_nothing_between_positions(tmp_path):
    """MLPs work position by position: when the prompts differ before the last position, a
    circuit of MLP edges only gives exactly the corrupted run (faithfulness 0), and the report
    says why (SmolLM2's variable-binding circuits of up to 384 edges were such chains)."""
    model = build("llama")
    pairs = _random_pairs()  # differ at position 4 of 7-8
    runner = EdgeRunner(model, make_pair_batch(pairs).mask)
    t, n = runner.targets.index, runner.nodes.index
    chain = torch.zeros(len(runner.nodes), len(runner.targets), dtype=torch.bool)
    chain[n("input"), t("MLP0")] = chain[n("MLP0"), t("MLP1")] = chain[n("MLP1"), t("logits")] = True
    values = patched_metrics(model, pairs, [chain], batch_size=4)
    np.testing.assert_array_equal(values[0], values[2])
    assert (values[1] != values[2]).any()  # the pairs do differ at the end
    curve = pl.DataFrame({"edges_requested": [0, 3, 10], "edges": [0, 3, 10], "heads": [0, 0, 2],
                          "faithfulness": [0.0, 0.0, 0.9], "faithfulness_ci_low": [0.0, 0.0, 0.8],
                          "faithfulness_ci_high": [0.0, 0.0, 1.0], "n": [6] * 3, "chosen": [False, False, True],
                          "reaches_target": [True] * 3, "target": [0.8] * 3})
    curve.write_parquet(tmp_path / "curve.parquet")
    ctx = Context({}, {})
    ctx.side_inputs = {}
    page = section({("m", "d"): str(tmp_path / "curve.parquet")}, ctx)
    assert "Circuits of up to 3 edges hold no attention head" in page
