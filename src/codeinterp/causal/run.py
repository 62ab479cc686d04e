"""What every causal stage's script does around its analysis: load the model and the kept pairs,
check the activation sites on the first pair, write the table and a separate timing file."""

from __future__ import annotations

import logging
import time

from codeinterp.access.hooks import check_decomposition
from codeinterp.access.models import load_model
from codeinterp.causal.pairs import make_pair_batch, read_pairs
from codeinterp.errors import ConfigError
from codeinterp.uncertainty import Bootstrap
from codeinterp.workflow import with_ids, write_json, write_parquet


class Stage:
    def __init__(self, smk, name: str, max_pairs: int | None = None):
        self.smk, self.name = smk, name
        self.log = logging.getLogger(f"codeinterp.{name}")
        self.t0 = time.perf_counter()
        self.model, self.tokenizer = load_model(smk.input.model, compute=smk.params.get("compute"))
        self.pad = self.tokenizer.pad_token_id or 0
        self.pairs = read_pairs(smk.input.pairs, limit=max_pairs)
        if not self.pairs:
            raise ConfigError(f"{smk.input.pairs}: no kept pair to analyse")
        first = make_pair_batch(self.pairs[:1], self.pad)
        check_decomposition(self.model, first.clean, first.mask)
        self.boot = Bootstrap.from_config(smk.params.config)
        self.log.info("%s: %d pairs", name, len(self.pairs))

    def finish(self, table, output=None) -> None:
        write_parquet(with_ids(table, self.smk), output or self.smk.output.table)
        seconds = round(time.perf_counter() - self.t0, 1)
        # Wall-clock time stays out of the result table (byte-identical reruns).
        write_json({"seconds": seconds, "pairs": len(self.pairs), "threads": int(self.smk.threads)},
                   self.smk.output.timing)
        self.log.info("%s: %d rows in %.1f s", self.name, len(table), seconds)
