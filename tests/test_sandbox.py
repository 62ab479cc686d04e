"""The sandbox against hostile programs (tests/hostile/), in both isolation modes."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from codeinterp.benchmarks import sandbox
from codeinterp.errors import ConfigError
from codeinterp.benchmarks.evaluation import check_program
from codeinterp.benchmarks.sandbox import Limits, RunResult, isolation_available, run_python

HOSTILE = Path(__file__).parent / "hostile"
ASSERT_NONE = json.dumps({"setup": "", "script": ""})


def hostile(name: str, **subst: str) -> str:
    text = (HOSTILE / f"{name}.py").read_text()
    for key, value in subst.items():
        text = text.replace(f"__{key}__", value)
    return text


@pytest.fixture(params=["bwrap", "rlimits"])
def mode(request) -> str:
    if request.param == "bwrap" and isolation_available() != "bwrap":
        pytest.skip("bubblewrap is not usable here")
    return request.param


def lim(mode: str, **kw) -> Limits:
    base = dict(timeout_s=5.0, cpu_s=5.0, memory_mb=512, output_bytes=100_000, isolation=mode)
    base.update(kw)
    return Limits(**base)


def procs_with(predicate) -> list[int]:
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                if f.read().split(b") ", 1)[1][:1] == b"Z":
                    continue
            if predicate(p):
                found.append(int(p))
        except (OSError, IndexError):
            continue
    return found


def comm_is(marker: str):
    def pred(p: str) -> bool:
        with open(f"/proc/{p}/comm") as f:
            return f.read().strip() == marker
    return pred


def cmdline_has(marker: str):
    def pred(p: str) -> bool:
        with open(f"/proc/{p}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    return pred


def verdict(program: str, limits: Limits):
    return check_program(program, "assert", ASSERT_NONE, limits)


# ---------------------------------------------------------------- basics


def test_isolation_available_is_known():
    assert isolation_available() in ("bwrap", "rlimits")
    assert isolation_available() == isolation_available()  # cached, stable


def test_run_simple(mode):
    r = run_python("import sys\nprint(input()[::-1])\nprint('err', file=sys.stderr)", "olleh\n", lim(mode))
    assert isinstance(r, RunResult)
    assert (r.returncode, r.stdout, r.timed_out, r.output_truncated) == (0, "hello\n", False, False)
    assert r.stderr == "err\n"
    assert r.isolation == mode
    assert r.seconds > 0


def test_cwd_is_fresh_writable_and_removed(mode):
    r = run_python("import os\nopen('f.txt','w').write('x')\nprint(os.getcwd())\nprint(os.environ['HOME'])\n"
                   "print(sorted(os.listdir('.')))", "", lim(mode))
    assert r.returncode == 0, r.stderr
    cwd, home, listing = r.stdout.splitlines()
    assert cwd == home
    assert listing == "['f.txt', 'prog.py']"
    if mode == "rlimits":
        assert not os.path.exists(cwd)
    else:
        assert cwd == sandbox.SANDBOX_DIR


def test_minimal_env_and_hashseed(mode):
    r = run_python("import os\nprint(os.environ['PYTHONHASHSEED'], os.environ['LANG'])\nprint(hash('abc'))",
                   "", lim(mode))
    r2 = run_python("print(hash('abc'))", "", lim(mode))
    assert r.stdout.splitlines()[0] == "0 C.UTF-8"
    assert r.stdout.splitlines()[1] == r2.stdout.strip()


def test_forced_bwrap_unavailable_is_one_line_error(monkeypatch):
    monkeypatch.setattr(sandbox, "_probe", {"drop_uid": False, "python": "python3", "isolation": "rlimits"})
    with pytest.raises(ConfigError) as exc:
        run_python("print(1)", "", Limits(isolation="bwrap"))
    assert "bwrap" in str(exc.value) and "\n" not in str(exc.value)


def test_bad_isolation_name():
    with pytest.raises(ConfigError, match="isolation"):
        run_python("print(1)", "", Limits(isolation="docker"))


# ---------------------------------------------------------------- hostile programs


def test_fork_bomb_is_contained(mode):
    marker = "cib" + uuid.uuid4().hex[:10]
    v = verdict(hostile("fork_bomb", MARKER=marker), lim(mode, timeout_s=10))
    assert v.status == "passed", v
    assert v.isolation == mode
    assert procs_with(comm_is(marker)) == []  # no process of that run survives


def test_fork_bomb_still_running_at_timeout(mode):
    marker = "cib" + uuid.uuid4().hex[:10]
    source = hostile("fork_bomb", MARKER=marker) + "\nimport time\ntime.sleep(1000)\n"
    v = verdict(source, lim(mode, timeout_s=2))
    assert v.status == "timeout", v
    assert procs_with(comm_is(marker)) == []


def test_infinite_loop(mode):
    t = time.monotonic()
    v = verdict(hostile("infinite_loop"), lim(mode, timeout_s=1.5, cpu_s=5))
    assert v.status == "timeout", v
    assert time.monotonic() - t < 6


def test_cpu_limit(mode):
    # Wall clock generous, CPU time short: RLIMIT_CPU (SIGXCPU) stops it.
    v = verdict(hostile("infinite_loop"), lim(mode, timeout_s=8, cpu_s=1))
    assert v.status == "timeout", v


def test_memory_bomb(mode):
    v = verdict(hostile("memory_bomb"), lim(mode, memory_mb=256))
    assert v.status == "memory", v
    assert "MemoryError" in v.message


def test_huge_output(mode):
    t = time.monotonic()
    r = run_python(hostile("huge_output"), "", lim(mode, output_bytes=50_000))
    assert r.output_truncated
    assert len(r.stdout.encode()) <= 50_000
    assert time.monotonic() - t < 5
    v = verdict(hostile("huge_output"), lim(mode, output_bytes=50_000))
    assert (v.status, v.message) == ("error", "output limit exceeded")


def test_closed_stdout(mode):
    v = verdict(hostile("closed_stdout"), lim(mode))
    assert v.status == "error", v
    assert "Bad file descriptor" in v.message


def test_stdin_reads_past_eof(mode):
    v = verdict(hostile("stdin_forever"), lim(mode, timeout_s=1.5))
    assert v.status == "timeout", v
    # A program that wants more lines than given gets EOF at once, not a hang.
    t = time.monotonic()
    r = run_python("a = input()\nb = input()\nprint(a, b)", "only one line\n", lim(mode, timeout_s=5))
    assert time.monotonic() - t < 4
    assert "EOFError" in r.stderr and not r.timed_out


def test_delete_files_outside(mode, tmp_path):
    target_dir = tmp_path / "keep"
    target_dir.mkdir()
    target_file = tmp_path / "keep.txt"
    target_file.write_text("precious")
    (target_dir / "inner.txt").write_text("also precious")
    home_before = os.environ.get("HOME")
    tmp_mode = os.stat(tempfile.gettempdir()).st_mode
    v = verdict(hostile("delete_files", TARGET_FILE=str(target_file), TARGET_DIR=str(target_dir)), lim(mode))
    assert v.status == "error", v
    assert target_file.read_text() == "precious"
    assert (target_dir / "inner.txt").read_text() == "also precious"
    if home_before:
        assert os.path.isdir(home_before)
    # The program may delete its own run directory; clean-up must not touch the parent.
    assert os.stat(tempfile.gettempdir()).st_mode == tmp_mode
    v = verdict("import os, shutil\nshutil.rmtree(os.getcwd())", lim(mode))
    assert os.stat(tempfile.gettempdir()).st_mode == tmp_mode


def test_sleeping_child_is_killed(mode):
    marker = str(uuid.uuid4().int)[:12]
    r = run_python(hostile("sleeping_child", MARKER=marker), "", lim(mode))
    assert (r.returncode, r.stdout) == (0, "started\n"), r.stderr
    assert r.seconds < 5  # we do not wait for the child to close its pipes
    assert procs_with(cmdline_has("0." + marker)) == []


def test_network(mode):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    got = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            got.append(conn.recv(100))
            conn.close()

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        v = verdict(hostile("network", PORT=str(port)), lim(mode))
    finally:
        stop.set()
        th.join(2)
        server.close()
    if mode == "bwrap" or os.geteuid() == 0:  # bwrap; or rlimits + unshare(CLONE_NEWNET) as root
        assert v.status == "error", v
        assert got == []
    else:  # rlimits without root: no network isolation, documented
        assert v.status in ("passed", "error")


def test_secrets_do_not_leak(mode, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_test")
    monkeypatch.setenv("SECRET_KEY", "fake-secret")
    r = run_python(hostile("env_secrets"), "", lim(mode))
    assert r.returncode == 0, r.stderr
    assert "LEAK:env" not in r.stdout
    if mode == "bwrap" or sandbox._get_probe()["drop_uid"]:
        assert "LEAK" not in r.stdout  # nor via /proc/<our pid>/environ
    env_line = [ln for ln in r.stdout.splitlines() if ln.startswith("ENV:")][0]
    names = set(env_line[4:].split(","))
    assert names <= {"PATH", "LANG", "LC_ALL", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING",
                     "HOME", "TMPDIR", "PWD", sandbox._TOKEN_VAR}


def test_no_core_and_file_size_limit(mode):
    r = run_python("import resource\nprint(resource.getrlimit(resource.RLIMIT_CORE)[0],"
                   " resource.getrlimit(resource.RLIMIT_FSIZE)[0])", "", lim(mode))
    assert r.stdout.split() == ["0", str(sandbox._FSIZE_BYTES)]


def test_setsid_escape_is_killed(mode):
    marker = str(uuid.uuid4().int)[:12]
    r = run_python(hostile("setsid_escape", MARKER=marker), "", lim(mode))
    assert (r.returncode, r.stdout) == (0, "escaped\n"), r.stderr
    assert procs_with(cmdline_has("0." + marker)) == []


@pytest.mark.parametrize("name", ["fork_bomb", "sleeping_child", "setsid_escape"])
def test_containment_without_uid_switch(mode, name, monkeypatch):
    """The floor for non-root users: pgid / sid / environment-marker scan."""
    probe = dict(sandbox._get_probe(), drop_uid=False)
    monkeypatch.setattr(sandbox, "_probe", probe)
    marker = "cib" + uuid.uuid4().hex[:10] if name == "fork_bomb" else str(uuid.uuid4().int)[:12]
    r = run_python(hostile(name, MARKER=marker), "", lim(mode))
    assert r.returncode == 0, r.stderr
    if name == "fork_bomb":
        assert procs_with(comm_is(marker)) == []
    else:
        assert procs_with(cmdline_has("0." + marker)) == []


# ---------------------------------------------------------------- concurrent processes
# Several processes (pytest runs, Snakemake jobs) use the sandbox at the same time on
# one machine.  Each run's uid must be unique machine-wide, or one run's clean-up
# ("SIGKILL every process of uid U", "remove my run directory") hits another's run.

_WORKER = r'''
import json, sys
from codeinterp.benchmarks import sandbox
from codeinterp.benchmarks.evaluation import evaluate_many
from codeinterp.benchmarks.sandbox import Limits

sandbox._uid_cursor = 0  # both processes start at the same place in the uid pool: worst case

mode, marker, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
CHECK = "import os\nassert os.path.isfile('prog.py')\nopen('scratch.txt', 'w').write('x')\n"
KINDS = {
    # (program, passes?)
    "pass": ("def f(x):\n    return 2 * x\n", True),
    "fail": ("def f(x):\n    return 2 * x + 1\n", False),
    "slow": ("import time\ntime.sleep(0.4)\ndef f(x):\n    return 2 * x\n", True),
    "child": ("import subprocess\nsubprocess.Popen(['sleep', '1000', '0.MARK'])\n"
              "def f(x):\n    return 2 * x\n", True),
    "setsid": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1000)\n    os._exit(0)\n"
               "def f(x):\n    return 2 * x\n", True),
    "forks": ("import os, time\nfor _ in range(12):\n    if os.fork() == 0:\n"
              "        os.execvp('sleep', ['sleep', '1000', '0.MARK'])\n"
              "def f(x):\n    return 2 * x\n", True),
}
order = ["pass", "fail", "slow", "child", "pass", "setsid", "fail", "forks"]
items, expected = [], []
for i in range(n):
    program, ok = KINDS[order[i % len(order)]]
    program = program.replace("MARK", marker)
    script = CHECK + "assert f(%d) == %d\n" % (i, 2 * i)
    items.append((program, "assert", json.dumps({"setup": "", "script": script})))
    expected.append("passed" if ok else "failed")
print("ready", flush=True)
sys.stdin.readline()  # start together with the other process
verdicts = evaluate_many(items, Limits(timeout_s=8, cpu_s=8, memory_mb=512, isolation=mode), 4)
print(json.dumps({"expected": expected, "got": [[v.status, v.message] for v in verdicts]}), flush=True)
'''


def test_concurrent_processes_do_not_interfere(mode):
    """Two processes evaluate 30 programs each at the same time; every verdict is exact in both."""
    import subprocess
    import sys

    markers = [str(uuid.uuid4().int)[:12] for _ in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, mode, m, "30"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for m in markers]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        res = json.loads(out.strip().splitlines()[-1])
        got = [status for status, _ in res["got"]]
        bad = [(i, want, msg) for i, (want, (status, msg)) in enumerate(zip(res["expected"], res["got"]))
               if status != want]
        assert got == res["expected"], bad
        for (status, msg) in res["got"]:
            assert status == "passed" or msg.startswith("AssertionError"), msg
    for m in markers:
        assert procs_with(cmdline_has("0." + m)) == []


_LEASE_HOLDER = r'''
import sys
from codeinterp.benchmarks import sandbox
sandbox._uid_cursor = int(sys.argv[1])
lease = sandbox._acquire_uid()
print(lease.uid, flush=True)
sys.stdin.readline()
lease.release()
print("released", flush=True)
sys.stdin.readline()
'''


def test_uid_lease_is_exclusive_across_processes(monkeypatch):
    """A uid leased by another live process is never handed out, even from the same pool position."""
    import subprocess
    import sys

    if os.geteuid() != 0 or not sandbox._get_probe()["drop_uid"]:
        pytest.skip("throw-away uids need root")
    start = 1234
    holder = subprocess.Popen([sys.executable, "-c", _LEASE_HOLDER, str(start)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        held = int(holder.stdout.readline())
        monkeypatch.setattr(sandbox, "_uid_cursor", held - sandbox._UID_BASE)
        mine = sandbox._acquire_uid()
        try:
            assert mine is not None and mine.uid != held
            # a run started now is not under the other process's uid either
            r = run_python("import os\nprint(os.getuid())", "", Limits(timeout_s=5))
            assert r.returncode == 0 and int(r.stdout) not in (held, mine.uid), r
        finally:
            mine.release()
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        monkeypatch.setattr(sandbox, "_uid_cursor", held - sandbox._UID_BASE)
        again = sandbox._acquire_uid()  # free again once the other process let go
        assert again is not None and again.uid == held
        again.release()
    finally:
        holder.kill()
        holder.wait()


def test_run_directory_reachable_despite_private_tmpdir(mode, tmp_path, monkeypatch):
    """TMPDIR pointing into a directory the throw-away uid cannot traverse must not break runs."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(sandbox, "_run_parent_cache", [], raising=False)
    r = run_python("import os\nopen('f', 'w').write('x')\nprint(sorted(os.listdir('.')))", "", lim(mode))
    assert (r.returncode, r.stdout) == (0, "['f', 'prog.py']\n"), r.stderr
