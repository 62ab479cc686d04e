"""Long jobs a person can follow and a kill does not waste: progress lines with the time
left, and checkpoints to resume from.

`Progress` logs one line per 10% of the steps (or per minute, whichever comes first; every
step when there are ten or fewer), with the rate of the steps this run computed and the
estimated time left; on an interactive terminal a tqdm bar runs beside it.

`Checkpoint` keeps the finished steps of a job in `<output>.partial/` beside its output:
one JSON file per step, written atomically, and a `key` file (a hash of everything the
steps depend on). A rerun after a kill finds the steps with the same key and skips them;
a directory with another key is stale and removed. `done()` removes the directory once the
output is in place. Steps must be pure functions of the key's inputs (seeds per step, not
a global stream), so a resumed run gives the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

__all__ = ["Checkpoint", "NO_CHECKPOINT", "Progress", "format_seconds"]


def format_seconds(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class Progress:
    """Steps done of `total`, logged as milestones with the estimated time left."""

    def __init__(self, name: str, total: int, logger: logging.Logger | None = None, unit: str = "steps",
                 every_s: float = 60.0, clock=time.monotonic, tty: bool | None = None):
        self.name, self.total, self.unit = name, max(0, int(total)), unit
        self.log = logger or logging.getLogger(f"codeinterp.{name}")
        self.every_s, self.clock = every_s, clock
        self.done = self.resumed = 0
        self.start = self.last_line = clock()
        self.next_pct = 10
        self.bar = None
        if (sys.stderr.isatty() if tty is None else tty) and self.total:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=name, unit=unit.rstrip("s") or "step", file=sys.stderr, leave=False)

    def advance(self, n: int = 1, resumed: bool = False) -> None:
        """`n` more steps finished; `resumed` ones came from a checkpoint (not in the rate)."""
        self.done += n
        if resumed:
            self.resumed += n
        if self.bar is not None:
            self.bar.update(n)
        if resumed and self.done < self.total:
            return
        pct = 100 * self.done // max(self.total, 1)
        now = self.clock()
        if self.total <= 10 or pct >= self.next_pct or now - self.last_line >= self.every_s or self.done >= self.total:
            self.next_pct = (pct // 10 + 1) * 10
            self.last_line = now
            self.log.info("%s", self.line(now))

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the rate of the steps computed in this run (None before any)."""
        computed = self.done - self.resumed
        if computed <= 0:
            return None
        rate = computed / max((now if now is not None else self.clock()) - self.start, 1e-9)
        return (self.total - self.done) / rate

    def line(self, now: float | None = None) -> str:
        now = self.clock() if now is None else now
        text = f"{self.name}: {self.done}/{self.total} {self.unit} ({100 * self.done // max(self.total, 1)}%)"
        if self.resumed:
            text += f", {self.resumed} resumed from a checkpoint"
        text += f", {format_seconds(now - self.start)} elapsed"
        eta = self.eta(now)
        if self.done < self.total and eta is not None:
            text += f", about {format_seconds(eta)} left"
        return text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Checkpoint:
    """Finished steps of one job, kept in `<output>.partial/` under a key (see the module doc)."""

    def __init__(self, output: str | os.PathLike, key: str, name: str = "job", logger: logging.Logger | None = None):
        output = Path(output)
        self.dir = output.with_name(output.name + ".partial")
        self.key, self.name = key, name
        self.log = logger or logging.getLogger(f"codeinterp.{name}")
        self.progress: Progress | None = None
        key_file = self.dir / "key"
        if self.dir.exists() and (not key_file.exists() or key_file.read_text() != key):
            self.log.warning("discarding stale checkpoint %s (inputs or settings changed)", self.dir)
            shutil.rmtree(self.dir)
        if not self.dir.exists():
            tmp = self.dir.with_name(self.dir.name + ".new")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            (tmp / "key").write_text(key)
            os.replace(tmp, self.dir)  # the key is in place before any step
        else:
            n = len(list(self.dir.glob("*.json")))
            if n:
                self.log.info("%s: resuming from %d finished steps in %s", name, n, self.dir)

    def begin(self, total: int, unit: str = "steps") -> None:
        """Start (or restart) counting progress over `total` steps."""
        if self.progress is not None:
            self.progress.close()
        self.progress = Progress(self.name, total, self.log, unit)

    def _path(self, step: str) -> Path:
        return self.dir / (step.replace("/", "__") + ".json")

    def get(self, step: str):
        """The saved value of a finished step, or None (counted as progress when found)."""
        path = self._path(step)
        if not path.exists():
            return None
        value = json.loads(path.read_text())
        if self.progress is not None:
            self.progress.advance(resumed=True)
        return value

    def put(self, step: str, value, advance: bool = True) -> None:
        """Save a finished step (JSON: Python floats round-trip exactly)."""
        path = self._path(step)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)
        if advance and self.progress is not None:
            self.progress.advance()

    def done(self) -> None:
        """The output is in place: the steps are no longer needed."""
        if self.progress is not None:
            self.progress.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class _NoCheckpoint:
    """Checkpoint's interface doing nothing (library calls outside the workflow)."""

    progress = None

    def begin(self, total: int, unit: str = "steps") -> None:
        pass

    def get(self, step: str):
        return None

    def put(self, step: str, value, advance: bool = True) -> None:
        pass

    def done(self) -> None:
        pass


NO_CHECKPOINT = _NoCheckpoint()
