import json

import polars as pl
import pytest
import torch

from codeinterp.benchmarks import generation as g
from codeinterp.benchmarks import prompts
from codeinterp.errors import ConfigError

HE_ROW = {
    "dataset": "humaneval", "problem_id": "HumanEval/0", "prompt": 'from typing import List\n\ndef f(x: List[int]) -> int:\n    """doc"""\n',
    "entry_point": "f", "starter_code": 'from typing import List\n\ndef f(x: List[int]) -> int:\n    """doc"""\n', "test_type": "assert",
}


def table_for(tok, texts):
    return [{"row": {**HE_ROW, "problem_id": f"P{i}"}, "text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]}
            for i, t in enumerate(texts)]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_batched_left_padded_greedy_equals_one_by_one(tiny_models, arch):
    """Left padding with wrong position ids silently corrupts logits: batched must equal unbatched."""
    model, tok = tiny_models[arch]
    texts = ["def f(x):\n", "a much longer prompt than the other one, to force padding:\n", "x"]
    settings = g.Settings(max_new_tokens=12, batch_size=3, chat=False)
    together = g.generate_transformers(model, tok, table_for(tok, texts), settings)
    alone = pl.concat([g.generate_transformers(model, tok, table_for(tok, [t]), g.Settings(max_new_tokens=12, batch_size=1, chat=False))
                       for t in texts])
    assert together["completion"].to_list() == alone["completion"].to_list()
    assert together["completion_tokens"].to_list() == alone["completion_tokens"].to_list()


def test_sampling_is_seeded(tiny_models):
    model, tok = tiny_models["llama"]
    s = g.Settings(max_new_tokens=10, n=3, temperature=1.0, seed=7, chat=False)
    a = g.generate_transformers(model, tok, table_for(tok, ["def f"]), s)
    b = g.generate_transformers(model, tok, table_for(tok, ["def f"]), s)
    assert a.equals(b)  # no wall-clock column: the same settings give the same table
    assert a["sample_index"].to_list() == [0, 1, 2]
    assert len(set(a["completion"].to_list())) > 1


def test_head_mask_changes_generation(tiny_models):
    model, tok = tiny_models["llama"]
    s = g.Settings(max_new_tokens=16, chat=False)
    base = g.generate_transformers(model, tok, table_for(tok, ["def f(x):\n"]), s)
    masked = g.generate_transformers(model, tok, table_for(tok, ["def f(x):\n"]), s, keep=torch.zeros(3, 4))
    assert base["completion"][0] != masked["completion"][0]


def test_stop_sequences_cut_text():
    assert g.cut_at_stop("abc```rest", ["```"]) == ("abc", True)
    assert g.cut_at_stop("abc", ["```"]) == ("abc", False)
    assert g.cut_at_stop("a\ndef b\n#c", ["\n#", "\ndef "]) == ("a", True)


def test_prompt_too_long_is_a_one_line_error(tiny_models):
    _, tok = tiny_models["llama"]
    problems = pl.DataFrame([HE_ROW])
    with pytest.raises(ConfigError, match="HumanEval/0.*exceeds the model's context of 50"):
        g.prompt_table(problems, tok, g.Settings(max_new_tokens=10), max_positions=50)


def test_replayed_samples_are_not_limited_by_this_models_context(tiny_models, tmp_path):
    """Samples from another system are evaluated whatever this model's context length."""
    from codeinterp.access import models

    model, tok = models.build_tiny_random({"n_layers": 1, "max_positions": 64})
    models.save_canonical(model, tok, tmp_path / "m", "tiny-random")
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return 1\n"}) + "\n")
    out = g.run_generation(pl.DataFrame([HE_ROW]), tmp_path / "m", g.Settings(), "replay", samples=str(samples))
    assert out["prompt_tokens"][0] > 64 and out["completion"][0] == "    return 1\n"


def test_code_mode_prompt_is_prefilled_and_extracted(tiny_models):
    _, tok = tiny_models["llama"]
    text = prompts.build_prompt(HE_ROW, tok, "code", chat=True)
    assert text.endswith("<|im_start|>assistant\n```python\n")
    assert "def f(x: List[int])" in text
    code = prompts.extract_code("def f(x):\n    return 1\n```\nextra", prefilled=True)
    assert code == "def f(x):\n    return 1\n"


def test_reasoning_mode_takes_last_block():
    text = "Idea: loop.\n```python\nx = 1\n```\nBetter:\n```python\ndef f(x):\n    return 2\n```\n"
    assert prompts.extract_code(text, prefilled=False) == "def f(x):\n    return 2\n"


def test_build_program_body_and_full_function():
    body = prompts.build_program(HE_ROW, "    return sum(x)\n")
    assert body == HE_ROW["starter_code"] + "    return sum(x)\n"
    full = prompts.build_program(HE_ROW, "def f(x):\n    return sum(x)\n")
    # The whole prompt stays in front (its imports and helpers); the answer's definition wins.
    assert full == HE_ROW["starter_code"] + "\ndef f(x):\n    return sum(x)\n"
    stdin_row = {**HE_ROW, "test_type": "stdin", "starter_code": ""}
    assert prompts.build_program(stdin_row, "print(1)\n") == "print(1)\n"


def test_read_replay_jsonl_and_errors(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps({"task_id": t, "completion": c}) for t, c in
                              [("HumanEval/0", "a"), ("HumanEval/1", "b"), ("HumanEval/0", "c")]) + "\n")
    df = g.read_replay(path)
    assert df.sort("problem_id", "sample_index").rows() == [("HumanEval/0", "a", 0), ("HumanEval/0", "c", 1), ("HumanEval/1", "b", 0)]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x", "completion": "y"}\nnot json\n')
    with pytest.raises(ConfigError, match="bad.jsonl, line 2"):
        g.read_replay(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        g.read_replay(tmp_path / "missing.jsonl")


MBPP_ROW = {"dataset": "mbpp", "problem_id": "Mbpp/1", "prompt": "Write f.\nYour code should pass these tests:\n\nassert f(1) == 2\n",
            "entry_point": "f", "starter_code": "", "test_type": "assert"}
STDIN_ROW = {"dataset": "livecodebench", "problem_id": "abc1", "prompt": "Print N.", "entry_point": "", "starter_code": "",
             "test_type": "stdin"}


def test_completion_stops_are_per_benchmark():
    s = g.Settings(chat=False, stop=("\nEND",))
    mbpp = "import re\ndef f(x):\n    return x + 1\n"
    assert g.cut_at_stop(mbpp + "\nassert f(1) == 2\n", s.stops(MBPP_ROW)) == (mbpp, True)
    stdin = "n = int(input())\nprint(n)\nprint(n)\n"
    assert g.cut_at_stop(stdin + "```", s.stops(STDIN_ROW)) == (stdin, True)
    assert g.cut_at_stop(stdin + "\nEND", s.stops(STDIN_ROW)) == (stdin, True)  # configured stops apply too
    assert g.cut_at_stop("    return 1\n#x", s.stops(HE_ROW)) == ("    return 1", True)


def test_stop_string_is_matched_in_generated_text_only(tiny_models):
    """A prompt ending in a newline, and a stop string made of that newline + the model's
    first generated character: the stop straddles the boundary and must not end generation
    (transformers' `stop_strings` ended it after one token)."""
    model, tok = tiny_models["llama"]
    prompt = "import os\n"
    free = g.generate_transformers(model, tok, table_for(tok, [prompt]), g.Settings(max_new_tokens=12, mode="reasoning", batch_size=1))
    text = free["completion"][0]
    stop = "\n" + text[0]
    assert text[0] == "$" and stop not in text and free["completion_tokens"][0] == 12
    s = g.Settings(max_new_tokens=12, mode="reasoning", batch_size=1, stop=(stop,))
    stopped = g.generate_transformers(model, tok, table_for(tok, [prompt]), s)
    assert stopped["completion"][0] == text and stopped["completion_tokens"][0] == 12
    # The criterion itself: "\n#" straddling the prompt does not stop, inside the generated text it does.
    before = tok("x\n", add_special_tokens=False)["input_ids"]
    gen = tok("#ab\n#c", add_special_tokens=False)["input_ids"]
    crit = g.StopInGenerated(tok, len(before), [before], [["\n#"]])
    fired = [crit(torch.tensor([before + gen[:k]]), None).item() for k in range(1, len(gen) + 1)]
    assert fired == [False, False, False, False, True, True]


def test_generation_table_records_the_ids_it_used(tiny_models):
    model, tok = tiny_models["qwen2"]
    problems = pl.DataFrame([HE_ROW, {**HE_ROW, "problem_id": "HumanEval/1"}])
    s = g.Settings(max_new_tokens=8, batch_size=2, n=2, temperature=1.0, chat=True)
    table = g.prompt_table(problems, tok, s, max_positions=4096)
    out = g.generate_transformers(model, tok, table, s)
    for r in out.iter_rows(named=True):
        p = next(p for p in table if p["row"]["problem_id"] == r["problem_id"])
        assert r["prompt_ids"] == p["ids"] and r["ids_source"] == "generated"
        assert len(r["completion_ids"]) == r["completion_tokens"]
        assert prompts.decode_continuation(tok, r["prompt_ids"], r["completion_ids"]).startswith(r["completion"])


def test_prompt_table_prepends_bos_of_the_tokenizer():
    from test_prompts import bpe_tokenizer

    tok = bpe_tokenizer()
    problems = pl.DataFrame([HE_ROW])
    completion = g.prompt_table(problems, tok, g.Settings(chat=False, max_new_tokens=1), 4096)[0]["ids"]
    chat = g.prompt_table(problems, tok, g.Settings(chat=True, max_new_tokens=1), 4096)[0]["ids"]
    for ids in (completion, chat):  # the chat template writes <s> itself: still exactly one
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
