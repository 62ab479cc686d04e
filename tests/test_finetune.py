"""The finetune stage: a seeded, real training run that makes a comparable variant."""

import copy
from pathlib import Path

import pytest
import torch
import yaml

from codeinterp.access import models
from codeinterp.access.finetune import finetune, heldout_losses, training_targets
from codeinterp.access.scoring import targets_from_frame
from codeinterp.analyses.compare_weights import compare_weights
from codeinterp.benchmarks.datasets import load_problems, select_problems
from codeinterp.config import validate_config
from codeinterp.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
SETTINGS = dict(method="lora", steps=4, batch_size=2, learning_rate=0.02, warmup_steps=1, weight_decay=0.0,
                max_grad_norm=1.0, lora_rank=4, lora_alpha=8)


@pytest.fixture(scope="module")
def frames():
    _, tok = build()
    problems = load_problems("mbpp", REPO / "data")
    train = select_problems(problems, split="train", sample=12, seed=0)
    held = select_problems(problems, split="validation", sample=6, seed=0)
    return training_targets(train, tok, False, 500), training_targets(held, tok, False, 500)


def build():
    return models.build_tiny_random({"architecture": "llama", "n_layers": 2, "n_heads": 4, "hidden_size": 32,
                                     "intermediate_size": 64, "seed": 0})


def run(frames, **over):
    model, tok = build()
    return (model, tok, *finetune(model, tok, frames[0], frames[1], {**SETTINGS, **over}, seed=0))


def test_lora_run_is_reproducible_and_changes_only_block_linears(frames):
    base, _ = build()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    _, _, m1, training1, held1 = run(frames)
    _, _, m2, training2, _ = run(frames)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert sorted(s1) == sorted(before)  # merged back: the base model's own parameters, no adapters
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert training1.equals(training2)
    changed = {k for k in s1 if not torch.equal(s1[k], before[k])}
    assert changed and all(k.endswith("proj.weight") for k in changed)
    assert not any("embed" in k or "norm" in k for k in changed)
    assert held1["base_loss"].to_list() != held1["variant_loss"].to_list()


def test_training_lowers_the_loss_on_what_it_saw(frames):
    base, tok = build()
    train = targets_from_frame(frames[0])
    before = heldout_losses(base, train, 4, tok.pad_token_id)
    _, _, model, training, held = run(frames, method="full", steps=12, learning_rate=0.005)
    after = heldout_losses(model, train, 4, tok.pad_token_id)
    assert sum(after.values()) < sum(before.values()) - 0.5 * len(train)
    # The held-out table's base column is the untouched model's loss.
    fresh, _ = build()
    assert held["base_loss"].to_list() == pytest.approx(
        [heldout_losses(fresh, targets_from_frame(frames[1]), 4, tok.pad_token_id)[t] for t in held["target_id"]])
    assert training.height == 12 and set(training["n_targets"]) == {2}


def test_variant_compares_with_its_base_in_weight_space(frames):
    base, _ = build()
    _, _, variant, _, _ = run(frames)
    table, _ = compare_weights(base, variant, "base", "variant", {"singular_vectors": 2})
    heads = table.filter(table["level"] == "head")
    assert heads["cosine"].min() < 0.9999 and heads["cosine"].max() <= 1.0 + 1e-9


def test_nothing_fits_is_one_line(frames):
    _, tok = build()
    problems = select_problems(load_problems("mbpp", REPO / "data"), split="train", limit=2)
    with pytest.raises(ConfigError, match="fits in 16 tokens"):
        training_targets(problems, tok, True, 16)


def tiny_config():
    return yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["models"]["tiny-llama-ft"].pop("base"), "tiny-llama-ft.base: required"),
    (lambda c: c["models"]["tiny-llama-ft"].update(base="nope"), "'nope' is not a configured model"),
    (lambda c: c["models"].update(again={"source": "finetune", "base": "tiny-llama-ft"}), "itself a finetune model"),
    (lambda c: c["models"]["tiny-llama-ft"]["finetune"].update(heldout_split="train"), "also the training split"),
    (lambda c: c["models"]["tiny-llama-ft"].update(datasets=["nope"]), "datasets: 'nope' is not a configured dataset"),
    (lambda c: c["models"]["tiny-llama"].update(base="tiny-llama-ft"), "settings of source: finetune models"),
    (lambda c: c["comparisons"].update(models=[["tiny-llama", "nope"]]), "comparisons.models[0]: 'nope'"),
    (lambda c: c["models"]["tiny-llama-ft"]["finetune"].update(method="adapter"), "method"),
])
def test_bad_finetune_and_comparison_settings_are_one_line(tmp_path, mutate, message):
    config = copy.deepcopy(tiny_config())
    mutate(config)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        validate_config(config, SCHEMA, tmp_path / "config.log")
    assert "\n" not in str(err.value)


def test_the_tiny_config_is_valid_and_only_finetune_models_get_training_defaults(tmp_path):
    config = tiny_config()
    validate_config(config, SCHEMA, tmp_path / "config.log")
    assert config["models"]["tiny-llama-ft"]["finetune"]["method"] == "lora"
    assert "finetune" not in config["models"]["tiny-llama"]
