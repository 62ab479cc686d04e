#!/usr/bin/env bash
# The tiny pipeline through a real SLURM cluster (CI; docs/deployment.md), as root:
#   bash scripts/slurm-test.sh [DIR]       # DIR holds the cluster's state, the runs and logs
# 1. installs slurm-wlm, slurmdbd, munge and mariadb-server from Debian, and the executor
#    plugin into .venv, when absent;
# 2. starts a one-node cluster with accounting: config, spool and MariaDB data under DIR (the
#    config linked into /etc/slurm meanwhile); munged only if none runs. A trap stops exactly
#    the daemons started here and puts back what /etc/slurm held;
# 3. runs tests/configs/tiny.yaml with --profile profiles/slurm, then checks with sacct that
#    every job of the run went through SLURM and completed;
# 4. runs the same config locally, beside the SLURM run (or takes REFERENCE=<workdir of a
#    finished local run on this host>), and compares every Parquet table under results/ byte
#    for byte (timings are separate JSON files).
# Environment: SLURM_TEST_MAX_THREADS (default 1: threads per job, both runs), SLURM_TEST_CPUS
# (CPUs the node declares, default nproc), REFERENCE.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:-$(mktemp -d /tmp/codeinterp-slurm.XXXXXX)}"
dir="$(mkdir -p "$dir" && cd "$dir" && pwd)"
py="$repo/.venv/bin/python"
tiny="$repo/tests/configs/tiny.yaml"
max_threads="${SLURM_TEST_MAX_THREADS:-1}"
cpus="${SLURM_TEST_CPUS:-$(nproc)}"
state="$dir/cluster"
conf="$state/etc/slurm.conf"
started=()   # "name pidfile" of every daemon started here, stopped in reverse order

red() { printf '\033[31m%s\033[0m\n' "$*" >&2; }
fail() { red "slurm-test: $*"; exit 1; }
t0=$SECONDS
step() { echo "slurm-test: $* ($((SECONDS - t0)) s so far)"; }

alive() {  # a zombie (this machine's PID 1 may reap late) counts as stopped
  [ -e "/proc/$1/stat" ] && ! awk '{ exit ($3 == "Z") ? 0 : 1 }' "/proc/$1/stat" 2>/dev/null
}

