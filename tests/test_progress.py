"""Progress lines with the time left, and the checkpoint store long jobs resume from."""

import json
import logging

import pytest

from codeinterp.progress import Checkpoint, Progress, format_seconds


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "test.progress"]


def test_milestones_not_a_flood_and_the_time_left_is_right(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="test.progress")
    p = Progress("sweep", 200, logging.getLogger("test.progress"), "layers", clock=clock, tty=False)
    for _ in range(200):
        clock.t += 2.0  # two seconds a step
        p.advance()
        if p.done == 100:
            assert p.eta() == pytest.approx(200.0)  # 100 steps left at 2 s each
    got = lines(caplog)
    assert len(got) == 10  # one per 10%, the last included
    assert got[4] == "sweep: 100/200 layers (50%), 3 min 20 s elapsed, about 3 min 20 s left"
    assert got[-1] == "sweep: 200/200 layers (100%), 6 min 40 s elapsed"


def test_a_slow_job_logs_at_least_every_minute(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="test.progress")
    p = Progress("slow", 1000, logging.getLogger("test.progress"), clock=clock, tty=False)
    for _ in range(50):  # 5% of the job, 30 s per step
        clock.t += 30.0
        p.advance()
    assert 24 <= len(lines(caplog)) <= 26  # every other step: a line per minute


def test_resumed_steps_do_not_count_in_the_rate(caplog):
    clock = Clock()
    caplog.set_level(logging.INFO, logger="test.progress")
    p = Progress("job", 10, logging.getLogger("test.progress"), clock=clock, tty=False)
    p.advance(6, resumed=True)  # found in a checkpoint, instantly
    assert lines(caplog) == [] and p.eta() is None
    clock.t += 5.0
    p.advance()
    assert p.eta() == pytest.approx(15.0)  # 3 left at 5 s each, not at 5/7 s
    assert "6 resumed from a checkpoint" in lines(caplog)[-1]


def test_format_seconds():
    assert [format_seconds(s) for s in (4.4, 61, 3725)] == ["4 s", "1 min 01 s", "1 h 02 min"]


def test_checkpoint_round_trip_stale_key_and_done(tmp_path):
    out = tmp_path / "table.parquet"
    c = Checkpoint(out, "key-a", "job")
    assert c.get("s1") is None
    value = [0.1 + 0.2, 1e-300, -3.0, None, "x"]
    c.put("s1", value)
    again = Checkpoint(out, "key-a", "job")
    assert again.get("s1") == value  # floats come back bit for bit
    assert not list(c.dir.glob("*.tmp"))
    assert json.loads((c.dir / "s1.json").read_text()) == value
    stale = Checkpoint(out, "key-b", "job")  # other inputs: nothing is reused
    assert stale.get("s1") is None
    stale.done()
    assert not stale.dir.exists() and not out.exists()


def test_a_directory_without_its_key_is_stale(tmp_path):
    out = tmp_path / "t.parquet"
    d = tmp_path / "t.parquet.partial"
    d.mkdir()
    (d / "s1.json").write_text("[1]")  # a killed run died before writing its key
    assert Checkpoint(out, "k").get("s1") is None
