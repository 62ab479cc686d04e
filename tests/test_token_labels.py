"""The token table: hand-written labels on tricky snippets, for a byte-level tokenizer (one
token per byte) and a BPE trained here that merges brackets (`))`, `):`), and the rule's script."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
from test_prompts import metaspace_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from codeinterp.access.models import byte_tokenizer
from codeinterp.analyses.token_labels import TOKEN_SCHEMA, decoder, token_pieces, token_table
from codeinterp.benchmarks.targets import make_target
from codeinterp.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONTEXT = "# write the code\n"

# name -> (code, [(substring, occurrence, expected labels of the token anchored at its first character)])
SNIPPETS = {
    "nested_brackets": (
        "x = [(1,\n      {2: [3]}),\n     4]\n",
        [("3", 0, dict(depth_paren=1, depth_square=2, depth_curly=1, depth_total=4, lexical="number", ast_node="Constant")),
         ("]", 0, dict(lexical="bracket_close", depth_square=2, depth_total=4, n_close=1)),
         ("}", 0, dict(depth_curly=1, depth_total=3)),
         ("\n", 0, dict(lexical="newline_indent", depth_total=2)),
         ("      {", 0, dict(lexical="newline_indent", depth_total=2, indent_level=0)),
         ("4", 0, dict(depth_square=1, depth_paren=0, depth_total=1, code_line="     4]")),
         ("x", 0, dict(lexical="identifier", ident_role="def", ast_node="Name", ast_depth=2))]),
    "fstring": (
        's = f"{a[0]}({b})"\n',
        [("[", 0, dict(lexical="string", in_string=True, depth_total=0, n_open=0, ast_node="Subscript")),
         ("(", 0, dict(lexical="string", depth_paren=0, ast_node="JoinedStr", ident_role=None)),
         ("a", 0, dict(lexical="string", ast_node="Name", ident_role=None)),
         ("s", 0, dict(ident_role="def"))]),
    "comment_brackets": (
        "y = (1  # ) ] (\n     + 2)\n",
        [("]", 0, dict(lexical="comment", in_comment=True, n_close=0, depth_paren=1)),
         ("+", 0, dict(lexical="operator", depth_paren=1, depth_total=1)),
         (")", 1, dict(lexical="bracket_close", depth_paren=1)),
         ("\n", 1, dict(lexical="newline_indent", depth_total=0))]),
    "triple_quoted": (
        'def f():\n    """doc (\n    still ] doc"""\n    return 1\n',
        [("    still", 0, dict(lexical="string", in_string=True, indent_level=1, ast_node="Constant")),
         ("still", 0, dict(lexical="string", depth_total=0)),
         ("return", 0, dict(lexical="keyword", indent_level=1, depth_total=0, ast_node="Return", ast_depth=2)),
         ("f", 1, dict(lexical="identifier", ident_role="def", ast_node="FunctionDef", ast_depth=1))]),
    "tabs": (
        "if x:\n\ty = 1\n\tif y:\n\t\tz = 2\nw = 3\n",
        [("\t\t", 0, dict(lexical="newline_indent", indent_level=2)),
         ("z", 0, dict(indent_level=2, ident_role="def", ast_depth=4)),
         ("y", 0, dict(indent_level=1, ident_role="def")),
         ("y", 1, dict(indent_level=1, ident_role="use")),
         ("w", 0, dict(indent_level=0, ast_depth=2, ast_node="Name"))]),
    "unparseable": (
        "def f(x:\n    return [x,\n",
        [("def", 0, dict(parse_ok=False, label_source="tokenize", lexical="keyword", ast_node=None, ident_role=None)),
         ("x", 1, dict(lexical="identifier", depth_paren=1, depth_square=1, depth_total=2, ident_role=None)),
         ("return", 0, dict(lexical="keyword", ast_depth=None))]),
    "unterminated_string": (
        'x = 1\ns = """abc (\ndef\n',
        [("x", 0, dict(parse_ok=False, label_source="tokenize", lexical="identifier", indent_level=0)),
         ('"', 0, dict(label_source="fallback", lexical="string", indent_level=None)),
         ("(", 0, dict(label_source="fallback", lexical="string", n_open=0, depth_total=0)),
         ("def", 0, dict(lexical="string", in_string=True))]),
    "bad_dedent": (
        "if a:\n    b = 1\n  c = (rb'[', 2)\n",
        [("b", 0, dict(label_source="tokenize", indent_level=1)),
         ("c", 0, dict(label_source="fallback", lexical="identifier", indent_level=None)),
         ("rb", 0, dict(label_source="fallback", lexical="string", depth_paren=1)),
         ("[", 0, dict(lexical="string", n_open=0, depth_square=0)),
         ("2", 0, dict(label_source="fallback", lexical="number", depth_paren=1)),
         (")", 0, dict(lexical="bracket_close", n_close=1, depth_paren=1))]),
    "string_brackets": (
        "t = \"([{\" + ']'\n",
        [("(", 0, dict(lexical="string", n_open=0, depth_total=0)),
         ("+", 0, dict(lexical="operator", depth_total=0, ast_node="BinOp")),
         ("]", 0, dict(lexical="string", n_close=0))]),
    "decorator": (
        '@app.route("/x")\ndef handler(req):\n    return req\n',
        [("@", 0, dict(lexical="operator", ast_node="Module", ast_depth=0)),
         ("app", 0, dict(lexical="identifier", ident_role="use", ast_node="Name")),
         ("route", 0, dict(ident_role="use", ast_node="Attribute")),
         ("handler", 0, dict(ident_role="def", ast_node="FunctionDef")),
         ("req", 0, dict(ident_role="def", ast_node="arg")),
         ("req", 1, dict(ident_role="use", ast_node="Name", indent_level=1))]),
    "lambda": (
        "g = lambda k, v=2: k + v\n",
        [("lambda", 0, dict(lexical="keyword", ast_node="Lambda")),
         ("k", 0, dict(ident_role="def", ast_node="arg")),
         ("k", 1, dict(ident_role="use", ast_node="Name")),
         ("g", 0, dict(ident_role="def"))]),
    "comprehension": (
        "r = [i * 2 for i in range(n) if i]\nm = {k: v for k, v in d.items()}\n",
        [("i", 0, dict(ident_role="use")),
         ("i", 1, dict(ident_role="def")),
         ("i]", 0, dict(ident_role="use")),
         ("range", 0, dict(lexical="builtin", ident_role="use")),
         ("k", 1, dict(ident_role="def")),
         ("v", 0, dict(ident_role="use")),
         ("items", 0, dict(lexical="identifier", ident_role="use"))]),
    "bindings": (
        "import os.path as p\nfrom m import a, b as c\nfor j, (q, _) in enumerate(p):\n"
        "    with open(j) as fh:\n        del fh\ntry:\n    pass\nexcept ValueError as err:\n    print(err)\n"
        "self.attr = len\ndef h(list):\n    global G\n    return list\n",
        [("os", 0, dict(ident_role="use")), ("p\n", 0, dict(ident_role="def")),
         ("a, b", 0, dict(ident_role="def")), ("b", 0, dict(ident_role="use")), ("c", 0, dict(ident_role="def")),
         ("j", 0, dict(ident_role="def")), ("q", 0, dict(ident_role="def")), ("_", 0, dict(ident_role="def")),
         ("enumerate", 0, dict(lexical="builtin")), ("open", 0, dict(lexical="builtin")),
         ("fh", 0, dict(ident_role="def")), ("fh", 1, dict(ident_role="use")),
         ("err", 0, dict(ident_role="def")), ("err", 1, dict(ident_role="use")), ("ValueError", 0, dict(lexical="builtin")),
         ("attr", 0, dict(ident_role="def")), ("self", 0, dict(ident_role="use")), ("len", 0, dict(lexical="builtin")),
         ("list", 0, dict(lexical="identifier", ident_role="def")), ("list", 1, dict(lexical="builtin", ident_role="use")),
         ("G", 0, dict(ident_role="def"))]),
    "match": (
        'match cmd:\n    case [x, *rest]:\n        pass\n    case {"k": v, **kw}:\n        pass\n    case _:\n        pass\n',
        [("match", 0, dict(lexical="keyword")), ("case", 0, dict(lexical="keyword")), ("cmd", 0, dict(ident_role="use")),
         ("x", 0, dict(ident_role="def")), ("rest", 0, dict(ident_role="def")), ("kw", 0, dict(ident_role="def")),
         ("v", 0, dict(ident_role="def")), ("_", 0, dict(lexical="keyword", ident_role=None))]),
    "non_ascii": (
        'café = "é→"\nn = café\n',
        # ast columns count UTF-8 bytes: a byte offset used as a character offset would put the space in Name
        [(" ", 0, dict(lexical="whitespace", ast_node="Assign")),
         ("é", 0, dict(lexical="identifier", ident_role="def", ast_node="Name")),
         ("→", 0, dict(lexical="string")),
         ("café", 1, dict(ident_role="use"))]),
    "merged_brackets": (
        "if f(g(x)):\n    y = h(k(z))\n",
        [(")", 0, dict(lexical="bracket_close", depth_paren=2, n_close=1, indent_level=0)),
         (")", 1, dict(depth_paren=1)), (":", 0, dict(lexical="operator", depth_paren=0)),
         (")", 3, dict(depth_paren=1, indent_level=1, ast_node="Call", ast_depth=3))]),
    "indented_body": (
        "    total = 0\n    for v in xs:\n        total += v\n    return total\n",
        [("total", 0, dict(parse_ok=True, ident_role="def", ast_node="Name", ast_depth=2, indent_level=1)),
         ("total", 1, dict(ident_role="def", indent_level=2)),
         ("return", 0, dict(ast_node="Return", ast_depth=1, indent_level=1)),
         ("    ", 0, dict(lexical="newline_indent"))]),
}