stop_started() {
  local i name pidfile pid
  for ((i = ${#started[@]} - 1; i >= 0; i--)); do
    read -r name pidfile <<<"${started[$i]}"
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 1 30); do alive "$pid" || break; sleep 1; done
    if alive "$pid"; then red "slurm-test: $name ($pid) did not stop; killing it"; kill -9 "$pid" 2>/dev/null || true; fi
  done
  started=()
}

# The snakemake job step drops SLURM_* variables (SLURM_CONF too), so srun inside a job reads
# /etc/slurm: the test's config is linked there and whatever was there is put back afterwards.
linked=()
link_conf() {
  local name
  mkdir -p /etc/slurm
  for name in slurm.conf slurmdbd.conf; do
    if [ -e "/etc/slurm/$name" ] || [ -L "/etc/slurm/$name" ]; then mv "/etc/slurm/$name" "$state/etc/$name.saved"; fi
    ln -s "$state/etc/$name" "/etc/slurm/$name"
    linked+=("$name")
  done
}
unlink_conf() {
  local name
  for name in "${linked[@]}"; do
    rm -f "/etc/slurm/$name"
    if [ -e "$state/etc/$name.saved" ] || [ -L "$state/etc/$name.saved" ]; then mv "$state/etc/$name.saved" "/etc/slurm/$name"; fi
  done
  linked=()
}
cleanup() { stop_started; unlink_conf; }
trap cleanup EXIT
running=""  # the snakemake run in progress: stopped first on INT/TERM (it cancels its SLURM jobs)
local_run=""  # the local reference run, beside the SLURM run
on_signal() {
  if [ -n "$running" ]; then kill -TERM "$running" 2>/dev/null || true; wait "$running" 2>/dev/null || true; fi
  if [ -n "$local_run" ]; then kill -TERM "$local_run" 2>/dev/null || true; wait "$local_run" 2>/dev/null || true; fi
  exit 130
}
trap on_signal INT TERM

wait_for() {  # wait_for <seconds> <command...>
  local n=$1; shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  return 1
}

source "$repo/scripts/apt-retry.sh"

install() {
  [ "$(id -u)" = 0 ] || fail "run as root (it starts slurmctld, slurmd, slurmdbd and MariaDB)"
  local pkgs="slurm-wlm slurmdbd munge mariadb-server" missing=0 p
  for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing=1; done
  if [ $missing = 1 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt_retry update -qq
    apt_retry install -y -qq --no-install-recommends $pkgs >/dev/null
  fi
  [ -x "$py" ] || bash "$repo/scripts/setup.sh"
  "$py" -c "import snakemake_executor_plugin_slurm" 2>/dev/null \
    || "$py" -m pip install -q "snakemake-executor-plugin-slurm>=2" 2> >(grep -v "is ignored" >&2)
}

# Ports are fixed by SLURM's defaults; another cluster on this machine would collide.
check_free() {
  local port
  for port in 6817 6818 6819 3307; do
    if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
      fail "port $port is taken (another SLURM cluster or database runs here); stop it first"
    fi
  done
}

write_conf() {
  local node
  node=$(hostname -s)
  mkdir -p "$state"/{etc,ctld,slurmd,log,run}
  cat >"$conf" <<EOF
ClusterName=citest
SlurmctldHost=${node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/slurmd
SlurmctldPidFile=$state/run/slurmctld.pid
SlurmdPidFile=$state/run/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# The node declares room for one 40 GB job (the profile's size) per CPU, so that jobs are limited by
# CPUs as in a local run; nothing enforces memory without cgroups.
SlurmdParameters=config_overrides
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
MinJobAge=300
KillWait=30
Waittime=0
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
NodeName=${node} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=$((cpus * 64000)) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$state/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
DebugLevel=info
LogFile=$state/log/slurmdbd.log
PidFile=$state/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3307
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$state/etc/slurmdbd.conf"
}

start_munge() {
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    started+=("munged /run/munge/munged.pid")
    wait_for 10 sh -c 'munge -n | unmunge' || fail "munged did not start"
  fi
}

# A private MariaDB (own data directory and port) so that the accounting of this test
# neither reads nor leaves anything in a database of the machine.
start_mariadb() {
  local db="$state/db"
  mkdir -p "$db" && chown mysql:mysql "$db" && chmod 755 "$dir" "$state"
  runuser -u mysql -- test -w "$db" \
    || fail "user mysql cannot reach $db: make every directory above $dir searchable by others (chmod o+x)"
  mariadb-install-db --user=mysql --datadir="$db" --auth-root-authentication-method=normal \
    --skip-test-db >"$state/log/mariadb-install.log" 2>&1 || fail "mariadb-install-db failed (log: $state/log)"
  /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$db" --port=3307 --bind-address=127.0.0.1 \
    --socket="$db/mysqld.sock" --pid-file="$db/mysqld.pid" >"$state/log/mariadb.log" 2>&1 &
  echo $! >"$state/run/mariadbd.pid"
  started+=("mariadbd $state/run/mariadbd.pid")
  wait_for 60 mariadb --no-defaults -S "$db/mysqld.sock" -u root -e 'select 1' \
    || fail "MariaDB did not start (log: $state/log/mariadb.log)"
  mariadb --no-defaults -S "$db/mysqld.sock" -u root -e "CREATE DATABASE slurm_acct_db;
    CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start_slurm() {
  /usr/sbin/slurmdbd; started+=("slurmdbd $state/run/slurmdbd.pid")
  wait_for 30 sacctmgr -n list cluster || fail "slurmdbd did not answer (log: $state/log/slurmdbd.log)"
  sacctmgr -n list cluster format=cluster | grep -qw citest || sacctmgr -i add cluster citest >/dev/null
  /usr/sbin/slurmctld; started+=("slurmctld $state/run/slurmctld.pid")
  /usr/sbin/slurmd; started+=("slurmd $state/run/slurmd.pid")
  wait_for 60 sh -c "sinfo -h -o '%T' | grep -qx idle" || fail "the node did not come up (logs: $state/log)"
}

snakemake() {  # snakemake <workdir> <log> <args...>
  local work=$1 log=$2; shift 2
  local rc=0
  # In the background, so that a signal reaches the trap at once rather than after the run.
  "$py" -m snakemake -s "$repo/Snakefile" -d "$work" --configfile "$tiny" --max-threads "$max_threads" "$@" \
    >"$log" 2>&1 &
  running=$!
  wait "$running" || rc=$?
  running=""
  [ "$rc" = 0 ] || { tail -n 40 "$log" >&2; fail "snakemake failed (log: $log)"; }
}

# Every job snakemake ran must be a SLURM job of this run (job name = the run's ID) that completed.
check_accounting() {
  local log=$1 run_id local_jobs planned logged accounted bad
  local_jobs=$(grep -E '^localrule ' "$log" | grep -v '^localrule all:' || true)
  [ -z "$local_jobs" ] || fail "jobs ran outside SLURM: $(echo "$local_jobs" | sort | uniq -c | tr '\n' ' ')"
  run_id=$(grep -oE 'SLURM run ID: [0-9a-zA-Z_-]+' "$log" | head -1 | awk '{print $4}')
  [ -n "$run_id" ] || fail "no SLURM run ID in $log"
  sacct -X -n -P -a -S 2000-01-01 --name="$run_id" --format=JobID,Comment,State,ExitCode >"$dir/sacct.txt"
  planned=$(awk '/^Job stats:/ { on = 1; next } on && $1 == "total" { print $2; exit }' "$log")
  logged=$(grep -oE 'submitted with SLURM jobid [0-9]+' "$log" | awk '{print $5}' | sort -u)
  accounted=$(cut -d'|' -f1 "$dir/sacct.txt" | sort -u)
  [ "$logged" = "$accounted" ] || fail "the jobs snakemake submitted and those sacct knows differ (see $dir/sacct.txt)"
  [ "$(echo "$accounted" | grep -c .)" = "$((planned - 1))" ] \
    || fail "snakemake planned $planned jobs ('all' included), sacct holds $(echo "$accounted" | grep -c .)"
  bad=$(awk -F'|' '$3 != "COMPLETED" || $4 != "0:0" { print $1 " " $2 " " $3 }' "$dir/sacct.txt")
  [ -z "$bad" ] || fail "SLURM jobs that did not complete: $bad"
  echo "slurm-test: sacct: all $((planned - 1)) jobs of run $run_id COMPLETED, from" \
    "$(sed -E 's/^[0-9]+\|rule_([a-z_]+).*/\1/' "$dir/sacct.txt" | sort -u | wc -l) rules"
}

compare_tables() {
  local a=$1 b=$2 n=0 differ=() f
  (cd "$a" && find results -name '*.parquet' | sort) >"$dir/tables.slurm"
  (cd "$b" && find results -name '*.parquet' | sort) >"$dir/tables.local"
  cmp -s "$dir/tables.slurm" "$dir/tables.local" \
    || fail "different sets of tables: $(diff "$dir/tables.slurm" "$dir/tables.local" | grep '^[<>]' | head -5 | tr '\n' ' ')"
  while read -r f; do
    n=$((n + 1))
    cmp -s "$a/$f" "$b/$f" || differ+=("$f")
  done <"$dir/tables.slurm"
  [ ${#differ[@]} = 0 ] || fail "${#differ[@]} of $n tables differ from the local run: ${differ[*]:0:8}"
  echo "slurm-test: all $n Parquet tables are byte-identical to the local run's"
}

install;        step "packages ready"
check_free
write_conf
start_munge
start_mariadb
link_conf
start_slurm;    step "cluster up: $(sinfo -h -o '%N %c CPUs %T')"
if [ -n "${REFERENCE:-}" ]; then
  reference="$REFERENCE"
else
  # The local reference runs meanwhile: the SLURM run spends much of its time waiting for
  # status checks, so the two together take little more than the SLURM run alone.
  reference="$dir/local"
  "$py" -m snakemake -s "$repo/Snakefile" -d "$reference" --configfile "$tiny" --max-threads "$max_threads" \
    --cores 1 >"$dir/local.log" 2>&1 &
  local_run=$!
fi
snakemake "$dir/slurm" "$dir/slurm.log" --profile "$repo/profiles/slurm"
step "tiny pipeline ran through SLURM"
check_accounting "$dir/slurm.log"
cleanup;        step "cluster stopped"
if [ -n "$local_run" ]; then
  rc=0; wait "$local_run" || rc=$?
  local_run=""
  [ "$rc" = 0 ] || { tail -n 40 "$dir/local.log" >&2; fail "the local run failed (log: $dir/local.log)"; }
  step "tiny pipeline ran locally"
fi
compare_tables "$dir/slurm" "$reference"
step "done"
