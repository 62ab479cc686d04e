"""The activation cache as N parts written by separate jobs, merged into the cache one job
writes, byte for byte (config `shards.cache_activations`).

The cache's files are cut every `shard_tokens` rows of one stream (targets in order, cached
positions ascending), so where each file starts is known before anything runs: part j of N
writes a contiguous run of those files. It runs the same batches one job runs (a batch that
straddles its first file is computed whole and its earlier rows dropped, as a resumed job
does) and stops once its last file is written. The merge moves the files into one directory
and writes the index.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from codeinterp.access import hooks
from codeinterp.access.scoring import Target
from codeinterp.analyses import activations
from codeinterp.errors import ConfigError
from codeinterp.sharding import batch_range

PART_FILE = "part.json"


def n_files(targets: list[Target], positions: str, shard_tokens: int) -> int:
    rows = sum(b - a for a, b in (activations.cached_span(t, positions) for t in targets))
    return -(-rows // shard_tokens)


def write_part(model, targets: list[Target], out_dir, part: tuple[int, int], *, sites: list[str], positions: str,
               dtype: str, shard_tokens: int, batch_size: int, pad_id: int = 0) -> dict:
    """Part `part` = (index, count) of the cache: its shard files and `part.json`."""
    activations.check_settings(sites, positions, dtype, shard_tokens, batch_size)
    names = hooks.site_names(model, list(sites))
    settings = {"sites": list(sites), "positions": positions, "dtype": dtype, "shard_tokens": shard_tokens,
                "batch_size": batch_size, "pad_id": pad_id}
    files = batch_range(n_files(targets, positions, shard_tokens), part[1], part[0])
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        done = [shard_tokens] * files.start
        info = activations._write(model, targets, tmp, names, settings, None, done, None, stop=files.stop)
        for extra in sorted(tmp.glob("shard-*.safetensors"))[len(info["rows_per_shard"]):]:
            extra.unlink()  # a large last batch may run into the next part's files
        info["settings"] = settings
        (tmp / PART_FILE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        activations._replace_dir(tmp, out_dir)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def merge_parts(part_dirs: list, out_dir, targets: list[Target], meta: dict | None) -> dict:
    """One cache directory from the parts, in order, with the index one job writes."""
    parts = [json.loads((Path(d) / PART_FILE).read_text()) for d in part_dirs]
    expected = 0
    for d, p in zip(part_dirs, parts):
        if p["first"] != expected or p["settings"] != parts[0]["settings"]:
            raise ConfigError(f"{d}: cache part out of step with the others (stale part?)")
        expected += len(p["rows_per_shard"])
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for d in part_dirs:
            for f in sorted(Path(d).glob("shard-*.safetensors")):
                shutil.copy2(f, tmp / f.name)
        rows = [r for p in parts for r in p["rows_per_shard"]]
        index = activations.build_index(targets, parts[0]["settings"], meta, parts[0]["sites"], parts[0]["shapes"],
                                        rows)
        (tmp / activations.INDEX_FILE).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
        activations._replace_dir(tmp, out_dir)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index
