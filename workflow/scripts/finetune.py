import time

from codeinterp.access.finetune import finetune, training_targets
from codeinterp.access.models import load_model, resolve_chat, save_canonical
from codeinterp.benchmarks.datasets import load_problems, select_problems
from codeinterp.workflow import run_script, write_json, write_parquet


def main(smk):
    spec = dict(smk.params.spec)
    settings = dict(spec["finetune"])
    seed = smk.params.seed if settings.get("seed") is None else settings["seed"]
    model, tokenizer = load_model(smk.input.base)
    chat = resolve_chat(smk.input.base, spec.get("chat"))
    problems = load_problems(settings["dataset"], smk.params.data_dir)
    train = select_problems(problems, split=settings["split"], sample=settings["limit"], seed=seed)
    heldout = select_problems(problems, split=settings["heldout_split"], sample=settings["heldout_limit"], seed=seed)
    train_frame = training_targets(train, tokenizer, chat, settings["max_tokens"])
    heldout_frame = training_targets(heldout, tokenizer, chat, settings["max_tokens"])
    t0 = time.perf_counter()
    model, training, held = finetune(model, tokenizer, train_frame, heldout_frame, settings, seed)
    record = {"seconds": round(time.perf_counter() - t0, 1), "threads": int(smk.threads),"base": spec["base"], "settings": settings, "seed": seed, "chat": chat,
              "train_targets": train_frame["target_id"].to_list(),
              "heldout_targets": heldout_frame["target_id"].to_list()}
    write_parquet(training, smk.output.training)
    write_parquet(held, smk.output.heldout)
    write_json(record, smk.output.record)
    save_canonical(model, tokenizer, smk.output.model, "finetune")


run_script(snakemake, main)  # noqa: F821