def bracket_bpe() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the snippets plus code full of `))` and `):\\n`. No regex
    pre-split, so merges cross punctuation, spaces and newlines as in code-trained vocabularies."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>", "</s>", "<pad>"], show_progress=False)
    letters = "abcdefghijklmnopqrstuvwxyz"
    corpus = [f"{a}({b}({c}))\nif {b}({a}({c})):\n    pass\n" for a in letters for b in letters[:8] for c in "xyz"]
    tok.train_from_iterator(corpus + [code for code, _ in SNIPPETS.values()] * 2, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


TOKENIZERS = {"byte": byte_tokenizer, "bpe": bracket_bpe}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def labelled(request):
    """Per tokenizer: the token table of one target per snippet, and the tokenizer."""
    tok = TOKENIZERS[request.param]()
    targets = [make_target(tok, name, CONTEXT, code) for name, (code, _) in SNIPPETS.items()]
    frame = pl.DataFrame([{**t, "problem_id": t["target_id"]} for t in targets])
    return request.param, token_table(frame, tok), tok


def code_rows(table: pl.DataFrame, name: str) -> tuple[list[dict], int]:
    """A snippet's code tokens, and the character where its code starts in the decoded text."""
    rows = table.filter((pl.col("target_id") == name) & pl.col("in_code")).to_dicts()
    return rows, rows[0]["char_start"]


def anchor(row: dict) -> int:
    text = row["token_text"]
    skip = next((i for i, c in enumerate(text) if not c.isspace()), 0)
    return row["char_start"] + skip


def test_decoded_code_is_the_snippet(labelled):
    _, table, _ = labelled
    for name, (code, _) in SNIPPETS.items():
        rows, start = code_rows(table, name)
        assert "".join(r["token_text"] for r in rows) == code
        assert all(r["char_end"] - r["char_start"] == len(r["token_text"]) for r in rows)
        whole = table.filter(pl.col("target_id") == name)
        assert whole["position"].to_list() == list(range(len(whole)))
        assert whole.filter(~pl.col("in_code"))["lexical"].null_count() == len(whole) - len(rows)


def test_hand_written_labels(labelled):
    """Each probe's expectations hold for the token anchored at its character (with the BPE,
    for those probes whose character starts a token's non-space text)."""
    kind, table, _ = labelled
    checked = 0
    for name, (code, probes) in SNIPPETS.items():
        rows, start = code_rows(table, name)
        by_anchor = {}
        for r in rows:
            if r["token_text"]:  # zero-width pieces of a character share its anchor
                by_anchor.setdefault(anchor(r) - start, r)
        for sub, occurrence, expected in probes:
            at = -1
            for _ in range(occurrence + 1):
                at = code.index(sub, at + 1)
            if kind == "byte" or at in by_anchor:
                row = by_anchor[at]
                if kind != "byte":  # counts over a token's characters: checked against bytes below
                    expected = {k: v for k, v in expected.items() if k not in ("n_open", "n_close")}
                got = {k: row[k] for k in expected}
                assert got == expected, f"{name}: {sub!r}#{occurrence} {row['token_text']!r}"
                checked += 1
    assert checked >= (sum(len(p) for _, p in SNIPPETS.values()) if kind == "byte" else 20)


def test_bpe_tokens_agree_with_bytes():
    """Every BPE token carries the byte-level labels of its anchor character; its bracket
    counts sum those of its characters; it straddles when its characters' non-whitespace
    categories differ. Merged-bracket tokens exist and are counted."""
    byte_tok, bpe = byte_tokenizer(), bracket_bpe()
    per_char = {}
    for name, (code, _) in SNIPPETS.items():
        t = make_target(byte_tok, name, CONTEXT, code)
        rows, start = code_rows(token_table(pl.DataFrame([{**t, "problem_id": name}]), byte_tok), name)
        per_char[name] = {r["char_start"] - start: r for r in rows if r["token_text"]}
    bpe_targets = pl.DataFrame([{**make_target(bpe, n, CONTEXT, c), "problem_id": n} for n, (c, _) in SNIPPETS.items()])
    table = token_table(bpe_targets, bpe)
    merged = []
    for name in SNIPPETS:
        rows, start = code_rows(table, name)
        chars = per_char[name]
        for r in rows:
            a, b, j = r["char_start"] - start, r["char_end"] - start, anchor(r) - start
            if a == b:
                continue
            ref = chars[min(j, max(chars))]
            for k in ("lexical", "depth_paren", "depth_square", "depth_curly", "indent_level", "in_string",
                      "in_comment", "ast_node", "ast_depth", "ident_role", "code_line", "parse_ok", "label_source"):
                assert r[k] == ref[k], (name, r["token_text"], k)
            inside = [chars[i] for i in range(a, b) if i in chars]
            assert r["n_open"] == sum(c["n_open"] for c in inside)
            assert r["n_close"] == sum(c["n_close"] for c in inside)
            cats = {c["lexical"] for c in inside} - {"whitespace", "newline_indent"}
            assert r["straddles"] == (len(cats) > 1)
            if r["n_close"] >= 2:
                merged.append(r)
    # The trained vocabulary merges "))" with what follows: a newline, or ":" and the next indentation.
    texts = {r["token_text"].strip(): r for r in merged}
    assert texts["))"]["n_close"] == 2 and not texts["))"]["straddles"]
    assert texts[")):"]["n_close"] == 2 and texts[")):"]["straddles"]


def test_pieces_follow_sentencepiece_spaces_and_split_characters():
    """Metaspace drops the first piece's leading space only; a byte-level token holding part
    of a character adds nothing and the completing token adds the character."""
    ms = metaspace_tokenizer()
    ids = ms("a b", add_special_tokens=False)["input_ids"]
    assert token_pieces(decoder(ms), ids) == ["", "a", " ", "b"]
    tok = byte_tokenizer()
    ids = tok("é→x", add_special_tokens=False)["input_ids"]
    assert len(ids) == 6 and token_pieces(decoder(tok), ids) == ["", "é", "", "", "→", "x"]


def test_pieces_are_linear_and_checked():
    tok = byte_tokenizer()
    base = decoder(tok)
    calls = []

    def counting(ids):
        calls.append(len(ids))
        return base(ids)

    ids = tok("x = (1, 2)\n" * 300, add_special_tokens=False)["input_ids"]
    token_pieces(counting, ids)
    assert sum(calls) - len(ids) <= 4 * len(ids)  # windows of two tokens, plus one full decode
    with pytest.raises(ConfigError, match="incremental decoding disagrees"):
        token_pieces(lambda ids: "".join(map(str, ids[::-1])), [1, 2, 3])


def test_script_writes_identical_tables(tmp_path):
    tok = byte_tokenizer()
    model_dir = tmp_path / "model"
    tok.save_pretrained(model_dir)
    rows = [make_target(tok, "b", CONTEXT, SNIPPETS["lambda"][0]), make_target(tok, "a", CONTEXT, SNIPPETS["tabs"][0])]
    targets = tmp_path / "targets.parquet"
    pl.DataFrame([{**r, "problem_id": "P" + r["target_id"]} for r in rows]).write_parquet(targets)
    outputs = []
    for run in range(2):
        out = tmp_path / f"tokens{run}.parquet"
        smk = SimpleNamespace(input=SimpleNamespace(model=str(model_dir), targets=str(targets)),
                              output=SimpleNamespace(tokens=str(out)), log=[str(tmp_path / f"log{run}")], threads=1,
                              params=SimpleNamespace(), wildcards=SimpleNamespace(model="m", dataset="d"))
        runpy.run_path(str(REPO / "workflow/scripts/token_labels.py"), init_globals={"snakemake": smk})
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    table = pl.read_parquet(tmp_path / "tokens0.parquet")
    assert dict(table.schema) == TOKEN_SCHEMA
    assert table["target_id"].unique(maintain_order=True).to_list() == ["a", "b"]
    assert table.filter(pl.col("scored"))["in_code"].all()
    assert len(table) == sum(len(r["input_ids"]) for r in rows)


def test_missing_columns_are_refused():
    with pytest.raises(ConfigError, match="all_start"):
        token_table(pl.DataFrame({"target_id": ["a"], "problem_id": ["a"], "input_ids": [[1]], "code_start": [0],
                                  "code_end": [1]}), byte_tokenizer())


def test_no_targets_give_an_empty_table_with_the_schema():
    from codeinterp.benchmarks.targets import TARGET_SCHEMA

    table = token_table(pl.DataFrame(schema=TARGET_SCHEMA), byte_tokenizer())
    assert table.is_empty() and dict(table.schema) == TOKEN_SCHEMA
